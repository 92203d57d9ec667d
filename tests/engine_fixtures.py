"""The tiny model, engine shape and prompts shared by the engine tests."""

import jax
import numpy as np
from flax import nnx

from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import Qwen2ForCausalLM, params_of

CFG = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
ENGINE = dict(slots=8, max_len=128, capacity=16, steps_per_call=4, kv_bucket=32,
              prefill_len_bucket=8, prefill_batch=4)


def make_params(cfg=CFG):
    p = params_of(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    # larger weights than the 0.02 init: logits with clear argmax gaps, no near ties
    return jax.tree.map(lambda x: x * 3 if x.ndim >= 2 else x, p)


def prompts(seed, lengths, vocab=128):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]
