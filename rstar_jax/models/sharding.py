"""Device meshes (data, fsdp, tensor) and the one table that decides all sharding.

Every parameter and activation dimension has a logical name; `DEFAULT_RULES` maps logical
names to mesh axes, so changing the parallelism is a config change (the MaxText idea).
A dimension that the mesh axes do not divide evenly is replicated instead (tiny models
on big meshes), never padded.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rstar_jax.models.qwen2 import LAYER_PARAMS

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of axes, or None for replicated)
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_vocab": "tensor",
    "act_heads": "tensor",
    "vocab": "tensor",
    "table_vocab": None,   # the embedding table's vocab axis at lookup time
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "value": None,
}

# Logical axes of every parameter, by its leaf name (see qwen2.py's layout and its
# LAYER_PARAMS table, which describes the decoder layer once for every part).
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    **{name: ("layers",) + p.axes for name, p in LAYER_PARAMS.items()},
    "kernel": ("embed", "value"),   # value head
    "bias": ("value",),
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
            f"{math.prod(shape)} devices, {len(devices)} available")
    per_process: dict[int, int] = {}
    for d in devices:
        per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
    if len(per_process) > 1 and any(n % shape[2] for n in per_process.values()):
        # The tensor axis all-reduces inside every layer: across hosts it would be slow.
        raise ValueError(f"mesh tensor={shape[2]} must divide the devices of each process "
                         f"({sorted(set(per_process.values()))}): tensor parallelism stays "
                         "within a host; put data and fsdp across hosts")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def mesh_from_config(c: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of a config's `mesh` section, over `devices` (default:
    every process's devices; engines pass `jax.local_devices()`, since each process
    searches its own problems)."""
    return make_mesh(int(c["data"]), int(c["fsdp"]), int(c["tensor"]), devices=devices)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules: Mapping | None = None) -> P:
    """PartitionSpec for logical axis names; dims the mesh does not divide are replicated."""
    rules = DEFAULT_RULES if rules is None else rules
    spec, used = [], set()
    for i, name in enumerate(logical):
        axes = rules.get(name) if name is not None else None
        if axes is not None:
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            axes_t = tuple(a for a in axes_t if a not in used and mesh.shape.get(a, 1) > 1)
            size = _axis_size(mesh, axes_t) if axes_t else 1
            if not axes_t or (shape is not None and shape[i] % size):
                axes = None
            else:
                used.update(axes_t)
                axes = axes_t[0] if len(axes_t) == 1 else axes_t
        spec.append(axes)
    return P(*spec)


def param_shardings(params: dict, mesh: Mesh, rules: Mapping | None = None) -> dict:
    """NamedSharding for every leaf of a parameter dict (arrays or ShapeDtypeStructs)."""
    def one(path, x):
        name = path[-1].key
        if name not in PARAM_AXES:
            raise KeyError(f"no logical axes for parameter {jax.tree_util.keystr(path)}; add it to PARAM_AXES")
        logical = PARAM_AXES[name]
        if len(logical) != len(x.shape):
            raise ValueError(f"{jax.tree_util.keystr(path)}: rank {len(x.shape)} vs axes {logical}")
        return NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh, rules))
    return jax.tree_util.tree_map_with_path(one, params)


def shard_params(params: dict, mesh: Mesh, rules: Mapping | None = None) -> dict:
    """Place a parameter dict on the mesh according to the rules.

    On a mesh spanning processes every process passes the same values; they go through
    host memory, since a process cannot copy its local arrays onto other hosts' devices.
    """
    if jax.process_count() > 1:
        from rstar_jax import distributed
        params = distributed.to_host(params)
    return jax.device_put(params, param_shardings(params, mesh, rules))


def activation_constraint(mesh: Mesh, rules: Mapping | None = None):
    """A `constrain(x, logical_axes)` for the forward functions, pinning activations."""
    def constrain(x, logical):
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh, rules)))
    return constrain


def batch_sharding(mesh: Mesh, rank: int = 2, rules: Mapping | None = None,
                   batch_size: int | None = None) -> NamedSharding:
    """Sharding of a [B, ...] input: batch over (data, fsdp), the rest replicated."""
    shape = None if batch_size is None else (batch_size,) + (1,) * (rank - 1)
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (rank - 1), shape, mesh, rules))
