"""One executor worker: pre-imports libraries, then forks a confined child per program.

Started by `executor.PythonExecutor` as `python -I _zygote.py CONFIG_JSON` with a
scrubbed environment, in its own session. It speaks length-prefixed JSON over its
stdin/stdout (moved off fds 0/1 at start so nothing else can write into the
protocol). The worker itself never runs model code: for each program it forks a child
that calls `os.setsid` (its own process group, so the worker can kill everything it
left behind with one `killpg`), asks to die with the worker (PR_SET_PDEATHSIG), closes
every inherited descriptor but its result pipe, moves into a fresh private directory,
applies `sandbox.confine` and only then runs the program in a new namespace. Forking
from a process that already imported sympy/numpy/scipy makes every program start with
warm imports (copy-on-write) and makes state leaks between programs impossible: each
child's memory, modules and namespace disappear with it. The worker enforces the
wall-clock timeout (SIGKILL to the child's process group), then removes the private
directory.
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


def _child(program: str, private_dir: str, result_fd: int, config: dict, worker_pid: int,
           read_paths: list[str], sandbox, runner) -> None:
    """Body of the forked child; never returns."""
    try:
        os.setsid()
        sandbox.set_parent_death_signal()
        if os.getppid() != worker_pid:  # worker died between fork and prctl
            os._exit(71)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Only the result pipe survives: no protocol pipe, no other descriptor.
        keep = sorted({0, 1, 2, result_fd})
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
    except BaseException as exc:  # refuse to run unconfined
        payload = {"output": f"SandboxError: could not confine the program: {exc!r}",
                   "raised": True, "abnormal": True}
        write_all(result_fd, json.dumps(payload).encode())
        os._exit(0)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    output, raised, abnormal = runner.run_program(
        program, namespace, int(config["max_output_bytes"]), int(config["max_result_chars"]))
    payload = {"output": output, "raised": raised, "abnormal": abnormal}
    try:
        write_all(result_fd, json.dumps(payload).encode())
    finally:
        os._exit(0)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def run_one(program: str, config: dict, read_paths: list[str], sandbox, runner) -> dict:
    """Fork, confine, run, collect, clean up; return the reply for the main process."""
    timeout = float(config["timeout_s"])
    private_dir = tempfile.mkdtemp(prefix="prog_", dir=config["base_dir"])
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _child(program, private_dir, write_fd, config, os.getppid(), read_paths,
                   sandbox, runner)
        finally:
            os._exit(70)
    os.close(write_fd)
    deadline = start + timeout
    chunks, size, status, timed_out = [], 0, None, False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    watch = [read_fd] + ([pidfd] if pidfd is not None else [])
    try:
        while watch or (pidfd is None and status is None):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not watch:  # no pidfd on this kernel: poll for the exit
                waited, st = os.waitpid(pid, os.WNOHANG)
                if waited:
                    status = st
                else:
                    time.sleep(min(remaining, 0.005))
                continue
            ready, _, _ = select.select(watch, [], [], remaining)
            if read_fd in ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    watch.remove(read_fd)
                elif size < MAX_RESULT_BYTES:
                    chunks.append(chunk)
                    size += len(chunk)
            if pidfd is not None and pidfd in ready:
                watch.remove(pidfd)  # exited; the loop still drains the pipe
        # One killpg takes the child and anything it left in its group, before the
        # child is reaped so its process group id cannot have been reused.
        for kill, target in ((os.killpg, pid), (os.kill, pid)):
            try:  # os.kill too: a child killed before its setsid leads no group yet
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if status is None:
            status = os.waitpid(pid, 0)[1]
    finally:
        os.close(read_fd)
        if pidfd is not None:
            os.close(pidfd)
        shutil.rmtree(private_dir, ignore_errors=True)
    duration = time.monotonic() - start
    reply = {"duration_s": duration, "timed_out": timed_out}
    if timed_out:
        reply.update(output=("TimeoutError: Execution of the code snippet has timed out "
                             f"for exceeding {timeout:g} seconds."),
                     raised=True, abnormal=True)
        return reply
    try:
        reply.update(json.loads(b"".join(chunks).decode("utf-8")))
        reply["output"] = str(reply["output"])
        return reply
    except (ValueError, KeyError, TypeError):
        pass
    if os.WIFSIGNALED(status):
        what = f"was killed by {_signal_name(os.WTERMSIG(status))}"
    else:
        what = f"exited with status {os.waitstatus_to_exitcode(status)}"
    reply.update(output=f"SandboxError: the program's process {what} before reporting a result",
                 raised=True, abnormal=True)
    return reply


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
    while True:
        message = read_message(in_fd)
        if message is None:
            return
        reply = run_one(message["program"], config, read_paths, sandbox, runner)
        reply["id"] = message["id"]
        write_all(out_fd, encode_message(reply))


if __name__ == "__main__":
    main()
