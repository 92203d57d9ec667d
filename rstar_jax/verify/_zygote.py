"""One executor worker: pre-imports libraries, then forks a confined child per program.

Started by `executor.PythonExecutor` as `python -I -c BOOTSTRAP` (no path, no pid in
its argv) with a scrubbed environment, in its own session; the bootstrap reads the
worker's settings as the first message on stdin. It speaks length-prefixed JSON with
the main process over its stdin/stdout (moved off fds 0/1 at start so nothing else
can write into the protocol): for each program it receives it answers `started`
once the program is handed to a child, then the result. The worker itself never runs
model code.

Children. The worker keeps one child pre-forked ("the spare"): the child calls
`os.setsid` (its own process group, so the worker can kill everything it left behind
with one `killpg`), asks to die with the worker (PR_SET_PDEATHSIG), closes every
inherited descriptor but its program and result pipes, enters its private directory
(as root: a fresh mount namespace with a size- and inode-limited tmpfs mounted on
it), applies `sandbox.confine` (gives up root, Landlock, seccomp) -- all before it
reads anything -- and only then blocks reading its program. It seeds `random` and
numpy's global generator from a hash of the program text, runs it in a new
namespace (`program_runner`), writes the observation to its result pipe, closes it
and exits with a status that says how the program ended. A child gets exactly one
program; the next spare is forked while that program runs. Forking from a process
that already imported sympy/numpy/scipy makes every program start with warm imports
(copy-on-write) and makes state leaks between programs impossible.

What the worker believes comes from outside the program. The result pipe carries
only text: the worker reads at most `result_byte_cap` bytes of it (more costs the
program an error result), decodes it with undecodable bytes replaced, and cuts it to
`max_result_chars`; nothing the child writes is parsed. Whether the program raised
or ended abnormally comes from the exit status (`waitpid`); the duration and the
timeout from the worker's own clock. Every reply to the main process is built here
from those typed values. A program can write whatever it likes to its own result
pipe and pick its own exit status, so it can at most dictate its own observation
(which `print` already lets it do); it cannot reach the protocol, another program's
result, the pool's bookkeeping or the cache's integrity.

Disk. As root, the tmpfs on the private directory is the budget (ENOSPC past
`max_disk_bytes` or `max_disk_files`) and vanishes with the child's mount namespace.
Without the privileges for that ("watch"), the worker scans the private directory
every `WATCH_INTERVAL_S` while the program runs and kills it once over budget (it can
overshoot by what it writes between two scans; RLIMIT_FSIZE still caps each file).
Either way the private directory is removed afterwards by a walk that handles any
depth and never raises (`_disk.py`).

Timing. The child closes its result pipe before exiting, so the worker has the whole
observation while the kernel is still tearing down the child's address space
(several ms for the pre-imported heap). The exit status only exists after that, so
the worker waits for whichever comes first, that exit (its pidfd) or the next
program; the next program is handed to the spare at once, the next spare forked,
and the previous child answered when it has exited, all while the next one runs.
A child is reaped and its directory removed before it is answered, so no private
directory outlives `run`. The wall-clock timeout
counts from the hand-over; a child that closed its pipe early still has to exit by
its deadline (or `EXIT_GRACE_S` after its output, whichever is later).

Not used, after measuring: `gc.disable()` in the child (the pre-imported heap is
already `gc.freeze()`-d; no measurable change), transparent huge pages for the heap
(cheaper fork, no clear gain once programs touch the shared pages), a pid namespace
per child (see `sandbox.py`).
"""

from __future__ import annotations

import builtins
import dataclasses
import gc
import hashlib
import importlib
import importlib.machinery
import json
import os
import random
import select
import signal
import struct
import sys
import tempfile
import time

from rstar_jax.verify import _disk
from rstar_jax.verify import program_runner as runner
from rstar_jax.verify import sandbox

# The worker's whole command line after `python -I -c`: no host path, no pid. It reads
# one framed JSON message (the settings, with the package root to import from).
BOOTSTRAP = (
    "import json, os, struct, sys\n"
    "def _read(n):\n"
    "    data = b''\n"
    "    while len(data) < n:\n"
    "        chunk = os.read(0, n - len(data))\n"
    "        if not chunk:\n"
    "            sys.exit(0)\n"
    "        data += chunk\n"
    "    return data\n"
    "_config = json.loads(_read(struct.unpack('>Q', _read(8))[0]))\n"
    "sys.path.insert(0, _config['package_root'])\n"
    "from rstar_jax.verify import _zygote\n"
    "sys.path.remove(_config['package_root'])\n"
    "_zygote.main(_config)\n"
)

_HEADER = struct.Struct(">Q")
# Precedes the program on a child's program pipe, so an empty program differs from a
# pipe closed without one (worker shutting down).
_PROGRAM_MARK = b"P"
# How a child's process ends, as the runner reports it with its exit status. Any other
# status means the program ended the process itself (os._exit) or was killed.
EXIT_CLEAN, EXIT_RAISED, EXIT_ABNORMAL = 100, 101, 102
EXIT_UNCONFINED = 103  # confinement failed; the program was never read
EXIT_NO_PROGRAM = 104  # the worker shut down before handing one over
EXIT_GRACE_S = 2.0
WATCH_FIRST_S = 0.01   # first scan of a watched private directory, after the hand-over
WATCH_INTERVAL_S = 0.025
# Threads of all sandboxed processes together (RLIMIT_NPROC of the sandbox uid).
MAX_SANDBOX_TASKS = 512


def read_message(fd: int) -> dict | None:
    """Blocking read of one framed JSON message from the main process; None at EOF."""
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


def clean_text(data: bytes) -> str:
    """Bytes from a child as valid text: undecodable bytes, surrogates included (the
    child encodes with surrogatepass), become U+FFFD."""
    return data.decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every child of this worker gets; decided once when the worker starts."""
    base_dir: str
    dir_prefix: str
    timeout_s: float
    memory_limit_mb: int
    max_output_bytes: int
    max_result_chars: int
    max_file_bytes: int
    max_disk_bytes: int
    max_disk_files: int
    disk: str                # "tmpfs" or "watch"
    uid: int | None          # the sandbox identity, None to keep the worker's
    gid: int | None
    read_paths: tuple[str, ...]

    @property
    def result_byte_cap(self) -> int:
        # An honest observation is at most max_result_chars characters of <= 4 bytes.
        return 4 * self.max_result_chars + 64


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
    """Worker-side handle of one forked child and what the worker saw of it."""

    def __init__(self, pid: int, pidfd: int | None, private_dir: str, program_fd: int,
                 result_fd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.private_dir = private_dir
        self.program_fd = program_fd  # write end; closed once the program is handed over
        self.result_fd = result_fd    # read end
        self.start = self.end = 0.0
        self.output = bytearray()
        # None while the program may still end normally; else why the worker stopped it
        self.stopped: str | None = None


def _keep_only_fds(keep: set[int]) -> None:
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = sorted(keep | {0, 1, 2})
    for low, high in zip(keep, keep[1:] + [1 << 20]):
        if high > low + 1:
            os.closerange(low + 1, high)


def _enter_sandbox(setup: Setup, private_dir: str) -> sandbox.Layers:
    """Every confinement step of a child, in order; raises if one that must hold fails."""
    os.setsid()
    sandbox.set_parent_death_signal()
    if setup.disk == "tmpfs":
        sandbox.unshare_mount_namespace(private=False)  # the worker's is private already
        sandbox.mount_tmpfs(private_dir, size_bytes=setup.max_disk_bytes,
                            inodes=setup.max_disk_files,
                            uid=setup.uid if setup.uid is not None else os.getuid(),
                            gid=setup.gid if setup.gid is not None else os.getgid())
    os.chdir(private_dir)
    os.environ.update(HOME=private_dir, TMPDIR=private_dir, PWD=private_dir)
    tempfile.tempdir = private_dir
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    file_bytes = setup.max_file_bytes
    if setup.disk == "watch":  # one file alone cannot pass the budget between two scans
        file_bytes = min(file_bytes, setup.max_disk_bytes)
    return sandbox.confine(
        private_dir=private_dir, read_paths=list(setup.read_paths),
        address_space_bytes=_vm_size_bytes() + setup.memory_limit_mb * (1 << 20),
        cpu_seconds=int(setup.timeout_s) + 2, file_size_bytes=file_bytes,
        uid=setup.uid, gid=setup.gid, max_tasks=MAX_SANDBOX_TASKS)


class _SeedNumpyOnImport:
    """Meta path finder: seeds numpy's global generator as soon as a program imports
    numpy.random (when the worker did not preload it)."""

    def __init__(self, seed: int):
        self.seed = seed

    def find_spec(self, name, path=None, target=None):
        if name != "numpy.random":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module, seed = spec.loader.exec_module, self.seed

        def exec_and_seed(module):
            exec_module(module)
            module.seed(seed)

        spec.loader.exec_module = exec_and_seed
        return spec


def seed_generators(program: str) -> None:
    """Seed `random` and numpy's global generator from the program text, so a re-run
    of a program equals its cached result and a resumed search repeats itself."""
    digest = hashlib.sha256(program.encode("utf-8", "surrogatepass")).digest()
    seed = int.from_bytes(digest[:4], "big")
    random.seed(seed)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed(seed)
    else:
        sys.meta_path.insert(0, _SeedNumpyOnImport(seed))


def _child(setup: Setup, private_dir: str, program_fd: int, result_fd: int) -> None:
    """Body of the forked child; never returns.

    Every confinement step happens before the program is read: the child is fully
    confined while it waits as the worker's spare, then reads exactly one program,
    runs it, reports and exits.
    """
    try:
        _keep_only_fds({program_fd, result_fd})
        _enter_sandbox(setup, private_dir)
    except BaseException as exc:  # refuse to run unconfined (the program is never read)
        write_all(result_fd, repr(exc).encode("utf-8", "replace")[:2000])
        os._exit(EXIT_UNCONFINED)
    data = _read_to_end(program_fd)
    os.close(program_fd)
    if not data.startswith(_PROGRAM_MARK):  # the worker shut down without handing one over
        os._exit(EXIT_NO_PROGRAM)
    program = data[len(_PROGRAM_MARK):].decode("utf-8", "surrogatepass")
    del data
    seed_generators(program)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    output, raised, abnormal = runner.run_program(
        program, namespace, setup.max_output_bytes, setup.max_result_chars)
    status = EXIT_ABNORMAL if abnormal else EXIT_RAISED if raised else EXIT_CLEAN
    try:
        write_all(result_fd, output.encode("utf-8", "surrogatepass"))
        # Closing before exit lets the worker see the end of the result while the kernel
        # is still tearing down this address space (several ms for a large heap).
        os.close(result_fd)
    finally:
        os._exit(status)


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


def _new_private_dir(setup: Setup) -> str:
    private_dir = tempfile.mkdtemp(prefix=setup.dir_prefix, dir=setup.base_dir)
    if setup.disk == "watch" and setup.uid is not None:
        os.chown(private_dir, setup.uid, setup.gid)  # a tmpfs gets its owner when mounted
    return private_dir


def fork_child(setup: Setup) -> Child:
    """Fork one child that confines itself and then waits for its program."""
    private_dir = _new_private_dir(setup)
    program_r, program_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _child(setup, private_dir, program_r, result_w)
        finally:
            os._exit(EXIT_UNCONFINED)
    os.close(program_r)
    os.close(result_w)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    return Child(pid, pidfd, private_dir, program_w, result_r)


def probe(setup: Setup) -> bool:
    """Whether a child confined by `setup` works: it confines itself and can read every
    import path (a uid that cannot read the Python installation would break imports)."""
    private_dir = _new_private_dir(setup)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            _keep_only_fds(set())
            _enter_sandbox(setup, private_dir)
            for path in sys.path:
                if path and os.path.isdir(path):
                    os.listdir(path)
            status = 0
        finally:
            os._exit(status)
    status = os.waitpid(pid, 0)[1]
    _disk.remove_tree(private_dir)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def hand_over(child: Child, program: str) -> None:
    """Give the child its (only) program; its wall-clock timeout starts now."""
    child.start = time.monotonic()
    try:
        write_all(child.program_fd, _PROGRAM_MARK + program.encode("utf-8", "surrogatepass"))
    except BrokenPipeError:
        pass  # the child is gone (failed confinement or killed); `finish` reports it
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
    except ChildProcessError:
        status = 0
    for fd in (child.program_fd, child.result_fd, child.pidfd):
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    child.program_fd = child.result_fd = -1
    child.pidfd = None
    _disk.remove_tree(child.private_dir)
    return status


def await_output(child: Child, setup: Setup, previous: Child | None = None,
                 answer=None) -> None:
    """Read the child's result pipe to its end, unless the child passes its deadline,
    its result byte cap or (watched) its disk budget first; then it is killed.

    `previous`: a child whose output is in but whose exit status is not; it is
    answered (`answer(finish(previous))`) as soon as it exits, and in any case before
    this returns, so replies stay in order.
    """
    deadline = child.start + setup.timeout_s
    next_scan = child.start + WATCH_FIRST_S if setup.disk == "watch" else float("inf")
    if previous is not None and previous.pidfd is None:  # no way to watch its exit
        answer(finish(previous, setup))
        previous = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            child.stopped = "timeout"
            break
        if now >= next_scan:
            if _disk.over_budget(child.private_dir, setup.max_disk_bytes,
                                 setup.max_disk_files):
                child.stopped = "disk"
                break
            next_scan = time.monotonic() + WATCH_INTERVAL_S
            continue
        wake = min(deadline, next_scan)
        watch = [child.result_fd]
        if previous is not None:
            if now >= _exit_deadline(previous, setup):
                answer(finish(previous, setup))  # it kept running: killed, timed out
                previous = None
                continue
            wake = min(wake, _exit_deadline(previous, setup))
            watch.append(previous.pidfd)
        ready = select.select(watch, [], [], wake - now)[0]
        if previous is not None and previous.pidfd in ready:
            answer(finish(previous, setup))
            previous = None
        if child.result_fd not in ready:
            continue
        chunk = os.read(child.result_fd, 1 << 16)
        if not chunk:
            break  # the child closed its end: it has said everything
        if len(child.output) + len(chunk) > setup.result_byte_cap:
            child.stopped = "oversized"
            break
        child.output += chunk
    child.end = time.monotonic()
    if child.stopped is not None:
        _kill_group(child)
    if previous is not None:
        answer(finish(previous, setup))


def _exit_deadline(child: Child, setup: Setup) -> float:
    """When a child whose output is in must have exited: its own deadline, or
    `EXIT_GRACE_S` after its output if that is later."""
    return max(child.start + setup.timeout_s, child.end + EXIT_GRACE_S)


def _exited(child: Child) -> bool:
    if child.pidfd is not None:
        return bool(select.select([child.pidfd], [], [], 0)[0])
    try:
        return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(child: Child, until: float) -> bool:
    """Wait (at most until monotonic time `until`) for the child to exit."""
    while not _exited(child):
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if child.pidfd is not None:
            select.select([child.pidfd], [], [], remaining)
        else:
            time.sleep(min(remaining, 0.001))
    return True


def finish(child: Child, setup: Setup) -> dict:
    """Wait for the child's exit status, reap it, and build its reply from scratch."""
    if child.stopped is None:
        if not _wait_exit(child, _exit_deadline(child, setup)):
            child.stopped = "timeout"  # closed its pipe, then kept running
            child.end = time.monotonic()
    status = reap(child)
    output, raised, abnormal, cacheable = _outcome(child, status, setup)
    return {"kind": "result", "output": runner.cap(output, setup.max_result_chars),
            "raised": raised, "abnormal": abnormal, "timed_out": child.stopped == "timeout",
            "cacheable": cacheable, "duration_s": max(child.end - child.start, 0.0)}


def _outcome(child: Child, status: int, setup: Setup) -> tuple[str, bool, bool, bool]:
    """(observation, raised, abnormal, cacheable) from what the worker saw."""
    if child.stopped == "timeout":
        return ("TimeoutError: Execution of the code snippet has timed out for exceeding "
                f"{setup.timeout_s:g} seconds.", True, True, True)
    if child.stopped == "disk":
        return (f"DiskLimitError: the program used more than {setup.max_disk_bytes} bytes "
                f"or {setup.max_disk_files} files on disk", True, True, True)
    if child.stopped == "oversized":
        return (f"SandboxError: the program's result was longer than "
                f"{setup.result_byte_cap} bytes", True, True, False)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if code in (EXIT_CLEAN, EXIT_RAISED, EXIT_ABNORMAL):
        return clean_text(child.output), code != EXIT_CLEAN, code == EXIT_ABNORMAL, True
    if code == EXIT_UNCONFINED:
        return ("SandboxError: could not confine the program: "
                f"{clean_text(child.output[:2000])}", True, True, False)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        # SIGKILL comes from outside the program (OOM killer, a person): not its result.
        return (f"SandboxError: the program's process was killed by {_signal_name(signum)} "
                "before reporting a result", True, True, signum != signal.SIGKILL)
    return (f"SandboxError: the program's process exited with status {code} before "
            "reporting a result", True, True, True)


def _alive(child: Child) -> bool:
    """Whether a child waiting for its program is still there (has not exited)."""
    return not _exited(child)


def _choose_setup(config: dict, read_paths: list[str]) -> tuple[Setup | None, list[str]]:
    """The strongest isolation this machine allows, found by probing; and the
    directories covered to let the sandbox user read the Python installation."""
    root = os.geteuid() == 0
    uid = config["sandbox_uid"] if root else None
    gid = config["sandbox_gid"] if uid is not None else None
    if config["disk_quota"] == "auto":
        disks = ["tmpfs", "watch"] if root else ["watch"]
    else:
        disks = [config["disk_quota"]]
    exposed: list[str] = []
    try:
        if not root:
            raise PermissionError("mount namespaces need root")
        sandbox.unshare_mount_namespace()  # the worker's own, for the views below
    except OSError:
        disks = [d for d in disks if d != "tmpfs"]
    else:
        if uid is not None:
            try:
                exposed = sandbox.expose_read_paths(read_paths + [config["base_dir"]],
                                                    uid, gid)
            except OSError:
                pass  # the probe below finds out whether the uid can read what it needs
    base = dict(base_dir=config["base_dir"], dir_prefix=config["dir_prefix"],
                timeout_s=float(config["timeout_s"]),
                memory_limit_mb=int(config["memory_limit_mb"]),
                max_output_bytes=int(config["max_output_bytes"]),
                max_result_chars=int(config["max_result_chars"]),
                max_file_bytes=int(config["max_file_bytes"]),
                max_disk_bytes=int(config["max_disk_bytes"]),
                max_disk_files=int(config["max_disk_files"]), read_paths=tuple(read_paths))
    for candidate_uid in ([uid, None] if uid is not None else [None]):
        for disk in disks:
            setup = Setup(disk=disk, uid=candidate_uid,
                          gid=gid if candidate_uid is not None else None, **base)
            if probe(setup):
                return setup, exposed
    return None, exposed


def main(config: dict) -> None:
    # The protocol moves off fds 0/1 so that stray writes cannot corrupt it.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # Dies with the executor; if the executor is already gone, stdin is at its end and
    # the first read below returns.
    sandbox.set_parent_death_signal()
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
    setup, exposed = _choose_setup(config, _read_paths())
    ready = {"kind": "ready", "preloaded": preloaded, "failed": failed}
    if setup is None:
        ready["error"] = (f"no confinement works here (disk_quota={config['disk_quota']!r}, "
                          f"euid {os.geteuid()})")
        write_all(out_fd, encode_message(ready))
        return
    ready["isolation"] = {
        "uid": setup.uid if setup.uid is not None else os.geteuid(), "disk": setup.disk,
        "landlock_abi": sandbox.landlock_abi(), "seccomp": sandbox._ARCH in sandbox._SYSCALLS,
        "exposed": exposed}
    # Objects alive now are shared copy-on-write with every child; freezing them keeps
    # the children's garbage collector from touching (and so copying) their pages.
    gc.collect()
    gc.freeze()
    write_all(out_fd, encode_message(ready))
    serve(setup, in_fd, out_fd)


def _exits_before_input(child: Child, setup: Setup, in_fd: int) -> bool:
    """Wait until `child` has exited (or passed its exit deadline) or the main process
    sends something; True for the first."""
    if child.pidfd is None:
        return True  # `finish` waits for it
    remaining = _exit_deadline(child, setup) - time.monotonic()
    ready = select.select([in_fd, child.pidfd], [], [], max(remaining, 0.0))[0]
    return child.pidfd in ready or in_fd not in ready


def serve(setup: Setup, in_fd: int, out_fd: int) -> None:
    """The worker's loop: one program per message, answered in order.

    A program is answered once its process has exited (the status is part of the
    answer); if the next program arrives first, it is handed over first and the
    previous one answered as soon as it has exited, while the next one runs.
    """
    spare = fork_child(setup)
    finishing: Child | None = None  # output read, exit status not yet
    started = encode_message({"kind": "started"})

    def answer(reply: dict) -> None:
        write_all(out_fd, encode_message(reply))

    try:
        while True:
            if finishing is not None and _exits_before_input(finishing, setup, in_fd):
                answer(finish(finishing, setup))
                finishing = None
                continue
            message = read_message(in_fd)
            if message is None:
                return
            if not _alive(spare):  # killed from outside while waiting: use a new one
                reap(spare)
                spare = fork_child(setup)
            running, spare = spare, None
            hand_over(running, message["program"])
            del message
            write_all(out_fd, started)  # from here on the program counts as run
            # The next program's process is forked and confined while this one runs,
            # and while the previous one's address space is torn down.
            spare = fork_child(setup)
            previous, finishing = finishing, None
            await_output(running, setup, previous, answer)
            finishing = running
    finally:
        for child in (finishing, spare):
            if child is not None:
                reap(child)
