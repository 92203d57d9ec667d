"""Helpers shared by the training tests."""

import importlib


def load_config(name, variant="tiny"):
    """configs/<name>.py's get_config(variant) (the repository root is importable in tests)."""
    return importlib.import_module(f"configs.{name}").get_config(variant)


def write_tiny_sft_run(root, num_rows: int) -> None:
    """root/init: a tiny random policy with the tiny tokenizer (Hugging Face layout);
    root/sft.jsonl: `num_rows` "What is a + b?" rows answered by a code step."""
    import json

    import numpy as np
    from flax import nnx

    from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, save_pretrained
    from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
    from rstar_jax.step_format import build_prompt

    tok = build_tiny_tokenizer(root / "init")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    save_pretrained(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)), root / "init", tokenizer=tok)
    rng = np.random.default_rng(0)
    with open(root / "sft.jsonl", "w") as f:
        for _ in range(num_rows):
            a, b = (int(x) for x in rng.integers(1, 99, 2))
            f.write(json.dumps({"prompt": build_prompt(f"What is {a} + {b}?"),
                                "response": f"<code>\nprint({a} + {b})\n<end_of_code>"}) + "\n")
