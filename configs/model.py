"""Model presets: architecture fields of the Qwen2 decoders rStar-Math uses.

`get_config(arg)` with arg in {tiny, qwen2.5-math-1.5b, qwen2.5-math-7b} returns an
ml_collections ConfigDict with the Hugging Face config.json field names accepted by
`Qwen2Config.from_config_dict`. These presets give shapes for benchmarks and random-weight
runs; real runs read config.json of the local checkpoint directory instead
(`Qwen2Config.from_pretrained(path)` / `load_pretrained`), which is the source of truth.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "qwen2.5-math-1.5b", "qwen2.5-math-7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named `arg` (default "tiny")."""
    arg = arg or "tiny"
    if arg not in PRESETS:
        raise ValueError(f"configs/model.py: unknown model preset {arg!r}; choose one of {PRESETS}")
    c = ml_collections.ConfigDict()
    c.name = arg
    c.dtype = "bfloat16"
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
        c.dtype = "float32"
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
