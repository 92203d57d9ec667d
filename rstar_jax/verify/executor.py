"""Sandboxed Python executor for model-written code steps (rstar_reference.md §3.4-3.5).

`PythonExecutor(...).run(programs) -> list[ExecResult]` runs a batch of whole
cumulative programs (the search replays every code step so far, assembled with
`rstar_jax.step_format.extract_program`) and returns, for each, the
observation the reference's `PythonInterpreter` would produce (semantics in
`program_runner`) and what happened to its process: `error` (an uncaught exception
or an abnormal end) and `timed_out`. The reference's own failure rule, "error" in the
output text (§3.5), is applied by the search (`search.expand.is_code_error`), not here.

Threat model: a program is hostile, and a policy trained on the verifier's rewards
will look for anything it lets through. Unlike the reference, which `exec`s model code
inside its own pool processes with only a signal timeout, model code never runs in
the main process nor in a long-lived worker. The layers, from the outside in:

1. Worker pool (`_zygote.py`): `num_workers` long-lived processes started with
   `python -I -c BOOTSTRAP` (no user site, no PYTHONPATH, no path or pid on the command
   line; settings come over stdin), a scrubbed environment (only PATH, LANG,
   thread-count variables and a fixed PYTHONHASHSEED: the parent's secrets are never
   inherited) and their own session. They pre-import math, sympy, numpy and scipy
   once and fork one child per program, so each program starts warm and in a fresh
   namespace and address space: no state can leak between programs. A worker that
   dies (or hangs past its watchdog) is killed and replaced; the programs it had
   confirmed starting report a `SandboxError` (not cached), programs queued behind
   them are retried, and the batch goes on.
2. Per-program process: own session and process group, PR_SET_PDEATHSIG (it dies
   with its worker, and cannot clear that), only its program and result pipes left
   open, a private working directory (HOME and TMPDIR point there) with a disk
   budget (`max_disk_bytes`, `max_disk_files`: a tmpfs of that size as root, else a
   watched quota) that is removed afterwards at any depth, a wall-clock timeout
   enforced by the worker. Each worker keeps one such process pre-forked and fully
   confined, waiting for its program: it receives exactly one program and is never
   reused, so pre-forking changes when a process is made, not what it sees.
3. Kernel confinement (`sandbox.py`): rlimits (address space, CPU, file size, open
   files, threads, no core dumps); as root, an unprivileged uid/gid (`sandbox_uid`)
   with no capabilities and no_new_privs; a seccomp filter (no fork/exec, no socket
   of any family, no ptrace, no signal, rlimit, priority or affinity change of another
   process, only harmless `prctl` options, no chmod/chown/utime/xattr); Landlock
   (writes only in the private directory, reads only of the Python installation and
   system libraries, no TCP, signals scoped). Each kernel layer is skipped gracefully
   where the platform lacks it (`isolation` says what holds); bubblewrap or
   containers are not required.
4. Results (`_zygote.py`): the worker reads the observation from a pipe with a byte
   cap, takes the outcome from the exit status and the duration and timeout from its
   own clock, and builds every message to the main process itself; nothing the
   program writes is parsed. Output is valid UTF-8 and at most `max_result_chars`.
5. Output shaping (`program_runner.py`): a cap on bytes written to stdout/stderr and
   on the returned text, so a flood cannot exhaust memory or bloat trees on disk.

A program can: compute, allocate up to `memory_limit_mb`, use threads, read the
Python installation and system libraries, write up to the disk budget in its own
directory, choose its own observation. It cannot: start processes, reach the
network or any socket, read the work or home directories or /proc, write or change
the metadata of anything outside its directory, signal, limit, trace or even name
another process (`getppid` is 0), outlive its timeout or its worker, or affect what
another program or the pool sees.

Throughput. Most of a program's cost is the kernel's, not Python's: copying the
worker's page tables at fork (about 30k pages of pre-imported heap), copy-on-write
faults as the program touches shared objects, and tearing the address space down at
exit; confinement itself is about 2 ms. So the per-program process is taken off the
critical path rather than made cheaper: the main process keeps `MAX_IN_FLIGHT`
programs queued at each worker, the worker hands the next one to its waiting spare
child the moment the previous output is in and forks the following spare while that
program runs, and the finished child's teardown and exit status are waited for while
the next one runs (or before answering when nothing is queued, so no private
directory outlives `run`).

Results are cached by exact program text (bounded LRU): tree search re-executes the
same prefixes constantly, and the reference has no such cache (§2.11). Programs are
deterministic in the sandbox (fixed hash seed; `random` and numpy's global generator
seeded from a hash of the program text), so a cached result equals a re-run. Results
the program did not cause (sandbox failures, a worker killed from outside, an
oversized result) are never cached.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

from rstar_jax.verify import _disk, _zygote, program_runner

# rstar_deepthink/tools/python_tool.py TIMEOUT_SECONDS; the reference wraps it in a
# second 60 s timeout for the whole step (constants.TIMEOUT_SECONDS), §3.4.
REFERENCE_TIMEOUT_S = 30.0
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools",
                   "collections", "random", "statistics", "re", "sympy", "numpy", "scipy",
                   "scipy.special", "scipy.optimize", "scipy.integrate", "scipy.linalg")
# Run once in each worker before it forks programs (our code, not the model's): it
# performs the lazy imports and cache fills of common sympy/numpy/scipy calls, so
# children inherit them instead of paying for them per program.
DEFAULT_WARMUP = """
import math, fractions, itertools
from sympy import (symbols, Symbol, Eq, solve, simplify, expand, factor, Rational, sqrt,
                   pi, N, integrate, diff, sin, cos, limit, nsimplify, latex, binomial,
                   factorial, gcd, lcm, isprime, Matrix, summation, oo, log, exp)
x, y, n = symbols('x y n')
solve(Eq(3*x + 2, 5*x - 7), x); solve([x + y - 3, x - y - 1], [x, y]); solve(x**2 - 4, x)
simplify((x**2 - 1)/(x - 1)); expand((x + 1)**3); factor(x**2 - 1)
Rational(1, 3) + Rational(1, 6); sqrt(8); N(pi, 10); nsimplify(0.5); latex(x**2)
integrate(x**2, (x, 0, 1)); diff(sin(x), x); limit(sin(x)/x, x, 0)
summation(n**2, (n, 1, 10)); Matrix([[1, 2], [3, 4]]).det(); isprime(97)
str(Rational(7, 3)); str(sqrt(2) / 2)
import numpy as np
a = np.array([1.0, 2.0, 3.0]); a.sum(); a.mean(); np.linalg.solve(np.eye(2), np.ones(2))
np.roots([1, -3, 2]); str(a)
import scipy.optimize, scipy.integrate
scipy.optimize.brentq(lambda t: t*t - 2, 0, 2); scipy.integrate.quad(lambda t: t, 0, 1)
"""
# Time a worker gets, on top of the program timeout, before the main process assumes
# the worker itself is stuck; and the time for a fresh worker to import its libraries.
WATCHDOG_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 180.0
MAX_STARTUP_FAILURES = 3
# Programs sent to one worker before its first answer: the second waits in the pipe, so
# the worker hands it to its pre-forked child the moment the first one's output is in.
MAX_IN_FLIGHT = 2
# A worker's message is built by the worker from capped fields; anything longer is a
# broken worker.
MAX_MESSAGE_BYTES = 1 << 22
DISK_QUOTAS = ("auto", "tmpfs", "watch")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """What running one program gave.

    output: the observation (at most `max_result_chars` characters, valid UTF-8).
    error: what happened to the process: the program raised an uncaught exception, or
        did not end normally (timeout, crash, sys.exit, output cap, disk budget,
        sandbox failure). Its output is not read: `print('no ERROR here')` is not an
        error. The reference's substring rule (§3.5) is the search's to apply.
    timed_out: the wall-clock timeout killed the program.
    raised: the same as `error` (kept for callers of the earlier API, where it was
        stricter than a substring-based `error`).
    duration_s: wall-clock seconds in the worker, hand-over to result (0.0 for a result
        made by the main process, such as a dead worker).
    """
    output: str
    error: bool
    timed_out: bool = False
    raised: bool = False
    duration_s: float = 0.0


def _scrubbed_env() -> dict[str, str]:
    """The only environment a worker (and so a program) sees."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        # One BLAS/OpenMP thread: the pool is the parallelism, and a forked child
        # must not inherit a thread pool it cannot use.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }


def _sandbox_error(text: str) -> ExecResult:
    return ExecResult(output=f"SandboxError: {text}", error=True, raised=True)


class _Worker:
    """Main-process handle of one `_zygote` worker."""

    def __init__(self, index: int, generation: int, config: dict):
        self.index = index
        # The worker's private directories start with this, so the ones a dead worker
        # leaves behind can be removed.
        self.dir_prefix = f"prog{index}.{generation}_"
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _zygote.BOOTSTRAP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_scrubbed_env(), cwd="/", start_new_session=True, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = bytearray()
        self.ready = False
        self.isolation: dict | None = None
        self.started = time.monotonic()
        # Programs sent and not yet answered, oldest first; the first `started_jobs` of
        # them were confirmed handed to a child (the worker answers in order, and may
        # start the next program before answering the previous one).
        self.jobs: collections.deque[str] = collections.deque()
        self.started_jobs = 0
        self.startup_failures = 0  # consecutive deaths before "ready" in this slot
        self.deadline = 0.0
        try:
            self.proc.stdin.write(_zygote.encode_message(dict(config, dir_prefix=self.dir_prefix)))
            self.proc.stdin.flush()
        except OSError:
            pass  # it died at once; its stdout says so

    def send(self, program: str, timeout_s: float) -> None:
        if not self.jobs:  # else the deadline moves with each answer; see `progress`
            self.deadline = time.monotonic() + timeout_s + WATCHDOG_GRACE_S
        self.jobs.append(program)
        self.proc.stdin.write(_zygote.encode_message({"program": program}))
        self.proc.stdin.flush()

    def progress(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s + WATCHDOG_GRACE_S

    def read_messages(self) -> list | None:
        """Messages now complete; None when the worker closed its end (it died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            return None
        if chunk:
            self.buffer += chunk
        messages = []
        size = _zygote._HEADER.size
        while len(self.buffer) >= size:
            (length,) = _zygote._HEADER.unpack(self.buffer[:size])
            if length > MAX_MESSAGE_BYTES:
                messages.append(None)  # a broken worker; `_on_readable` replaces it
                self.buffer.clear()
                break
            if len(self.buffer) < size + length:
                break
            body = bytes(self.buffer[size:size + length])
            del self.buffer[:size + length]
            try:
                messages.append(json.loads(body.decode("utf-8")))
            except ValueError:
                messages.append(None)
        return messages

    def stderr_tail(self) -> str:
        try:
            os.set_blocking(self.proc.stderr.fileno(), False)
            data = self.proc.stderr.read() or b""
        except (OSError, ValueError):
            data = b""
        return data.decode("utf-8", "replace")[-2000:]

    def kill(self) -> None:
        """Kill the worker and everything in its session; never raises."""
        for kill, target in ((os.killpg, self.proc.pid), (os.kill, self.proc.pid)):
            try:
                kill(target, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait()
        except Exception:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except Exception:
                pass


def _result_from(message: dict, max_result_chars: int) -> tuple[ExecResult, bool] | None:
    """The result in a worker's `result` message and whether it may be cached; None
    if the message is not one (then the worker is broken)."""
    output = message.get("output")
    flags = [message.get(k) for k in ("raised", "abnormal", "timed_out", "cacheable")]
    duration = message.get("duration_s")
    if (not isinstance(output, str) or not all(isinstance(f, bool) for f in flags)
            or not isinstance(duration, (int, float)) or isinstance(duration, bool)):
        return None
    raised, abnormal, timed_out, cacheable = flags
    error = raised or abnormal or timed_out
    result = ExecResult(output=program_runner.cap(output, max_result_chars),
                        error=error, timed_out=timed_out, raised=error,
                        duration_s=float(duration))
    return result, cacheable


class PythonExecutor:
    """A pool of sandboxed workers that runs model-written programs (module docstring).

    Args:
      num_workers: worker processes (each runs one program at a time).
      timeout_s: wall-clock limit per program; the reference's value is
        `REFERENCE_TIMEOUT_S` = 30 s.
      memory_limit_mb: address space a program may add on top of the pre-imported
        libraries (RLIMIT_AS); beyond it allocations raise MemoryError. A tmpfs disk
        budget is memory too, on top of this.
      max_output_bytes: characters a program may write to stdout/stderr in total;
        beyond it the program stops with `OutputLimitError`.
      max_result_chars: cap on the returned observation (the reference cuts each print
        segment to 1024 characters; this bounds programs with many print statements).
      max_file_bytes: largest file a program may write (RLIMIT_FSIZE).
      max_disk_bytes, max_disk_files: what a program may hold in its private directory
        in all (bytes; files and directories). With the tmpfs budget a write past it
        fails with ENOSPC; a watched program past it is stopped (`DiskLimitError`).
      disk_quota: "tmpfs" (a mount namespace per program with a tmpfs of the budget's
        size on its directory; needs root), "watch" (the worker scans the directory
        while the program runs and stops it once over budget) or "auto" (tmpfs where
        possible).
      sandbox_uid, sandbox_gid: identity a program runs as when the main process is
        root (None keeps root, with no capabilities). Ignored for other users, whose
        programs run as themselves. If that uid cannot read the Python installation
        even through the read-only views the worker sets up, programs keep the
        caller's uid; `isolation` says which held.
      cache_size: programs whose results are kept (LRU); 0 disables the cache.
      preload: modules each worker imports once before forking programs.
      warmup: trusted code each worker runs once after the imports, so programs start
        with sympy's lazy imports and caches filled; None means `DEFAULT_WARMUP` when
        sympy, numpy and scipy are all preloaded, else nothing.

    Use as a context manager, or call `close()`; `run` is safe to call from several
    threads (calls are serialised).
    """

    def __init__(self, num_workers: int = 4, *, timeout_s: float = REFERENCE_TIMEOUT_S,
                 memory_limit_mb: int = 1024, max_output_bytes: int = 1 << 20,
                 max_result_chars: int = 4096, max_file_bytes: int = 16 << 20,
                 max_disk_bytes: int = 64 << 20, max_disk_files: int = 4096,
                 disk_quota: str = "auto", sandbox_uid: int | None = 65534,
                 sandbox_gid: int | None = 65534, cache_size: int = 16384,
                 preload: Sequence[str] = DEFAULT_PRELOAD, warmup: str | None = None):
        if sys.platform != "linux":
            raise RuntimeError(f"PythonExecutor needs Linux (fork, rlimits, seccomp); "
                               f"this is {sys.platform}")
        checks = {"num_workers": (num_workers, 1), "timeout_s": (timeout_s, 1e-3),
                  "memory_limit_mb": (memory_limit_mb, 16),
                  "max_output_bytes": (max_output_bytes, 1),
                  "max_result_chars": (max_result_chars, 16),
                  "max_file_bytes": (max_file_bytes, 0),
                  "max_disk_bytes": (max_disk_bytes, 1 << 16),
                  "max_disk_files": (max_disk_files, 16), "cache_size": (cache_size, 0)}
        for name, (value, low) in checks.items():
            if not value >= low:
                raise ValueError(f"PythonExecutor {name} must be >= {low}, got {value!r}")
        if disk_quota not in DISK_QUOTAS:
            raise ValueError(f"PythonExecutor disk_quota must be one of {DISK_QUOTAS}, "
                             f"got {disk_quota!r}")
        for name, value in (("sandbox_uid", sandbox_uid), ("sandbox_gid", sandbox_gid)):
            if value is not None and not (isinstance(value, int) and 0 < value < 2**32 - 1):
                raise ValueError(f"PythonExecutor {name} must be None or an unprivileged "
                                 f"id (> 0), got {value!r}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.cache_size = int(cache_size)
        self.max_result_chars = int(max_result_chars)
        self._base_dir = tempfile.mkdtemp(prefix="rstar_exec_")
        # Searchable but not listable: the sandbox uid must reach its own directory.
        os.chmod(self._base_dir, 0o711)
        self._config = {
            "timeout_s": self.timeout_s, "memory_limit_mb": int(memory_limit_mb),
            "max_output_bytes": int(max_output_bytes),
            "max_result_chars": self.max_result_chars,
            "max_file_bytes": int(max_file_bytes), "max_disk_bytes": int(max_disk_bytes),
            "max_disk_files": int(max_disk_files), "disk_quota": disk_quota,
            "sandbox_uid": sandbox_uid,
            "sandbox_gid": sandbox_gid if sandbox_gid is not None else sandbox_uid,
            "preload": list(preload),
            "warmup": (warmup if warmup is not None else DEFAULT_WARMUP
                       if {"sympy", "numpy", "scipy"} <= set(preload) else ""),
            "base_dir": self._base_dir, "package_root": _PACKAGE_ROOT}
        self._cache: collections.OrderedDict[str, ExecResult] = collections.OrderedDict()
        self._hits = self._misses = self._restarts = 0
        self._generation = 0
        self._isolation: dict | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        try:
            for i in range(self.num_workers):
                self._workers.append(self._new_worker(i))
        except BaseException:
            self.close()
            raise

    # -- public API -----------------------------------------------------------------

    @property
    def base_dir(self) -> str:
        """Directory holding the programs' private directories (removed by `close`)."""
        return self._base_dir

    @property
    def isolation(self) -> dict | None:
        """What confines programs, as the last worker to start reported it (None until
        one has): `uid` they run as, `disk` ("tmpfs" or "watch"), `landlock_abi` (0:
        none), `seccomp`, and `exposed` (directories shown read-only to the sandbox
        uid so it can read the Python installation)."""
        return self._isolation

    def cache_info(self) -> dict[str, int]:
        """Cache hits, misses, current size, and how many workers were replaced."""
        return {"hits": self._hits, "misses": self._misses, "size": len(self._cache),
                "max_size": self.cache_size, "worker_restarts": self._restarts}

    def run(self, programs: Sequence[str]) -> list[ExecResult]:
        """Run each program (whole cumulative source) and return its result, in order."""
        if isinstance(programs, str):
            raise TypeError("PythonExecutor.run takes a list of programs, got one str; "
                            "wrap it in a list")
        for i, program in enumerate(programs):
            if not isinstance(program, str):
                raise TypeError(f"programs[{i}] must be str, got {type(program).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("PythonExecutor.run called after close(); "
                                   "create a new executor")
            results: list[ExecResult | None] = [None] * len(programs)
            todo: dict[str, list[int]] = {}
            for i, program in enumerate(programs):
                hit = self._cache_get(program)
                if hit is not None:
                    results[i] = hit
                else:
                    todo.setdefault(program, []).append(i)
            for program, result in self._execute(list(todo)).items():
                for i in todo[program]:
                    results[i] = result
            return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the workers (and so every program process) and delete every temporary
        directory; safe to call twice, never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                try:
                    worker.proc.stdin.close()  # the worker exits at end of input
                except Exception:
                    pass
            deadline = time.monotonic() + 2.0
            for worker in self._workers:
                try:
                    worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except Exception:
                    pass
                worker.kill()
            _disk.remove_tree(self._base_dir)

    def __enter__(self) -> "PythonExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            self.close()

    # -- internals --------------------------------------------------------------------

    def _new_worker(self, index: int) -> _Worker:
        self._generation += 1
        return _Worker(index, self._generation, self._config)

    def _cache_get(self, program: str) -> ExecResult | None:
        if self.cache_size and program in self._cache:
            self._cache.move_to_end(program)
            self._hits += 1
            return self._cache[program]
        self._misses += 1
        return None

    def _cache_put(self, program: str, result: ExecResult) -> None:
        if not self.cache_size:
            return
        self._cache[program] = result
        self._cache.move_to_end(program)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._restarts += 1
        # What the dead worker's programs left on disk (watched quota only; a tmpfs
        # vanished with them).
        try:
            names = [n for n in os.listdir(self._base_dir) if n.startswith(worker.dir_prefix)]
        except OSError:
            names = []
        for name in names:
            _disk.remove_tree(os.path.join(self._base_dir, name))
        self._workers[worker.index] = self._new_worker(worker.index)

    def _execute(self, programs: list[str]) -> dict[str, ExecResult]:
        """Spread unique uncached programs over the workers; event loop on their pipes."""
        pending = collections.deque(programs)
        done: dict[str, ExecResult] = {}
        self._requeued: collections.Counter[str] = collections.Counter()
        selector = selectors.DefaultSelector()
        try:
            while len(done) < len(programs):
                # Breadth first: every worker gets one program before any gets a second.
                for depth in range(1, MAX_IN_FLIGHT + 1):
                    for worker in list(self._workers):
                        if worker.ready and len(worker.jobs) < depth and pending:
                            program = pending.popleft()
                            try:
                                worker.send(program, self.timeout_s)
                            except OSError:  # it died: replace it
                                self._worker_died(worker, done, pending)
                active = [w for w in self._workers if not w.ready or w.jobs]
                if not active:
                    continue
                now = time.monotonic()
                wait = min((w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S)
                           for w in active) - now
                for worker in active:
                    selector.register(worker.fd, selectors.EVENT_READ, worker)
                events = selector.select(timeout=max(wait, 0.0))
                for worker in active:
                    selector.unregister(worker.fd)
                for key, _ in events:
                    self._on_readable(key.data, done, pending)
                self._check_deadlines(done, pending)
        finally:
            selector.close()
        return done

    def _on_readable(self, worker: _Worker, done: dict[str, ExecResult],
                     pending: collections.deque) -> None:
        messages = worker.read_messages()
        if messages is None:  # the worker died
            if not worker.ready:
                # A worker killed from outside while importing is replaced; one that keeps
                # dying while starting is broken (bad interpreter, missing library).
                failures = worker.startup_failures + 1
                message = (f"executor worker {worker.index} died while starting {failures} "
                           f"times (last exit code {worker.proc.wait()}): "
                           f"{worker.stderr_tail() or 'no stderr'}")
                self._replace(worker)
                self._workers[worker.index].startup_failures = failures
                if failures >= MAX_STARTUP_FAILURES:
                    raise RuntimeError(message)
                return
            self._worker_died(worker, done, pending)
            return
        for message in messages:
            if not self._apply(worker, message, done):
                # Not what a worker sends: its state is unknown, so it is replaced.
                self._worker_died(worker, done, pending)
                return

    def _apply(self, worker: _Worker, message, done: dict[str, ExecResult]) -> bool:
        """Act on one message from a worker; False if it is not a valid one now."""
        kind = message.get("kind") if isinstance(message, dict) else None
        if kind == "ready" and not worker.ready:
            if message.get("error"):
                raise RuntimeError(f"executor worker {worker.index} cannot confine "
                                   f"programs: {message['error']}")
            worker.ready = True
            worker.startup_failures = 0
            worker.isolation = self._isolation = message.get("isolation")
            return True
        if not worker.ready:
            return False
        if kind == "started" and worker.started_jobs < len(worker.jobs):
            worker.started_jobs += 1
            worker.progress(self.timeout_s)
            return True
        if kind == "result" and worker.started_jobs > 0:
            parsed = _result_from(message, self.max_result_chars)
            if parsed is None:
                return False
            result, cacheable = parsed
            program = worker.jobs.popleft()
            worker.started_jobs -= 1
            worker.progress(self.timeout_s)
            done[program] = result
            if cacheable:
                self._cache_put(program, result)
            return True
        return False

    def _worker_died(self, worker: _Worker, done: dict[str, ExecResult],
                     pending: collections.deque) -> None:
        """Replace a dead (or broken) worker. Programs it had confirmed starting report a
        `SandboxError` (not cached); programs that had not started go back to the queue."""
        for _ in range(min(worker.started_jobs, len(worker.jobs))):
            done[worker.jobs.popleft()] = _sandbox_error(
                "the executor worker died while running this program")
        if (worker.jobs and not worker.started_jobs
                and self._requeued[worker.jobs[0]] >= MAX_STARTUP_FAILURES):
            # (a worker that keeps dying before starting the same program is broken)
            done[worker.jobs.popleft()] = _sandbox_error(
                "the executor worker died before running this program, "
                f"{MAX_STARTUP_FAILURES} times")
        for program in worker.jobs:
            self._requeued[program] += 1
        pending.extendleft(reversed(worker.jobs))
        worker.jobs.clear()
        self._replace(worker)

    def _check_deadlines(self, done: dict[str, ExecResult],
                         pending: collections.deque) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.ready and now > worker.started + STARTUP_TIMEOUT_S:
                tail = worker.stderr_tail()
                worker.kill()
                raise RuntimeError(f"executor worker {worker.index} did not start within "
                                   f"{STARTUP_TIMEOUT_S:g} s: {tail or 'no stderr'}")
            if worker.ready and worker.jobs and now > worker.deadline:
                # The worker enforces the program timeout itself; getting here means the
                # worker is stuck, so it is replaced and the program counts as timed out
                # (programs queued behind it are retried).
                program = worker.jobs.popleft()
                pending.extendleft(reversed(worker.jobs))
                worker.jobs.clear()
                done[program] = ExecResult(
                    output=("TimeoutError: Execution of the code snippet has timed out for "
                            f"exceeding {self.timeout_s:g} seconds."),
                    error=True, timed_out=True, raised=True)
                self._replace(worker)
