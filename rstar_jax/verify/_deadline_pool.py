"""Run a module-level function in a helper process with a wall-clock deadline.

Why a process: math equivalence runs sympy, whose worst cases (huge expressions, slow
simplification, a long C call) must be cut off, and the grader runs in the same process
as JAX and the search driver, from any thread. An exception injected into the calling
thread (PyThreadState_SetAsyncExc) was tried first: it can land in whatever Python code
that thread runs next, including a JAX garbage-collection callback, which then fails.
A helper process that is killed at the deadline can only ever cost its own result.

Workers are started with the "spawn" method (forking a process that has initialised
JAX or threads is unsafe), import their module once, and serve calls one at a time. A
worker that misses a deadline is killed and replaced; the pool is thread-safe.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing as mp
import os
import queue
import resource
import threading
from typing import Any

_CTX = mp.get_context("spawn")


def _serve(conn, memory_limit_bytes: int) -> None:
    """Worker loop: receive (module, function, args), send ("ok", result) or ("error", text)."""
    if memory_limit_bytes > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        except (ValueError, OSError):
            pass
    cache: dict[tuple[str, str], Any] = {}
    while True:
        try:
            msg = conn.recv()
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
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, memory_limit_bytes: int, warm: tuple[str, ...]):
        self.conn, child = _CTX.Pipe()
        self.process = _CTX.Process(target=_serve, args=(child, memory_limit_bytes),
                                    name="rstar-grader", daemon=True)
        self.process.start()
        child.close()
        for module in warm:     # import before the first deadline starts counting
            self.conn.send((module, "__name__", ()))

    def drain_warmup(self, count: int) -> None:
        for _ in range(count):
            self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


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
            w.conn.send((module, function, args))
            if w.conn.poll(timeout_s):
                reply = w.conn.recv()
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


@atexit.register
def _close_all() -> None:
    for p in _POOLS:
        p.close()


def shared_pool(num_workers: int, **kw) -> DeadlinePool:
    pool = DeadlinePool(num_workers, **kw)
    _POOLS.append(pool)
    return pool
