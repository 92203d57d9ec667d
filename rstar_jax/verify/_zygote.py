"""One executor worker: pre-imports libraries, then forks a confined child per program.

Started by `executor.PythonExecutor` as `python -I _zygote.py CONFIG_JSON` with a
scrubbed environment, in its own session. It speaks length-prefixed JSON over its
stdin/stdout (moved off fds 0/1 at start so nothing else can write into the
protocol): for each program it receives it answers `{"started": true}` once the program
is handed to a child, then the result. The worker itself never runs model code. It
keeps one child pre-forked ("the spare"): the child calls `os.setsid` (its own process
group, so the worker can kill everything it left behind with one `killpg`), asks to
die with the worker (PR_SET_PDEATHSIG), closes every inherited descriptor but its
program and result pipes, moves into a fresh private directory and applies
`sandbox.confine` -- all before it reads anything -- and only then blocks reading its
program, which it runs in a new namespace before exiting. A child gets exactly one
program; the next spare is forked while that program runs. Forking from a process
that already imported sympy/numpy/scipy makes every program start with warm imports
(copy-on-write) and makes state leaks between programs impossible: each child's
memory, modules and namespace disappear with it. The worker enforces the wall-clock
timeout (counted from the hand-over; SIGKILL to the child's process group), then
reaps the child and removes its private directory: right away when no program is
waiting, else after handing the next program over. A spare found dead when a program
arrives (killed from outside) is replaced before the hand-over.

The child closes its result pipe before exiting, so the worker reads the whole result
while the kernel is still tearing down the child's address space (several ms for the
pre-imported heap) and answers without waiting for it. Not used, after measuring:
`gc.disable()` in the child (the pre-imported heap is already `gc.freeze()`-d, so
collections do not touch it; no measurable change), transparent huge pages for the
heap (cheaper fork, but no clear gain once programs touch the shared pages).
"""

from __future__ import annotations

import builtins
import gc
import importlib
import json
import os
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

_HEADER = struct.Struct(">Q")
MAX_RESULT_BYTES = 1 << 20  # a child cannot make its worker buffer more than this
# Precedes the program on a child's program pipe, so an empty program differs from a
# pipe closed without one (worker shutting down).
_PROGRAM_MARK = b"P"


def read_message(fd: int) -> dict | None:
    """Blocking read of one framed JSON message; None at end of stream."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def encode_message(message: dict) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_paths() -> list[str]:
    """Directories a program may read: the Python installation and system libraries."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    paths.update(("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime",
                  "/sys/devices/system/cpu"))
    return sorted(p for p in paths if os.path.exists(p))


def _vm_size_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


class Child:
    """Worker-side handle of one forked child: pre-forked, confined, waiting for a program."""

    def __init__(self, pid: int, pidfd: int | None, private_dir: str, program_fd: int,
                 result_fd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.private_dir = private_dir
        self.program_fd = program_fd  # write end; closed once the program is handed over
        self.result_fd = result_fd    # read end
        self.start = 0.0


def _child(private_dir: str, program_fd: int, result_fd: int, config: dict, worker_pid: int,
           read_paths: list[str], sandbox, runner) -> None:
    """Body of the forked child; never returns.

    Every confinement step happens before the program is read: the child is fully
    confined while it waits as the worker's spare, then reads exactly one program,
    runs it, reports and exits.
    """
    try:
        os.setsid()
        sandbox.set_parent_death_signal()
        if os.getppid() != worker_pid:  # worker died between fork and prctl
            os._exit(71)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Only the two pipes to the worker survive: no protocol pipe, no descriptor of a
        # sibling child, nothing else.
        keep = sorted({0, 1, 2, program_fd, result_fd})
        for low, high in zip(keep, keep[1:] + [1 << 20]):
            if high > low + 1:
                os.closerange(low + 1, high)
        os.chdir(private_dir)
        os.environ.update(HOME=private_dir, TMPDIR=private_dir, PWD=private_dir)
        tempfile.tempdir = private_dir
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        timeout = float(config["timeout_s"])
        sandbox.confine(
            private_dir=private_dir, read_paths=read_paths,
            address_space_bytes=_vm_size_bytes() + int(config["memory_limit_mb"]) * (1 << 20),
            cpu_seconds=int(timeout) + 2, file_size_bytes=int(config["max_file_bytes"]))
    except BaseException as exc:  # refuse to run unconfined (the program is never read)
        payload = {"output": f"SandboxError: could not confine the program: {exc!r}",
                   "raised": True, "abnormal": True}
        write_all(result_fd, json.dumps(payload).encode())
        os._exit(0)
    data = _read_to_end(program_fd)
    os.close(program_fd)
    if not data.startswith(_PROGRAM_MARK):  # the worker shut down without handing one over
        os._exit(0)
    program = data[len(_PROGRAM_MARK):].decode("utf-8", "surrogatepass")
    del data
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    output, raised, abnormal = runner.run_program(
        program, namespace, int(config["max_output_bytes"]), int(config["max_result_chars"]))
    payload = {"output": output, "raised": raised, "abnormal": abnormal}
    try:
        write_all(result_fd, json.dumps(payload).encode())
        # Closing before exit lets the worker see the end of the result while the kernel
        # is still tearing down this address space (several ms for a large heap).
        os.close(result_fd)
    finally:
        os._exit(0)


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def fork_child(config: dict, read_paths: list[str], sandbox, runner) -> Child:
    """Fork one child that confines itself and then waits for its program."""
    private_dir = tempfile.mkdtemp(prefix="prog_", dir=config["base_dir"])
    program_r, program_w = os.pipe()
    result_r, result_w = os.pipe()
    worker_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _child(private_dir, program_r, result_w, config, worker_pid, read_paths,
                   sandbox, runner)
        finally:
            os._exit(70)
    os.close(program_r)
    os.close(result_w)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    return Child(pid, pidfd, private_dir, program_w, result_r)


def hand_over(child: Child, program: str) -> None:
    """Give the child its (only) program; its wall-clock timeout starts now."""
    child.start = time.monotonic()
    try:
        write_all(child.program_fd, _PROGRAM_MARK + program.encode("utf-8", "surrogatepass"))
    except BrokenPipeError:
        pass  # the child is gone (failed confinement or killed); `collect` reports it
    finally:
        os.close(child.program_fd)
        child.program_fd = -1


def _kill_group(child: Child) -> None:
    # One killpg takes the child and anything it left in its group, before the child is
    # reaped so its process group id cannot have been reused.
    for kill, target in ((os.killpg, child.pid), (os.kill, child.pid)):
        try:  # os.kill too: a child killed before its setsid leads no group yet
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap(child: Child) -> int:
    """Kill (if still alive), wait for and clean up after a child; its wait status."""
    _kill_group(child)
    try:
        status = os.waitpid(child.pid, 0)[1]
    except ChildProcessError:  # already reaped by `_alive` (kernels without pidfd)
        status = 0
    for fd in (child.program_fd, child.result_fd, child.pidfd):
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    child.program_fd = child.result_fd = -1
    child.pidfd = None
    shutil.rmtree(child.private_dir, ignore_errors=True)
    return status


def collect(child: Child, config: dict) -> tuple[dict, bool]:
    """Wait for the child's result (or its timeout) and kill its process group.

    Returns the reply for the main process and whether the child still has to be
    `reap`-ed (True only for a result the child reported itself; otherwise it has been
    reaped here, since the wait status is part of the reply).
    """
    timeout = float(config["timeout_s"])
    deadline = child.start + timeout
    chunks, size, timed_out, exited = [], 0, False, False
    read_fd = child.result_fd
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        if exited or child.pidfd is None:
            watch = [read_fd]
        else:
            watch = [read_fd, child.pidfd]
        ready, _, _ = select.select(watch, [], [], 0 if exited else remaining)
        if read_fd in ready:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break  # the child closed its end: it has said everything
            if size < MAX_RESULT_BYTES:
                chunks.append(chunk)
                size += len(chunk)
            continue
        if exited:
            break  # exited and the pipe is drained (something else may hold it open)
        if child.pidfd is not None and child.pidfd in ready:
            exited = True
    _kill_group(child)
    duration = time.monotonic() - child.start
    reply = {"duration_s": duration, "timed_out": timed_out}
    if timed_out:
        reap(child)
        reply.update(output=("TimeoutError: Execution of the code snippet has timed out "
                             f"for exceeding {timeout:g} seconds."),
                     raised=True, abnormal=True)
        return reply, False
    try:
        reply.update(json.loads(b"".join(chunks).decode("utf-8")))
        reply["output"] = str(reply["output"])
        return reply, True
    except (ValueError, KeyError, TypeError):
        pass
    status = reap(child)
    if os.WIFSIGNALED(status):
        what = f"was killed by {_signal_name(os.WTERMSIG(status))}"
    else:
        what = f"exited with status {os.waitstatus_to_exitcode(status)}"
    reply.update(output=f"SandboxError: the program's process {what} before reporting a result",
                 raised=True, abnormal=True)
    return reply, False


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _alive(child: Child) -> bool:
    """Whether a child waiting for its program is still there (has not exited)."""
    if child.pidfd is not None:
        return not _readable(child.pidfd)
    return os.waitpid(child.pid, os.WNOHANG)[0] == 0


_STARTED = encode_message({"started": True})


def main() -> None:
    config = json.loads(sys.argv[1])
    # The protocol moves off fds 0/1 so that stray writes cannot corrupt it.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, repo_root)
    try:
        from rstar_jax.verify import program_runner as runner
        from rstar_jax.verify import sandbox
    finally:
        sys.path.remove(repo_root)
    sandbox.set_parent_death_signal()
    if os.getppid() != int(config["parent_pid"]):
        sys.exit(0)  # the executor is already gone
    preloaded, failed = [], {}
    for name in config["preload"]:
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # a missing optional library is reported, not fatal
            failed[name] = repr(exc)
    if config.get("warmup"):
        # Trusted code of ours, run once here: it triggers the lazy imports and fills
        # the caches the first sympy/numpy call of every program would otherwise pay
        # for again in each fresh child (about 50 ms per program measured).
        runner.run_program(config["warmup"], {"__name__": "__warmup__",
                                              "__builtins__": builtins}, 1 << 20, 4096)
    read_paths = _read_paths()
    # Objects alive now are shared copy-on-write with every child; freezing them keeps
    # the children's garbage collector from touching (and so copying) their pages.
    gc.collect()
    gc.freeze()
    write_all(out_fd, encode_message({"ready": True, "pid": os.getpid(),
                                      "preloaded": preloaded, "failed": failed,
                                      "landlock_abi": sandbox.landlock_abi()}))
    spare = fork_child(config, read_paths, sandbox, runner)
    to_reap: list[Child] = []
    try:
        while True:
            message = read_message(in_fd)
            if message is None:
                return
            if not _alive(spare):  # killed from outside while waiting: use a new one
                reap(spare)
                spare = fork_child(config, read_paths, sandbox, runner)
            running, spare = spare, None
            hand_over(running, message["program"])
            del message
            write_all(out_fd, _STARTED)  # from here on the program counts as run
            # The next program's process is forked and confined while this one runs;
            # the previous one's teardown is waited for now too, off the critical path.
            spare = fork_child(config, read_paths, sandbox, runner)
            while to_reap:
                reap(to_reap.pop())
            reply, needs_reap = collect(running, config)
            if needs_reap:
                if _readable(in_fd):
                    to_reap.append(running)  # more work queued: clean up after handing it on
                else:
                    reap(running)  # idle next: clean up before answering
            write_all(out_fd, encode_message(reply))
    finally:
        for child in to_reap + ([spare] if spare is not None else []):
            reap(child)


if __name__ == "__main__":
    main()
