"""Model presets: architecture fields of the Qwen2 decoders rStar-Math uses.

`get_config(arg)` with arg in {tiny, qwen2.5-math-1.5b, qwen2.5-math-7b}, or the path of a
local Hugging Face checkpoint directory (whose config.json is then read), returns an
ml_collections ConfigDict with the Hugging Face config.json field names accepted by
`Qwen2Config.from_config_dict`. These presets give shapes for benchmarks and random-weight
runs; real runs read config.json of the local checkpoint directory instead
(`Qwen2Config.from_pretrained(path)` / `load_pretrained`), which is the source of truth.
"""

from __future__ import annotations

import os

import ml_collections

_ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                "tie_word_embeddings", "max_position_embeddings", "head_dim")

PRESETS = ("tiny", "tiny-evolve", "qwen2.5-math-1.5b", "qwen2.5-math-7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named `arg` (default "tiny"), or a checkpoint directory's config.json."""
    arg = arg or "tiny"
    path = os.path.expanduser(arg)
    if os.path.isdir(path):
        return _from_checkpoint(path)
    if arg not in PRESETS:
        raise ValueError(f"configs/model.py: unknown model preset {arg!r}; choose one of {PRESETS}")
    c = ml_collections.ConfigDict()
    c.name = arg
    c.rms_norm_eps = 1e-6
    # Qwen2.5-Math keeps the original RoPE base and a 4K context (Qwen2.5-Math-1.5B/7B
    # config.json: rope_theta 10000, max_position_embeddings 4096), unlike Qwen2.5 (1e6, 32K).
    c.rope_theta = 10000.0
    c.max_position_embeddings = 4096
    if arg == "tiny":
        # CPU-sized, vocabulary of the locally trained tiny tokenizer (models/tiny_tokenizer.py).
        c.vocab_size = 512
        c.hidden_size = 64
        c.intermediate_size = 128
        c.num_hidden_layers = 2
        c.num_attention_heads = 4
        c.num_key_value_heads = 2
        c.tie_word_embeddings = True
        c.max_position_embeddings = 1024
    elif arg == "tiny-evolve":
        # The embedded self-evolution default (configs/tiny.py): ~0.85M parameters, the
        # size at which a probe on this CPU learned multi-term sums in minutes.
        c.vocab_size = 512
        c.hidden_size = 128
        c.intermediate_size = 384
        c.num_hidden_layers = 4
        c.num_attention_heads = 4
        c.num_key_value_heads = 2
        c.tie_word_embeddings = True
        c.max_position_embeddings = 1024
    elif arg == "qwen2.5-math-1.5b":
        # Qwen/Qwen2.5-Math-1.5B config.json
        c.vocab_size = 151936
        c.hidden_size = 1536
        c.intermediate_size = 8960
        c.num_hidden_layers = 28
        c.num_attention_heads = 12
        c.num_key_value_heads = 2
        c.tie_word_embeddings = True
    else:
        # Qwen/Qwen2.5-Math-7B config.json
        c.vocab_size = 152064
        c.hidden_size = 3584
        c.intermediate_size = 18944
        c.num_hidden_layers = 28
        c.num_attention_heads = 28
        c.num_key_value_heads = 4
        c.tie_word_embeddings = False
    return c


def _from_checkpoint(path: str) -> ml_collections.ConfigDict:
    """The architecture fields of `path`/config.json (the real numbers of a checkpoint)."""
    from rstar_jax.models.config import Qwen2Config
    cfg = Qwen2Config.from_pretrained(path)          # validates model_type and fields
    c = ml_collections.ConfigDict()
    c.name = os.path.basename(os.path.normpath(path))
    c.checkpoint = path
    for k in _ARCH_FIELDS:
        if k == "head_dim":
            if cfg.head_dim_override:
                c.head_dim = cfg.head_dim_override
            continue
        c[k] = getattr(cfg, k)
    return c
