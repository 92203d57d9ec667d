"""Qwen2-family policy and PPM in Flax NNX, HF checkpoints in and out, mesh sharding."""

from rstar_jax.models.config import Qwen2Config, resolve_dtype
from rstar_jax.models.forward import jit_logits, jit_scores
from rstar_jax.models.hf_io import CheckpointError, load_ppm, load_pretrained, save_pretrained
from rstar_jax.models.qwen2 import (PPM_SCORE_SCALE, Qwen2ForCausalLM, Qwen2PPM, ValueHead,
                                    forward_hidden, forward_logits, forward_scores,
                                    forward_values, params_of)
from rstar_jax.models.sharding import (DEFAULT_RULES, make_mesh, mesh_from_config,
                                       param_shardings, shard_params)
from rstar_jax.models.tokenizer import load_tokenizer, resize_embeddings, step_token_ids

__all__ = [
    "CheckpointError", "DEFAULT_RULES", "PPM_SCORE_SCALE", "Qwen2Config", "Qwen2ForCausalLM",
    "Qwen2PPM", "ValueHead", "forward_hidden", "forward_logits", "forward_scores",
    "forward_values", "jit_logits", "jit_scores", "load_ppm", "load_pretrained",
    "load_tokenizer", "make_mesh", "mesh_from_config", "param_shardings", "params_of",
    "resize_embeddings", "resolve_dtype", "save_pretrained", "shard_params", "step_token_ids",
]
