"""Multi-process runs on JAX's distributed runtime: start it, say where this process
stands, wait for the others, and move host data to and from global arrays.

One process per host (or per GPU) runs the same command. Search and evaluation split
the problems between processes, each on its own local devices; training uses one global
mesh over every process's devices (`jax.devices()`), with each process handing JAX only
the batch rows that its own devices hold. This module is a leaf: it imports JAX and
nothing else of the project.

`initialize` starts the runtime from explicit flags (`--coordinator_address
--num_processes --process_id`) or from a cluster JAX detects by itself (SLURM, Open
MPI, Cloud TPU pods); with neither, the run is a single process and nothing is started.
On CPU the collectives go through gloo (the CPU backend has no others).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

# Environment variables that mean "this command was started as one task of several".
# jax.distributed.initialize() reads the same launchers' variables to find its peers.
# SLURM counts only inside an srun step (SLURM_STEP_NODELIST, which JAX needs to find
# the coordinator): a batch script's own shell also sees SLURM_NTASKS, and a command
# run there directly is one process.
_CLUSTER_SIZE_ENV = {
    "SLURM": ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
    "Open MPI": ("OMPI_COMM_WORLD_SIZE",),
}
_REQUIRED_ENV = {"SLURM": "SLURM_STEP_NODELIST"}
MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Process:
    """This process's place in the run: index in [0, count)."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        """Process 0 writes the files every process shares (merged trees, markers)."""
        return self.index == 0

    @property
    def multi(self) -> bool:
        return self.count > 1


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher that started several tasks of this command, or None."""
    env = os.environ if environ is None else environ
    for name, keys in _CLUSTER_SIZE_ENV.items():
        if name in _REQUIRED_ENV and _REQUIRED_ENV[name] not in env:
            continue
        size = next((env[k] for k in keys if k in env), "1")   # the first one set decides
        try:
            if int(size) > 1:
                return name
        except ValueError:
            pass
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return "Cloud TPU pod"
    return None


def check_flags(mode: str, coordinator_address: str | None, num_processes: int | None,
                process_id: int | None) -> None:
    """ValueError naming the flag when the set-up cannot work (before JAX starts)."""
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    named = [k for k, v in given.items() if v is not None]
    if named and mode == "off":
        raise ValueError(f"--distributed=off contradicts {', '.join(named)}")
    if named and len(named) < 3:
        missing = [k for k, v in given.items() if v is None]
        raise ValueError(f"{', '.join(named)} given without {', '.join(missing)}: an explicit "
                         "multi-process set-up needs all three (or none, to let JAX detect "
                         "SLURM, Open MPI or a TPU pod)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or 1):
        raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ValueError(f"--coordinator_address must be host:port, got {coordinator_address!r}")


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> Process:
    """Start the distributed runtime when this run has several processes.

    mode "auto": start it for explicit flags or a detected cluster; "on": always (JAX
    must find its peers itself when no flags are given); "off": never. Must run before
    anything touches a JAX backend (device lists, arrays, jit).
    """
    import jax
    check_flags(mode, coordinator_address, num_processes, process_id)
    explicit = coordinator_address is not None
    if jax.distributed.is_initialized():
        return current()
    if mode == "off" or (mode == "auto" and not explicit and detected_cluster() is None):
        return Process()
    if explicit and num_processes == 1:
        return Process()
    _use_cpu_collectives()
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return current()


def _use_cpu_collectives() -> None:
    """CPU computations that span processes need a collectives library: gloo (it only
    affects the CPU backend, so it is harmless on GPU and TPU hosts)."""
    import jax
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):
        pass    # a JAX without the option picks its own


def current() -> Process:
    """This process's index and the number of processes (1 without the runtime)."""
    import jax
    return Process(jax.process_index(), jax.process_count())


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for a single process).

    `name` must be the same on every process and unique in its order of arrival; a
    process that died makes the others fail here after the runtime's heartbeat timeout.
    """
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def local_rows(sharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of a global array of `shape` that this process's devices hold, as one
    slice per dimension (a process's devices hold a contiguous block on the meshes that
    `jax.make_mesh` builds: processes are outermost in its device order)."""
    index = sharding.addressable_devices_indices_map(tuple(shape))
    block = []
    for d, size in enumerate(shape):
        spans = sorted({(s[d].start or 0, size if s[d].stop is None else s[d].stop)
                        for s in index.values()})
        lo, hi = spans[0][0], max(stop for _, stop in spans)
        covered = lo
        for start, stop in spans:
            if start > covered:
                raise ValueError(f"this process's devices hold rows {spans} of dimension {d}: "
                                 "not one block; build the mesh with jax.make_mesh over "
                                 "jax.devices() so each process's devices are adjacent")
            covered = max(covered, stop)
        block.append(slice(lo, hi))
    return tuple(block)


def to_global(host: Mapping[str, Any], shardings: Mapping[str, Any]) -> dict:
    """Global arrays from a host batch that every process computed the same way: each
    process passes only its own rows (`jax.make_array_from_process_local_data`).

    host: {name: numpy array with the global shape}; shardings: {name: NamedSharding}.
    """
    import jax
    out = {}
    for k, x in host.items():
        sh = shardings[k]
        out[k] = jax.make_array_from_process_local_data(sh, x[local_rows(sh, x.shape)], x.shape)
    return out


def to_host(tree):
    """A pytree of (possibly multi-process) arrays as numpy arrays, the same on every
    process (an all-gather when an array is not fully addressable here)."""
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def sum_over_processes(value: float) -> float:
    """The sum of a host number over every process (the number itself for one)."""
    import jax
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils
    return float(np.sum(multihost_utils.process_allgather(np.asarray(value, np.float64))))


def gather_objects(obj: Any) -> list:
    """Every process's JSON-serializable `obj`, in process order, on every process
    (`[obj]` for one process). For small host results (an evaluation's per-problem
    rows), not for arrays."""
    import jax
    if jax.process_count() == 1:
        return [obj]
    import json

    import numpy as np
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
    sizes = sizes.reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(every, sizes)]
