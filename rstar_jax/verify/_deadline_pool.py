"""Run a module-level function in a helper process with a wall-clock deadline.

Why a process: math equivalence runs sympy, whose worst cases (huge expressions, slow
simplification, a long C call) must be cut off, and the grader runs in the same process
as JAX and the search driver, from any thread. An exception injected into the calling
thread (PyThreadState_SetAsyncExc) was tried first: it can land in whatever Python code
that thread runs next, including a JAX garbage-collection callback, which then fails.
A helper process that is killed at the deadline can only ever cost its own result.

Workers are fresh interpreters (`python -m rstar_jax.verify._deadline_pool`): forking a
process that has initialised JAX or threads is unsafe, and multiprocessing's "spawn"
re-runs the caller's `__main__` script in the child, which breaks plain scripts and
notebooks that grade at top level. They import their module once and serve calls one at
a time over two pipes. A worker that misses a deadline is killed and replaced; the pool
is thread-safe.
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import resource
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any


def _serve(rx: Connection, tx: Connection, memory_limit_bytes: int) -> None:
    """Worker loop: receive (module, function, args), send ("ok", result) or ("error", text)."""
    if memory_limit_bytes > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        except (ValueError, OSError):
            pass
    cache: dict[tuple[str, str], Any] = {}
    while True:
        try:
            msg = rx.recv()
        except (EOFError, OSError):
            return
        module, name, args = msg
        try:
            fn = cache.get((module, name))
            if fn is None:
                fn = cache[(module, name)] = getattr(importlib.import_module(module), name)
            reply = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - report anything, keep serving
            reply = ("error", f"{type(e).__name__}: {e}")
        try:
            tx.send(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One helper interpreter and the two pipe ends that talk to it."""

    def __init__(self, memory_limit_bytes: int, warm: tuple[str, ...]):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # The caller's import path, so functions of its own modules can be named.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(to_child_r), str(from_child_w),
             str(memory_limit_bytes)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self.tx = Connection(to_child_w, readable=False)
        self.rx = Connection(from_child_r, writable=False)
        for module in warm:     # import before the first deadline starts counting
            self.tx.send((module, "__name__", ()))

    def drain_warmup(self, count: int) -> None:
        for _ in range(count):
            self.rx.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.tx.close()
        self.rx.close()


class DeadlinePool:
    """`call(module, function, args, timeout_s)` in one of `num_workers` helper processes."""

    def __init__(self, num_workers: int = 2, *, memory_limit_mb: int = 4096,
                 warm_modules: tuple[str, ...] = ()):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self._memory = memory_limit_mb * 1024 * 1024
        self._warm = tuple(warm_modules)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._started = False
        self._pid = os.getpid()

    def _start(self) -> None:
        with self._lock:
            if self._started and self._pid == os.getpid():
                return
            self._pid, self._idle, self._all = os.getpid(), queue.Queue(), []
            for _ in range(self.num_workers):
                self._add_worker()
            self._started = True

    def _add_worker(self) -> None:
        w = _Worker(self._memory, self._warm)
        w.drain_warmup(len(self._warm))
        self._all.append(w)
        self._idle.put(w)

    def call(self, module: str, function: str, args: tuple, timeout_s: float) -> tuple[str, Any]:
        """("ok", result), ("error", "Type: message") or ("timeout", None)."""
        self._start()
        w = self._idle.get()
        try:
            w.tx.send((module, function, args))
            if w.rx.poll(timeout_s):
                reply = w.rx.recv()
                self._idle.put(w)
                return reply
        except (EOFError, OSError, BrokenPipeError):
            pass
        # Past the deadline or dead: this worker's state is unknown, replace it.
        w.kill()
        with self._lock:
            self._all.remove(w)
            self._add_worker()
        return ("timeout", None)

    def close(self) -> None:
        with self._lock:
            for w in self._all:
                w.kill()
            self._all, self._started = [], False


_POOLS: list[DeadlinePool] = []


def _close_all() -> None:
    for p in _POOLS:
        p.close()


def shared_pool(num_workers: int, **kw) -> DeadlinePool:
    """A pool closed when the interpreter exits (the exit hook is registered with the
    first one, not at import)."""
    pool = DeadlinePool(num_workers, **kw)
    if not _POOLS:
        atexit.register(_close_all)
    _POOLS.append(pool)
    return pool


if __name__ == "__main__":
    _rx_fd, _tx_fd, _memory = (int(a) for a in sys.argv[1:4])
    _serve(Connection(_rx_fd, writable=False), Connection(_tx_fd, readable=False), _memory)
