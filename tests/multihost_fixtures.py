"""Running a launch script as several local processes on JAX's distributed runtime.

Each process is started with the script's own `--coordinator_address --num_processes
--process_id` flags (coordinator on localhost, CPU collectives through gloo) and
`JAX_NUM_CPU_DEVICES` fake CPU devices, as a cluster launcher would start one process
per host.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict:
    """A subprocess environment with `devices` CPU devices (and no test-session flags)."""
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1",
             MPLBACKEND="Agg")
    return e


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "launch", name), *args]


def start(cmd: list[str], num_processes: int, devices_per_process: int,
          logs_dir) -> list[subprocess.Popen]:
    """Start `cmd` as `num_processes` processes; stdout+stderr of process i go to
    logs_dir/proc<i>.log (a pipe could fill and block a process)."""
    port = free_port()
    procs = []
    os.makedirs(logs_dir, exist_ok=True)
    for i in range(num_processes):
        log = open(os.path.join(logs_dir, f"proc{i}.log"), "ab")
        flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                 f"--process_id={i}"] if num_processes > 1 else []
        procs.append(subprocess.Popen(cmd + flags, env=env(devices_per_process), stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT))
        log.close()
    return procs


def logs(logs_dir) -> str:
    out = []
    for name in sorted(os.listdir(logs_dir)):
        with open(os.path.join(logs_dir, name), errors="replace") as f:
            out.append(f"--- {name}\n{f.read()[-4000:]}")
    return "\n".join(out)


def wait(procs: list[subprocess.Popen], logs_dir, timeout_s: float = 600) -> None:
    """Wait for every process; on a failure or timeout kill them all and raise with logs."""
    deadline = time.time() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        kill(procs)
        raise AssertionError(f"timed out after {timeout_s} s\n{logs(logs_dir)}")
    codes = [p.returncode for p in procs]
    if any(codes):
        kill(procs)
        raise AssertionError(f"exit codes {codes}\n{logs(logs_dir)}")


def kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def run(cmd: list[str], num_processes: int, devices_per_process: int, logs_dir,
        timeout_s: float = 600) -> None:
    wait(start(cmd, num_processes, devices_per_process, logs_dir), logs_dir, timeout_s)
