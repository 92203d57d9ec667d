"""KV-cache generation for the policy and batched PPM scoring.

decode.py     device functions: cached prefill, multi-token decode loop, slot start-up
decode_attention.py  decode attention: the XLA reference and a fused RoPE + cache-write + ragged-attention Pallas kernel
kv_cache.py   the slot cache (L buffers of [S, G, T, Dh]) and row copies (prefix forks)
sampling.py   greedy / temperature / top-k / top-p with per-request PRNG streams
scheduler.py  GenerationEngine: slots, prefix reuse, continuous batching, mesh sharding
protocols.py  EngineProposer / EngineScorer: the search protocols of DESIGN.md
prefix_scoring.py  PPM scores of sibling prompts over their shared prefix's cached K/V
"""

from rstar_jax.engine.decode import STOP_REASON_NAMES
from rstar_jax.engine.kv_cache import KVCache, copy_rows, init_cache
from rstar_jax.engine.protocols import EngineProposer, EngineScorer, stop_token_ids
from rstar_jax.engine.scheduler import Completion, GenerationEngine, Request

__all__ = ["Completion", "EngineProposer", "EngineScorer", "GenerationEngine", "KVCache",
           "Request", "STOP_REASON_NAMES", "copy_rows", "engine_from_config", "init_cache",
           "stop_token_ids"]


def engine_from_config(params, cfg, c, *, tokenizer=None, mesh=None, rules=None):
    """A GenerationEngine from an engine config section (configs/engine.py).

    With a tokenizer, the config's stop tags and the tokenizer's EOS become the stop ids.
    """
    stops, eos = (), None
    if tokenizer is not None:
        stops = stop_token_ids(tokenizer, tuple(c.stop_tags))
        eos = tokenizer.eos_token_id if c.stop_on_eos else None
    return GenerationEngine(
        params, cfg, slots=c.slots, max_len=c.max_seq_len, capacity=c.max_new_tokens,
        stop_token_ids=stops, eos_token_id=eos, steps_per_call=c.steps_per_call,
        kv_bucket=c.kv_bucket, prefill_len_bucket=c.prefill_len_bucket,
        prefill_batch=c.prefill_batch, mesh=mesh, rules=rules, dtype=c.dtype,
        decode_attention=c.get("decode_attention", "auto"))
