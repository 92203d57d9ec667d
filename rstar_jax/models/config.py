"""Qwen2-family architecture hyperparameters, read from a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen2",)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype: Any) -> jnp.dtype:
    """`"bfloat16"`, `jnp.bfloat16` or `np.float32` -> a jnp dtype, with a clear error."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return jnp.dtype(_DTYPES[dtype])
    return jnp.dtype(dtype)


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Shapes and constants of a Qwen2 decoder. Field names follow the HF config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    head_dim_override: int | None = None
    # The full HF config dict, so save_pretrained writes back what was loaded.
    hf_extra: tuple = ()

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> "Qwen2Config":
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r}; rstar-jax supports "
                f"{list(SUPPORTED_MODEL_TYPES)} (Qwen2 / Qwen2.5 / Qwen2.5-Math checkpoints)")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{source}: missing required field(s) {missing}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {d['hidden_act']!r} unsupported (need 'silu')")
        # transformers 4 writes rope_theta (and rope_scaling) at the top level; transformers 5
        # writes them under rope_parameters.
        rope = dict(d.get("rope_parameters") or {})
        rope_scaling = d.get("rope_scaling") or rope
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise ValueError(f"{source}: rope scaling {rope_scaling} unsupported (only default RoPE)")
        rope_theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        head_dim = d.get("head_dim")
        if head_dim is not None and head_dim == d["hidden_size"] // d["num_attention_heads"]:
            head_dim = None
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            head_dim_override=head_dim,
            hf_extra=tuple(sorted((k, json.dumps(v)) for k, v in d.items())),
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Qwen2Config":
        cfg_path = os.path.join(os.path.expanduser(os.fspath(path)), "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(
                f"{cfg_path} not found: a Hugging Face checkpoint directory needs config.json")
        try:
            with open(cfg_path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d, source=cfg_path)

    @classmethod
    def from_config_dict(cls, c: Mapping[str, Any]) -> "Qwen2Config":
        """From an ml_collections model preset (configs/model.py)."""
        d = dict(c)
        d.setdefault("model_type", "qwen2")
        d = {k: v for k, v in d.items() if k not in ("name", "dtype", "checkpoint", "remat")}
        return cls.from_hf_dict(d, source="model preset")

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict:
        d = {k: json.loads(v) for k, v in self.hf_extra}
        d.update(
            model_type="qwen2",
            architectures=d.get("architectures", ["Qwen2ForCausalLM"]),
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            torch_dtype=torch_dtype,
        )
        if isinstance(d.get("rope_parameters"), dict):
            d["rope_parameters"] = {**d["rope_parameters"], "rope_theta": self.rope_theta}
        if self.head_dim_override:
            d["head_dim"] = self.head_dim_override
        d.pop("dtype", None)
        return d

    def replace(self, **kw) -> "Qwen2Config":
        return dataclasses.replace(self, **kw)
