"""Hugging Face checkpoint directories in and out: config.json + safetensors (+ index).

Loading reads one tensor at a time on the host and places it straight into its sharding
with `jax.make_array_from_callback`, so no device ever holds a full copy of a sharded
parameter. Saving writes the transformers layout back (a trained policy opens in
transformers or vLLM); a PPM also writes its value head, by default as
`value_head.safetensors` with `v_head.weight` [1, D] and `v_head.bias` [1], or with
`reference_format=True` as the reference's `value_head.bin`.

`load_ppm` reads three PPM shapes, detected in this order: ours (value_head.safetensors),
the reference's exported pair (value_head.bin) and the reference's unsplit training
checkpoint (`pretrained_model.`-prefixed tensors beside `v_head.*`); the reference's
shapes are described in `reference_ppm.py`.
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
REFERENCE_VALUE_HEAD_FILE = "value_head.bin"   # the reference's exported head (reference_ppm.py)
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

    def _handle(self, name: str):
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: missing tensor {name!r}")
        fname = self.weight_map[name]
        if fname not in self._handles:
            fpath = os.path.join(self.path, fname)
            if not os.path.isfile(fpath):
                raise CheckpointError(f"{self.path}: index names {fname} for {name!r}, file is missing")
            self._handles[fname] = safe_open(fpath, framework="np")
        return self._handles[fname], fname

    def get(self, name: str) -> np.ndarray:
        handle, fname = self._handle(name)
        try:
            return handle.get_tensor(name)
        except Exception as e:  # a corrupt or truncated file
            raise CheckpointError(f"{os.path.join(self.path, fname)}: cannot read {name!r}: {e}") from e

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, read from the file header without loading the tensor."""
        handle, fname = self._handle(name)
        try:
            return tuple(handle.get_slice(name).get_shape())
        except Exception as e:
            raise CheckpointError(
                f"{os.path.join(self.path, fname)}: cannot read {name!r}: {e}") from e

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


# The PPM shapes `load_ppm` reads, in the order it looks for them.
PPM_OURS = "ours"                          # trunk + value_head.safetensors
PPM_REFERENCE_EXPORT = "reference_export"  # trunk + value_head.bin (reference save_rm.py)
PPM_REFERENCE_UNSPLIT = "reference_unsplit"  # one state dict (reference train_RM.py)
PPM_POLICY = "policy"                      # a policy: no value head anywhere


def _ppm_shapes_text() -> str:
    return (f"(1) ours: config.json + model safetensors + {VALUE_HEAD_FILE}; (2) the "
            "reference's exported pair (train/save_rm.py): config.json + model safetensors "
            "+ value_head.bin; (3) the reference's unsplit training checkpoint "
            "(train/train_RM.py): safetensors with 'pretrained_model.'-prefixed tensors "
            "beside v_head.* tensors")


def _found_text(path: str, reader: "_TensorReader | None", why: str = "") -> str:
    files = sorted(os.listdir(path)) if os.path.isdir(path) else []
    shown = ", ".join(files[:10]) + (f", ... ({len(files)} files)" if len(files) > 10 else "")
    text = f"found: {shown or 'no files'}"
    if reader is not None:
        names = sorted(reader.weight_map)
        heads = [n for n in names if n.startswith("v_head.")]
        prefixed = sum(n.startswith("pretrained_model.") for n in names)
        text += (f"; its safetensors hold {len(names)} tensors, {prefixed} prefixed "
                 f"'pretrained_model.', value head tensors: {heads or 'none'}")
    return text + (f" ({why})" if why else "")


def detect_ppm_shape(path: str | os.PathLike) -> str:
    """Which PPM shape the directory holds: PPM_OURS, PPM_REFERENCE_EXPORT,
    PPM_REFERENCE_UNSPLIT or PPM_POLICY (trunk weights, no value head).

    Raises CheckpointError naming the three shapes and what was found when the
    directory holds no model weights at all.
    """
    from rstar_jax.models import reference_ppm as ref
    path = os.path.expanduser(os.fspath(path))
    if os.path.isfile(os.path.join(path, VALUE_HEAD_FILE)):
        return PPM_OURS
    if os.path.isfile(os.path.join(path, REFERENCE_VALUE_HEAD_FILE)):
        return PPM_REFERENCE_EXPORT
    try:
        reader = _TensorReader(path)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: not a PPM checkpoint; expected one of "
                              f"{_ppm_shapes_text()}; {_found_text(path, None, str(e))}") from e
    try:
        if ref.is_unsplit(reader.weight_map):
            return PPM_REFERENCE_UNSPLIT
        if any(n.startswith(ref.UNSPLIT_PREFIX) for n in reader.weight_map):
            raise CheckpointError(
                f"{path}: 'pretrained_model.'-prefixed tensors without v_head.* tensors; "
                f"not a PPM in any known shape: {_ppm_shapes_text()}; "
                f"{_found_text(path, reader)}")
        return PPM_POLICY
    finally:
        reader.close()


def _ppm_config(path: str, shape: str, config_dir, reader: "_TensorReader", prefix: str):
    """The architecture of a PPM directory: its config.json, else `config_dir`'s.

    The unsplit checkpoint has none (HF Trainer saves a plain module's state dict only),
    and its embeddings were resized to the PPM tokenizer (train_RM.py), so the vocab
    size is read from the embedding tensor.
    """
    own = os.path.join(path, "config.json")
    if os.path.isfile(own):
        cfg = Qwen2Config.from_pretrained(path)
    elif config_dir is not None:
        cfg = Qwen2Config.from_pretrained(os.path.expanduser(os.fspath(config_dir)))
    elif shape == PPM_REFERENCE_UNSPLIT:
        raise CheckpointError(
            f"{path}: the reference's unsplit PPM checkpoint has no config.json (HF Trainer "
            "saves only the state dict); pass config_dir=<the policy it was trained from, "
            "save_rm.py's --sft_model_path>, or copy that config.json here")
    else:
        cfg = Qwen2Config.from_pretrained(path)     # the usual config.json error
    if shape == PPM_REFERENCE_UNSPLIT:
        vocab, hidden = reader.shape(prefix + "model.embed_tokens.weight")
        if hidden != cfg.hidden_size:
            raise CheckpointError(
                f"{path}: embed_tokens has hidden size {hidden}, the config says "
                f"{cfg.hidden_size}; config_dir must be the policy this PPM was trained from")
        cfg = cfg.replace(vocab_size=int(vocab))
    return cfg


def _value_head_tensors(path: str, shape: str, reader: "_TensorReader",
                        cfg: Qwen2Config) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight [1, D], bias [1]) of the PPM's value head, or None for a policy."""
    from rstar_jax.models import reference_ppm as ref
    if shape == PPM_OURS:
        vh_path = os.path.join(path, VALUE_HEAD_FILE)
        with safe_open(vh_path, framework="np") as f:
            names = set(f.keys())
            for k in ("v_head.weight", "v_head.bias"):
                if k not in names:
                    raise CheckpointError(f"{vh_path}: missing tensor {k!r}")
            w, b, source = f.get_tensor("v_head.weight"), f.get_tensor("v_head.bias"), vh_path
    elif shape == PPM_REFERENCE_EXPORT:
        source = os.path.join(path, REFERENCE_VALUE_HEAD_FILE)
        w, b = ref.value_head_arrays(ref.read_value_head_bin(source), source, strict=True)
    elif shape == PPM_REFERENCE_UNSPLIT:
        source = path
        heads = {n: reader.get(n) for n in reader.weight_map
                 if n.startswith(ref.VALUE_HEAD_PREFIX)}
        w, b = ref.value_head_arrays(heads, source, strict=True)
    else:
        return None
    return (_checked("value head weight", w, (1, cfg.hidden_size), source),
            _checked("value head bias", b, (1,), source))


def load_ppm(path: str | os.PathLike, *, dtype="bfloat16", mesh=None, rules=None,
             remat: bool = False, init_value_head_seed: int | None = None,
             config_dir: str | os.PathLike | None = None) -> Qwen2PPM:
    """A PPM from a directory in any of three shapes (`detect_ppm_shape`).

    Shapes, looked for in this order: ours (`save_pretrained`: trunk +
    value_head.safetensors); the reference's exported pair (trunk + value_head.bin,
    train/save_rm.py; needs torch); the reference's unsplit training checkpoint
    (`pretrained_model.*` + `v_head.*` in one state dict, train/train_RM.py). The
    unsplit checkpoint has no config.json: pass `config_dir`, the policy it was trained
    from (any directory without config.json reads it from there).

    With `init_value_head_seed`, a policy directory without a value head is accepted and
    the head is freshly initialised (the reference re-initialises the PPM from the policy).
    """
    path = os.path.expanduser(os.fspath(path))
    shape = detect_ppm_shape(path)
    if shape == PPM_POLICY and init_value_head_seed is None:
        raise CheckpointError(
            f"{path}: no value head; this is a policy checkpoint (pass init_value_head_seed=... "
            f"to start a PPM from it), not a PPM in any of these shapes: {_ppm_shapes_text()}; "
            f"{_found_text(path, None)}")
    prefix = "pretrained_model." if shape == PPM_REFERENCE_UNSPLIT else ""
    dtype = resolve_dtype(dtype)
    seed = 0 if init_value_head_seed is None else init_value_head_seed
    reader = _TensorReader(path)
    try:
        cfg = _ppm_config(path, shape, config_dir, reader, prefix)
        model_fn = lambda: Qwen2PPM(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(seed))  # noqa: E731
        shardings = _param_shardings(model_fn, mesh, rules)
        head = _value_head_tensors(path, shape, reader, cfg)
        backbone = _read_params(reader, cfg, dtype, shardings and shardings["backbone"], prefix)
    finally:
        reader.close()
    if head is not None:
        w, b = head
        v_head = {"kernel": _to_device(w.T, dtype, shardings and shardings["v_head"]["kernel"]),
                  "bias": _to_device(b, dtype, shardings and shardings["v_head"]["bias"])}
    else:
        fresh = ValueHead(cfg.hidden_size, dtype=dtype, rngs=nnx.Rngs(seed))
        v_head = {k: _to_device(np.asarray(getattr(fresh, k)[...]), dtype,
                                shardings and shardings["v_head"][k]) for k in ("kernel", "bias")}
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
                    tokenizer=None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    reference_format: bool = False) -> None:
    """Write `model` as a Hugging Face checkpoint directory (transformers/vLLM layout).

    Files over `max_shard_bytes` are split as `model-0000i-of-0000n.safetensors` with a
    `model.safetensors.index.json`, as transformers does. A PPM's value head goes to
    `value_head.safetensors`; with `reference_format=True` it goes to the reference's
    `value_head.bin` instead (torch.save of `v_head.summary.{weight,bias}`, needs torch),
    so the directory is the pair train/save_rm.py exports and the reference's vLLM
    reward path loads (pass `tokenizer` too: the reference reads it from the same
    directory). Either way a value head file of the other shape is removed, so
    `load_ppm` never reads a stale head.
    """
    is_ppm = isinstance(model, Qwen2PPM)
    if reference_format and not is_ppm:
        raise ValueError("save_pretrained: reference_format=True is for a PPM (Qwen2PPM); a "
                         "policy is already in the reference's layout")
    if reference_format:
        from rstar_jax.models import reference_ppm as ref
        ref.torch_for_saving()       # fail before anything is written
    path = os.path.expanduser(os.fspath(path))
    os.makedirs(path, exist_ok=True)
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
        weight, bias = np.ascontiguousarray(_host(vh["kernel"]).T), _host(vh["bias"])
        ours = os.path.join(path, VALUE_HEAD_FILE)
        theirs = os.path.join(path, REFERENCE_VALUE_HEAD_FILE)
        if reference_format:
            ref.write_value_head_bin(weight, bias, theirs, dtype_name=dtype_name)
        else:
            _atomic_safetensors({"v_head.weight": weight, "v_head.bias": bias}, ours)
        stale = ours if reference_format else theirs
        if os.path.exists(stale):
            os.remove(stale)
    _atomic_json(cfg.to_hf_dict(torch_dtype=dtype_name), os.path.join(path, "config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def _tensor_order(name: str):
    """Embedding first, then layers in numeric order, then the rest (HF's file order)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers":
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)
