"""Hugging Face checkpoint directories in and out: config.json + safetensors (+ index).

Loading reads one tensor at a time on the host and places it straight into its sharding
with `jax.make_array_from_callback`, so no device ever holds a full copy of a sharded
parameter. Saving writes the transformers layout back (a trained policy opens in
transformers or vLLM); a PPM also writes `value_head.safetensors` with the reference's
`v_head.weight` [1, D] and `v_head.bias` [1] names.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Mapping

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from rstar_jax.models.config import Qwen2Config, resolve_dtype
from rstar_jax.models.qwen2 import (LAYER_PARAMS, LayerParam, Qwen2ForCausalLM, Qwen2PPM,
                                    ValueHead, layer_param_shapes, params_of)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VALUE_HEAD_FILE = "value_head.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size (5GB)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and tensor."""


def _to_ours(hf: np.ndarray, p: LayerParam, shape: tuple[int, ...]) -> np.ndarray:
    """A transformers layer tensor in our per-layer layout `shape` (axes of `p`).

    transformers stores linear weights as [out, in]; ours are [in..., out...] with heads
    split out so the sharding rules can name them. Vectors only change shape.
    """
    return (hf.T if p.hf_in_axes else hf).reshape(shape)


def _to_hf(ours: np.ndarray, p: LayerParam) -> np.ndarray:
    """The inverse of `_to_ours`: [in..., out...] -> [out, in], vectors flattened."""
    if not p.hf_in_axes:
        return ours.reshape(-1)
    n_in = math.prod(ours.shape[:p.hf_in_axes])
    return ours.reshape(n_in, -1).T


def _hf_shape(p: LayerParam, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not p.hf_in_axes:
        return (math.prod(shape),)
    n_in = math.prod(shape[:p.hf_in_axes])
    return (math.prod(shape) // n_in, n_in)


class _TensorReader:
    """Lazy reader over one or several safetensors files of a checkpoint directory."""

    def __init__(self, path: str):
        self.path = path
        index_path = os.path.join(path, INDEX_FILE)
        single_path = os.path.join(path, SINGLE_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index_path}: not a valid safetensors index ({e!r})") from e
        elif os.path.isfile(single_path):
            with safe_open(single_path, framework="np") as f:
                weight_map = {k: SINGLE_FILE for k in f.keys()}
        else:
            raise CheckpointError(
                f"{path}: no {SINGLE_FILE} or {INDEX_FILE}; expected Hugging Face safetensors weights")
        self.weight_map: dict[str, str] = weight_map
        self._handles: dict[str, object] = {}

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: missing tensor {name!r}")
        fname = self.weight_map[name]
        if fname not in self._handles:
            fpath = os.path.join(self.path, fname)
            if not os.path.isfile(fpath):
                raise CheckpointError(f"{self.path}: index names {fname} for {name!r}, file is missing")
            self._handles[fname] = safe_open(fpath, framework="np")
        try:
            return self._handles[fname].get_tensor(name)
        except Exception as e:  # a corrupt or truncated file
            raise CheckpointError(f"{os.path.join(self.path, fname)}: cannot read {name!r}: {e}") from e

    def close(self):
        self._handles.clear()


def _checked(name: str, x: np.ndarray, shape: tuple, source: str) -> np.ndarray:
    if tuple(x.shape) != tuple(shape):
        raise CheckpointError(
            f"{source}: tensor {name!r} has shape {tuple(x.shape)}, config.json implies {tuple(shape)}")
    return x


def _to_device(host: np.ndarray, dtype, sharding) -> jax.Array:
    host = host.astype(dtype, copy=False)
    if sharding is None:
        return jax.device_put(host)
    # Each device reads only its own slice of the host tensor.
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _read_params(reader: _TensorReader, cfg: Qwen2Config, dtype, shardings: Mapping | None,
                 prefix: str = "") -> dict:
    """Our parameter dict from HF tensor names, validated against cfg."""
    src = reader.path
    D, V = cfg.hidden_size, cfg.vocab_size

    def place(ours_path, host):
        sharding = None
        if shardings is not None:
            sharding = shardings
            for k in ours_path:
                sharding = sharding[k]
        return _to_device(host, dtype, sharding)

    params = {"embed": place(("embed",), _checked(
        "model.embed_tokens.weight", reader.get(prefix + "model.embed_tokens.weight"), (V, D), src))}
    params["final_norm"] = place(("final_norm",), _checked(
        "model.norm.weight", reader.get(prefix + "model.norm.weight"), (D,), src))
    if not cfg.tie_word_embeddings:
        w = _checked("lm_head.weight", reader.get(prefix + "lm_head.weight"), (V, D), src)
        params["lm_head"] = place(("lm_head",), w.T)
    shapes = layer_param_shapes(cfg)
    layers = {}
    for name, p in LAYER_PARAMS.items():
        per_layer, shape = [], shapes[name][1:]
        for i in range(cfg.num_hidden_layers):
            hf_name = f"model.layers.{i}.{p.hf_name}"
            w = _checked(hf_name, reader.get(prefix + hf_name), _hf_shape(p, shape), src)
            per_layer.append(_to_ours(w, p, shape))
        layers[name] = place(("layers", name), np.stack(per_layer))
        del per_layer
    params["layers"] = layers
    return params


def _build(model_fn: Callable[[], nnx.Module], params: dict) -> nnx.Module:
    """A model whose parameters are `params`, without ever initialising random weights."""
    model = nnx.eval_shape(model_fn)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _param_shardings(model_fn, mesh, rules):
    if mesh is None:
        return None
    from rstar_jax.models.sharding import param_shardings
    abstract = nnx.eval_shape(model_fn)
    return param_shardings(params_of(abstract), mesh, rules)


def load_pretrained(path: str | os.PathLike, *, dtype="bfloat16", mesh=None, rules=None,
                    remat: bool = False) -> Qwen2ForCausalLM:
    """The policy (Qwen2ForCausalLM) of a local Hugging Face checkpoint directory.

    Args:
      path: directory with config.json and model.safetensors or sharded files + index.
      dtype: parameter dtype ("bfloat16" or "float32"); tensors are converted on load.
      mesh: a device mesh (`rstar_jax.models.make_mesh`); params are placed sharded by
        the logical-axis rules, never fully replicated first.
    """
    path = os.path.expanduser(os.fspath(path))
    cfg = Qwen2Config.from_pretrained(path)
    dtype = resolve_dtype(dtype)
    model_fn = lambda: Qwen2ForCausalLM(cfg, dtype=dtype, remat=remat)  # noqa: E731
    reader = _TensorReader(path)
    try:
        params = _read_params(reader, cfg, dtype, _param_shardings(model_fn, mesh, rules))
    finally:
        reader.close()
    return _build(model_fn, params)


def load_ppm(path: str | os.PathLike, *, dtype="bfloat16", mesh=None, rules=None,
             remat: bool = False, init_value_head_seed: int | None = None) -> Qwen2PPM:
    """A PPM from a directory written by `save_pretrained` (trunk + value_head.safetensors).

    With `init_value_head_seed`, a policy directory without a value head is accepted and
    the head is freshly initialised (the reference re-initialises the PPM from the policy).
    """
    path = os.path.expanduser(os.fspath(path))
    cfg = Qwen2Config.from_pretrained(path)
    dtype = resolve_dtype(dtype)
    vh_path = os.path.join(path, VALUE_HEAD_FILE)
    seed = 0 if init_value_head_seed is None else init_value_head_seed
    model_fn = lambda: Qwen2PPM(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(seed))  # noqa: E731
    shardings = _param_shardings(model_fn, mesh, rules)
    reader = _TensorReader(path)
    try:
        backbone = _read_params(reader, cfg, dtype, shardings and shardings["backbone"])
    finally:
        reader.close()
    if os.path.isfile(vh_path):
        with safe_open(vh_path, framework="np") as f:
            names = set(f.keys())
            for k in ("v_head.weight", "v_head.bias"):
                if k not in names:
                    raise CheckpointError(f"{vh_path}: missing tensor {k!r}")
            w = _checked("v_head.weight", f.get_tensor("v_head.weight"), (1, cfg.hidden_size), vh_path)
            b = _checked("v_head.bias", f.get_tensor("v_head.bias"), (1,), vh_path)
        v_head = {"kernel": _to_device(w.T, dtype, shardings and shardings["v_head"]["kernel"]),
                  "bias": _to_device(b, dtype, shardings and shardings["v_head"]["bias"])}
    elif init_value_head_seed is not None:
        fresh = ValueHead(cfg.hidden_size, dtype=dtype, rngs=nnx.Rngs(seed))
        v_head = {k: _to_device(np.asarray(getattr(fresh, k)[...]), dtype,
                                shardings and shardings["v_head"][k]) for k in ("kernel", "bias")}
    else:
        raise CheckpointError(
            f"{path}: no {VALUE_HEAD_FILE}; this is a policy checkpoint. Pass "
            "init_value_head_seed=... to start a PPM from it")
    return _build(model_fn, {"backbone": backbone, "v_head": v_head})


def _host(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def _hf_tensors(params: dict, cfg: Qwen2Config) -> dict[str, np.ndarray]:
    out = {"model.embed_tokens.weight": _host(params["embed"]),
           "model.norm.weight": _host(params["final_norm"])}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = _host(params["lm_head"]).T
    for name, p in LAYER_PARAMS.items():
        stacked = _host(params["layers"][name])
        for i in range(cfg.num_hidden_layers):
            out[f"model.layers.{i}.{p.hf_name}"] = _to_hf(stacked[i], p)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _atomic_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _atomic_safetensors(tensors, path, metadata=None):
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
    os.replace(tmp, path)


_TORCH_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                      np.dtype(np.float16): "float16"}


def save_pretrained(model: Qwen2ForCausalLM | Qwen2PPM, path: str | os.PathLike, *,
                    tokenizer=None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write `model` as a Hugging Face checkpoint directory (transformers/vLLM layout).

    Files over `max_shard_bytes` are split as `model-0000i-of-0000n.safetensors` with a
    `model.safetensors.index.json`, as transformers does.
    """
    path = os.path.expanduser(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    is_ppm = isinstance(model, Qwen2PPM)
    params = params_of(model)
    trunk = params["backbone"] if is_ppm else params
    cfg = model.cfg
    tensors = _hf_tensors(trunk, cfg)
    dtype_name = _TORCH_DTYPE_NAMES.get(tensors["model.embed_tokens.weight"].dtype, "float32")

    shards, current, size = [], {}, 0
    for name in sorted(tensors, key=_tensor_order):
        nbytes = tensors[name].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    for stale in os.listdir(path):  # a previous save with another shard count
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale == INDEX_FILE):
            os.remove(os.path.join(path, stale))
    if len(shards) == 1:
        _atomic_safetensors(shards[0], os.path.join(path, SINGLE_FILE))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_safetensors(shard, os.path.join(path, fname))
            weight_map.update({k: fname for k in shard})
        total = sum(t.nbytes for t in tensors.values())
        _atomic_json({"metadata": {"total_size": total}, "weight_map": weight_map},
                     os.path.join(path, INDEX_FILE))
    if is_ppm:
        vh = params["v_head"]
        _atomic_safetensors({"v_head.weight": np.ascontiguousarray(_host(vh["kernel"]).T),
                             "v_head.bias": _host(vh["bias"])},
                            os.path.join(path, VALUE_HEAD_FILE))
    _atomic_json(cfg.to_hf_dict(torch_dtype=dtype_name), os.path.join(path, "config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def _tensor_order(name: str):
    """Embedding first, then layers in numeric order, then the rest (HF's file order)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers":
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)
