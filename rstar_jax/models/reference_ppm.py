"""The PyTorch reference's two PPM checkpoint shapes (rstar_reference.md §4.5).

The reference (microsoft/rStar, branch rStar-math) wraps a causal LM in
`RewardModelWithValueHead`: attribute `pretrained_model` (the LM, head kept) and
attribute `v_head`, a `ValueHead` whose linear layer is its attribute `summary`
(train/rm.py). Tensor names therefore are `pretrained_model.model.layers.N...`,
`pretrained_model.lm_head.weight`, `v_head.summary.weight` [1, D] and
`v_head.summary.bias` [1] (the spec's `v_head.weight` / `v_head.bias` drop the
`summary`). It produces two shapes:

* the unsplit training checkpoint: HF Trainer's `save_model` of that module (not a
  `PreTrainedModel`), so one `model.safetensors` with all of the above names and no
  `config.json` beside it (train/train_RM.py);
* the exported pair: a Hugging Face causal-LM directory with the prefix stripped, plus
  `value_head.bin`, `torch.save` of the `v_head.*` tensors (train/save_rm.py). Its
  inference side (rstar_deepthink/llms/llm_engine.py) reads that file with
  `torch.load(..., weights_only=True)`, strips `v_head.` and loads the rest strictly
  into a `ValueHead`, so the names must be exactly `v_head.summary.{weight,bias}`.

`value_head.bin` is a torch pickle. It is read here only with torch and only with
`weights_only=True`, which never rebuilds arbitrary objects, and anything in it but
tensors is refused. Without torch the error says how to convert it to our
`value_head.safetensors` on a machine that has torch.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

# hf_io imports this module lazily (inside load_ppm / save_pretrained), so importing the
# error class from it here is not circular.
from rstar_jax.models.hf_io import REFERENCE_VALUE_HEAD_FILE, VALUE_HEAD_FILE, CheckpointError

UNSPLIT_PREFIX = "pretrained_model."        # RewardModelWithValueHead.pretrained_model
VALUE_HEAD_PREFIX = "v_head."               # RewardModelWithValueHead.v_head
# What the reference writes (ValueHead.summary), then the names the spec and our own
# value_head.safetensors use, then a bare ValueHead state dict.
VALUE_HEAD_NAMES = (("v_head.summary.weight", "v_head.summary.bias"),
                    ("v_head.weight", "v_head.bias"),
                    ("summary.weight", "summary.bias"))
REFERENCE_HEAD_NAMES = VALUE_HEAD_NAMES[0]


def conversion_command(path: str) -> str:
    """A one-line command, run where torch is installed, that turns the reference's
    `value_head.bin` in directory `path` into our `value_head.safetensors`."""
    src = os.path.join(path, REFERENCE_VALUE_HEAD_FILE)
    dst = os.path.join(path, VALUE_HEAD_FILE)
    return ("python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{src}', weights_only=True); "
            "save_file({k.replace('summary.', ''): v.float().contiguous() "
            f"for k, v in sd.items()}}, '{dst}')\"")


def _import_torch(path: str):
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path}: the reference's value head is a torch pickle and reading it needs torch "
            "(pip install torch; the CPU build is enough). Or convert it once where torch is "
            f"installed: {conversion_command(os.path.dirname(path) or '.')}") from e
    return torch


def _refusal_detail(exc: BaseException) -> str:
    """The line of torch's refusal that names the offending object, if there is one."""
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return type(exc).__name__


def read_value_head_bin(path: str) -> dict[str, np.ndarray]:
    """The tensors of a `value_head.bin` as float numpy arrays, by name.

    Raises CheckpointError when torch is missing (with the conversion command), when
    `torch.load(weights_only=True)` refuses the file (it pickles other objects, or is
    not a torch file), or when it holds anything but a dict of names to tensors.
    """
    torch = _import_torch(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for a corrupt file
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused it ({_refusal_detail(e)}); a "
            "value_head.bin holds only the v_head.* tensors (train/save_rm.py), and other "
            "pickled objects are never loaded here") from e
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a non-empty "
                              "dict of tensor names to tensors (train/save_rm.py)")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; a "
                "value_head.bin must hold only tensors")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {value.dtype}, "
                                  "expected floating point")
        # numpy has no bfloat16: go through float32, which holds every bf16 value exactly.
        out[name] = value.detach().to(torch.float32).contiguous().numpy()
    return out


def value_head_arrays(tensors: Mapping[str, np.ndarray], source: str, *,
                      strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a value head under any of `VALUE_HEAD_NAMES`.

    With `strict`, no other tensor may be present (the reference loads the head with a
    strict `load_state_dict`, which refuses unexpected names too).
    """
    for w_name, b_name in VALUE_HEAD_NAMES:
        if w_name in tensors and b_name in tensors:
            extra = sorted(set(tensors) - {w_name, b_name})
            if strict and extra:
                raise CheckpointError(f"{source}: unexpected tensors {extra} beside "
                                      f"{w_name!r} and {b_name!r}")
            return tensors[w_name], tensors[b_name]
    expected = " or ".join(f"{w!r} + {b!r}" for w, b in VALUE_HEAD_NAMES[:2])
    raise CheckpointError(f"{source}: no value head tensors; expected {expected}, "
                          f"found {sorted(tensors)[:8]}")


def is_unsplit(names) -> bool:
    """Whether a weight map is the reference's unsplit checkpoint: prefixed trunk tensors
    beside `v_head.*` tensors."""
    names = set(names)
    has_trunk = any(n.startswith(UNSPLIT_PREFIX) for n in names)
    has_head = any(n.startswith(VALUE_HEAD_PREFIX) for n in names)
    return has_trunk and has_head


def torch_for_saving():
    """torch, or an ImportError saying what needs it and what to do instead."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "save_pretrained(..., reference_format=True) writes value_head.bin with "
            "torch.save and needs torch (pip install torch; the CPU build is enough). "
            "Without torch, save in our shape (value_head.safetensors) and convert where "
            "torch is installed") from e
    return torch


def write_value_head_bin(weight: np.ndarray, bias: np.ndarray, path: str, *,
                         dtype_name: str = "float32") -> None:
    """`torch.save` the head as the reference's `value_head.bin`, atomically.

    `weight` is [1, D] and `bias` [1]; names are `REFERENCE_HEAD_NAMES`, so the
    reference's `ValueHead.load_state_dict` takes the file as it is.
    """
    torch = torch_for_saving()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype_name]

    def tensor(x):
        return torch.from_numpy(np.array(x, dtype=np.float32)).to(torch_dtype)   # a writable copy

    state = {REFERENCE_HEAD_NAMES[0]: tensor(weight), REFERENCE_HEAD_NAMES[1]: tensor(bias)}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
