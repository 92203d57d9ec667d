"""Generation engine settings (rstar_jax/engine): slots, lengths, decode chunking, sampling.

`get_config(preset)` returns an ml_collections ConfigDict; round configs embed it as
`config.engine`. Presets: "default" (GPU-sized, policy search) and "tiny" (CPU tests).
"""

from __future__ import annotations

import ml_collections

PRESETS = ("default", "tiny")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    preset = preset or "default"
    if preset not in PRESETS:
        raise ValueError(f"configs/engine.py: unknown engine preset {preset!r}; choose one of {PRESETS}")
    c = ml_collections.ConfigDict()
    # Concurrent sequences in the KV cache. 256 slots x 4096 tokens of the 1.5B model is
    # 28 KiB/token -> 29 GiB; the 7B model (57 KiB/token) fits 128 slots in the same room.
    c.slots = 256
    # Reference vLLM engines use max_model_len=4096 (rstar_reference §2.8).
    c.max_seq_len = 4096
    # Reference max_tokens per step: 2048 in search, 4096 for greedy eval (§2.8).
    c.max_new_tokens = 2048
    # Decode steps per jitted call: the host checks for finished slots (and refills them)
    # once per chunk, so it is never in the per-token path; larger chunks waste steps on
    # finished slots, smaller ones cost a host round trip more often.
    c.steps_per_call = 32
    # Attention reads the cache only up to a multiple of this (a static shape per bucket):
    # fewer buckets mean fewer compiles, finer buckets fewer wasted key reads.
    c.kv_bucket = 512
    # Decode attention: "pallas" is the fused kernel of rstar_jax/engine/decode_attention.py
    # (RoPE + cache write + attention reading each slot's row in place up to its own
    # length; one decode compile, no bucket); "xla" reads each chunk's kv bucket; "auto" =
    # pallas on GPU when the model's shapes suit it, else xla. Measured on an H100 at
    # B=256 (benchmarks/RESULTS.md): 1.5B 68,175 vs 59,729 decode tok/s, 7B 26,310 vs 24,071.
    c.decode_attention = "auto"
    # Prefill batches are padded to multiples of these to bound recompiles.
    c.prefill_len_bucket = 128
    c.prefill_batch = 16
    # Sampling defaults of the reference's SamplingParams (§2.2): top_p=1.0, top_k=-1. The
    # temperature is the search mode's (configs/search.py), as in the reference's yamls.
    c.top_p = 1.0
    c.top_k = -1
    c.seed = 0           # per-request seeds are derived from this and the request index
    c.dtype = "bfloat16"
    # Default stop strings for requests that name none: the reference's search stop list
    # (sft_sample_mcts.yaml, §2.8). Each search mode passes its own list
    # (configs/search.py stop_tags). Each must be a single special token of the tokenizer.
    c.stop_tags = ("<end_of_step>", "<end_of_code>", "<end_of_answer>")
    c.stop_on_eos = True
    # PPM scoring pads prompts to a power-of-two length >= this (bounded recompiles).
    c.score_min_len = 64
    c.score_batch = 64
    # Siblings per prefix-scoring group (engine/prefix_scoring.py): every call holds k
    # children per group and 1, 2, 4 .. score_batch // k groups, so few shapes compile;
    # 16 holds the paper's 12 children of a node (a larger set, e.g. best-of-N samples of
    # one question, is split over the same prefix). 0 sizes each call to its groups (more shapes).
    c.score_group_size = 16
    # Mesh: slots over data x fsdp, KV heads over tensor (models/sharding.py rules).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    if preset == "tiny":
        c.slots = 8
        c.max_seq_len = 256
        c.max_new_tokens = 32
        c.steps_per_call = 8
        c.kv_bucket = 64
        c.prefill_len_bucket = 16
        c.prefill_batch = 4
        c.dtype = "float32"
        c.score_min_len = 16
        c.score_batch = 8
        c.score_group_size = 4
    return c
