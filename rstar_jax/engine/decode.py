"""Device side of generation: cached prefill, a multi-token decode loop, slot start-up.

Shapes: L layers, S slots, T cache length (max_len; the cache is a tuple of L buffers
[S, G, T, Dh] for keys and L for values), Tk the static key bucket read by attention
(kv_len <= T), B prefill rows, P prefill tokens per row, D hidden, H query heads,
G key/value heads, R = H // G, Dh head dim, V vocabulary, C output capacity per slot,
M stop ids per slot.

Everything here is a pure function of arrays; the host (scheduler.py) only picks slots,
buckets and when to call. The decode loop runs `num_steps` tokens inside one
`lax.while_loop`, so the host is not in the per-token path.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from rstar_jax.engine.decode_attention import split_and_rotate, write_and_attend
from rstar_jax.engine.kv_cache import KVCache
from rstar_jax.engine.sampling import request_keys, sample_tokens, sample_tokens_static
from rstar_jax.models.layers import attention_output, grouped_attention, rms_norm, rope_tables
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import lm_head_kernel

# Why a slot stopped (SlotState.stop_reason).
RUNNING, STOP_TAG, EOS, LENGTH, CACHE_FULL = 0, 1, 2, 3, 4
STOP_REASON_NAMES = {STOP_TAG: "stop", EOS: "eos", LENGTH: "length", CACHE_FULL: "cache_full"}


@flax.struct.dataclass
class SlotState:
    """Per-slot generation state, all [S] unless noted.

    last_token: int32, sampled but not yet in the cache (fed at the next step)
    done: bool, the slot is finished or free (decode skips it)
    num_generated: int32, tokens in `out`
    max_new: int32, per-request token limit
    stop_reason: int32, one of RUNNING, STOP_TAG, EOS, LENGTH, CACHE_FULL
    temperature, top_p: float32; top_k: int32
    keys: [S, 2] uint32 per-request PRNG keys
    stop_ids: [S, M] int32 per-request stop token ids (padded with -1)
    out: [S, C] int32 generated tokens
    """

    last_token: jax.Array
    done: jax.Array
    num_generated: jax.Array
    max_new: jax.Array
    stop_reason: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array
    keys: jax.Array
    stop_ids: jax.Array
    out: jax.Array


def init_state(slots: int, capacity: int, num_stop_ids: int = 4) -> SlotState:
    i32 = lambda v: jnp.full((slots,), v, jnp.int32)
    return SlotState(
        last_token=i32(0), done=jnp.ones((slots,), bool), num_generated=i32(0),
        max_new=i32(0), stop_reason=i32(RUNNING), temperature=jnp.zeros((slots,), jnp.float32),
        top_p=jnp.ones((slots,), jnp.float32), top_k=i32(-1),
        keys=jnp.zeros((slots, 2), jnp.uint32),
        stop_ids=jnp.full((slots, num_stop_ids), -1, jnp.int32),
        out=jnp.zeros((slots, capacity), jnp.int32))


def _record(st: SlotState, tok: jax.Array, active: jax.Array, lengths: jax.Array,
            max_len: int, eos_id: jax.Array) -> SlotState:
    """Append tok [S] to the active slots and decide which of them stop."""
    s, cap = st.out.shape
    out = st.out.at[jnp.arange(s), jnp.where(active, st.num_generated, cap)].set(tok, mode="drop")
    n = st.num_generated + active.astype(jnp.int32)
    reason = jnp.select(
        [jnp.any((tok[:, None] == st.stop_ids) & (st.stop_ids >= 0), axis=-1), tok == eos_id,
         n >= st.max_new, lengths >= max_len],   # no room left to write the new token
        [STOP_TAG, EOS, LENGTH, CACHE_FULL], RUNNING)
    stops = active & (reason != RUNNING)
    return st.replace(
        out=out, num_generated=n, last_token=jnp.where(active, tok, st.last_token),
        done=st.done | stops, stop_reason=jnp.where(stops, reason, st.stop_reason))


ENGINE_LAYER_AXES = {
    "attn_norm": ("norm",), "mlp_norm": ("norm",),
    # q heads grouped under their kv head: [D, G, R + 2, Dh] = R query heads, then k, then v
    "qkv_kernel": ("embed", "kv_heads", None, "head_dim"),
    "qkv_bias": ("kv_heads", None, "head_dim"),
    "o_kernel": ("heads", "head_dim", "embed"),
    "gate_up_kernel": ("embed", None, "mlp"),          # [D, 2, F]
    "down_kernel": ("mlp", "embed"),
}


def split_layers(params: dict) -> dict:
    """The engine's weight layout: one dict of fused weights per layer.

    Decoding reads every weight once per token. Indexing a stacked [L, ...] array per
    layer makes XLA copy that layer's slice each step (measured on an H100 at 1.5B
    shapes: about half of the step time), so each layer gets its own buffers. Within a
    layer, q/k/v become one matrix and gate/up another, so a decode step issues two
    matmuls where it issued five; q heads are grouped under their kv head so that a
    tensor-parallel split of the kv-head axis keeps each group on one device.
    """
    layers = params["layers"]
    n, d, h, dh = layers["q_kernel"].shape
    g = layers["k_kernel"].shape[2]
    r = h // g

    def one(i):
        q = layers["q_kernel"][i].reshape(d, g, r, dh)
        qkv = jnp.concatenate([q, layers["k_kernel"][i][:, :, None], layers["v_kernel"][i][:, :, None]], axis=2)
        qb = layers["q_bias"][i].reshape(g, r, dh)
        qkv_b = jnp.concatenate([qb, layers["k_bias"][i][:, None], layers["v_bias"][i][:, None]], axis=1)
        return {"attn_norm": layers["attn_norm"][i], "mlp_norm": layers["mlp_norm"][i],
                "qkv_kernel": qkv, "qkv_bias": qkv_b, "o_kernel": layers["o_kernel"][i],
                "gate_up_kernel": jnp.stack([layers["gate_kernel"][i], layers["up_kernel"][i]], axis=1),
                "down_kernel": layers["down_kernel"][i]}

    out = {k: v for k, v in params.items() if k != "layers"}
    out["layers"] = tuple(one(i) for i in range(n))
    return out


def split_layer_shardings(shardings: dict, params: dict, mesh, rules=None) -> dict:
    """Shardings for `split_layers(params)`: non-layer entries keep theirs."""
    from rstar_jax.models.sharding import logical_to_spec
    shapes = jax.eval_shape(split_layers, params)
    out = {k: v for k, v in shardings.items() if k != "layers"}
    out["layers"] = tuple(
        {name: NamedSharding(mesh, logical_to_spec(ENGINE_LAYER_AXES[name], x.shape, mesh, rules))
         for name, x in layer.items()}
        for layer in shapes["layers"])
    return out


def _layer_qkv(p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """Rotated q [B, T, H, Dh] and k, v [B, T, G, Dh] of x [B, T, D] from fused weights."""
    qkv = jnp.einsum("btd,dgjk->btgjk", x, p["qkv_kernel"]) + p["qkv_bias"]
    return split_and_rotate(qkv, cos, sin)


def _layer_mlp(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU with the fused gate/up matrix: [B, T, D] -> [B, T, D]."""
    gate_up = jnp.einsum("btd,dcf->btcf", x, p["gate_up_kernel"])
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1], p["down_kernel"])


def decode_forward(params: dict, cfg: Qwen2Config, cache: KVCache, tokens: jax.Array,
                   active: jax.Array, kv_len: int, attention: str = "xla",
                   attn_block_k: int = 32, attn_shard: tuple | None = None):
    """One token per slot: tokens [S] at positions cache.lengths, for `split_layers` params.

    Each layer writes its new key/value into its own cache buffer in place (inactive
    slots write nothing) and attends over its valid keys (decode_attention.py):
    attention="xla" reads positions [0, kv_len) of every row, "pallas" is one fused kernel
    that reads each row in place up to its own length (kv_len unused).
    attn_block_k, attn_shard: the kernel's key block and (mesh, cache PartitionSpec) when
    sharded. Returns logits [S, V] float32 and the cache with the new entries (lengths
    unchanged).
    """
    eps = cfg.rms_norm_eps
    cos, sin = rope_tables(cache.lengths[:, None], cfg.head_dim, cfg.rope_theta)
    cos, sin = cos[:, 0], sin[:, 0]                                   # [S, Dh]
    h = jnp.take(params["embed"], tokens, axis=0)[:, None, :]       # [S, 1, D]
    ks, vs = [], []
    # A Python loop over separate layer buffers (not a scan over stacked ones): see
    # split_layers for why.
    for p, k_cache, v_cache in zip(params["layers"], cache.k, cache.v):
        x = rms_norm(h[:, 0], p["attn_norm"], eps)
        qkv = jnp.einsum("sd,dgjk->sgjk", x, p["qkv_kernel"]) + p["qkv_bias"]   # [S, G, R+2, Dh]
        attn, k_cache, v_cache = write_and_attend(
            qkv, cos, sin, k_cache, v_cache, cache.lengths, active, kv_len, attention,
            block_k=attn_block_k, shard=attn_shard)
        h = h + attention_output(p, attn[:, None])
        h = h + _layer_mlp(p, rms_norm(h, p["mlp_norm"], eps))
        ks.append(k_cache)
        vs.append(v_cache)
    h = rms_norm(h[:, 0], params["final_norm"], eps)
    logits = jnp.einsum("sd,dv->sv", h, lm_head_kernel(params, cfg)).astype(jnp.float32)
    return logits, cache.replace(k=tuple(ks), v=tuple(vs))


def decode_steps(params: dict, cache: KVCache, state: SlotState, eos_id: jax.Array, *, cfg: Qwen2Config, num_steps: int, kv_len: int,
                 sampling: str = "sample", block: int = 8, attention: str = "xla",
                 attn_block_k: int = 32, attn_shard: tuple | None = None):
    """Up to num_steps tokens for every unfinished slot, without leaving the device.

    Each slot stops at its own `state.stop_ids`; eos_id scalar int32 (-1 = none); sampling is the
    static mode of `sample_tokens_static`. Tokens come in blocks of `block` fixed-count
    steps inside a while loop that ends once every slot is done: the fixed inner count
    spares the GPU a predicate round trip to the host per token, the outer check still
    stops early. The caller guarantees max(active lengths) + num_steps <= kv_len (any
    kv_len does for attention="pallas", which reads each row up to its own length).
    attention, attn_block_k, attn_shard: see decode_forward. Returns the updated (cache, state).
    """
    t = cache.max_len
    block = max(1, min(block, num_steps))
    num_blocks = -(-num_steps // block)

    def step(_, carry):
        c, st = carry
        active = ~st.done
        logits, c = decode_forward(params, cfg, c, st.last_token, active, kv_len,
                                   attention, attn_block_k, attn_shard)
        c = c.replace(lengths=c.lengths + active.astype(jnp.int32))
        tok = sample_tokens_static(logits, st.keys, st.num_generated, st.temperature,
                                   st.top_p, st.top_k, mode=sampling)
        return c, _record(st, tok, active, c.lengths, t, eos_id)

    def cond(carry):
        i, _, st = carry
        return (i < num_blocks) & ~jnp.all(st.done)

    def body(carry):
        i, c, st = carry
        c, st = jax.lax.fori_loop(0, block, step, (c, st))
        return i + 1, c, st

    _, cache, state = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, state))
    return cache, state


def prefill(params: dict, cache: KVCache, tokens: jax.Array, slots: jax.Array,
            starts: jax.Array, num_new: jax.Array, *, cfg: Qwen2Config, kv_len: int):
    """Write prompt suffixes into their slots and return each row's next-token logits.

    params in the `split_layers` layout. tokens [B, P] right-padded suffixes; slots [B]
    distinct slot ids (>= S marks a padding row); starts [B] cached prefix length already
    in the slot (reused, not recomputed); num_new [B] >= 1 real tokens per row. Suffix
    token j sits at position starts + j and attends to the slot's cached prefix and to
    the suffix causally. Needs max(starts + num_new) <= kv_len.
    Returns (cache, logits [B, V] float32).
    """
    b, p_len = tokens.shape
    s, t = cache.num_slots, cache.max_len
    eps = cfg.rms_norm_eps
    positions = starts[:, None] + jnp.arange(p_len)[None, :]                  # [B, P]
    real = (jnp.arange(p_len)[None, :] < num_new[:, None]) & (slots < s)[:, None]
    rows = jnp.clip(slots, 0, s - 1)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    mask = jnp.arange(kv_len)[None, None, :] <= positions[:, :, None]          # [B, P, Tk]
    local_write = jnp.where(real, positions, kv_len)[:, None, :]               # [B, 1, P]
    write = jnp.where(real, positions, t)[:, None, :]                          # [B, 1, P]
    brow = jnp.arange(b)[:, None, None]
    slot_idx = rows[:, None, None]
    heads = jnp.arange(cfg.num_key_value_heads)[None, :, None]
    h = jnp.take(params["embed"], tokens, axis=0)

    def rows_with(cache_rows, new):   # [B, G, Tk, Dh] with the suffix [B, P, G, Dh] written in
        new = new.transpose(0, 2, 1, 3)
        return cache_rows.at[brow, heads, local_write].set(new, mode="drop").transpose(0, 2, 1, 3)

    ks, vs = [], []
    for p, k_cache, v_cache in zip(params["layers"], cache.k, cache.v):
        q, k, v = _layer_qkv(p, rms_norm(h, p["attn_norm"], eps), cos, sin)
        k_rows = rows_with(k_cache[rows, :, :kv_len], k)
        v_rows = rows_with(v_cache[rows, :, :kv_len], v)
        h = h + attention_output(p, grouped_attention(q, k_rows, v_rows, mask))
        h = h + _layer_mlp(p, rms_norm(h, p["mlp_norm"], eps))
        ks.append(k_cache.at[slot_idx, heads, write].set(k.transpose(0, 2, 1, 3), mode="drop"))
        vs.append(v_cache.at[slot_idx, heads, write].set(v.transpose(0, 2, 1, 3), mode="drop"))
    cache = KVCache(k=tuple(ks), v=tuple(vs),
                    lengths=cache.lengths.at[slots].set(starts + num_new, mode="drop"))
    last = rms_norm(h[jnp.arange(b), jnp.maximum(num_new - 1, 0)], params["final_norm"], eps)
    logits = jnp.einsum("bd,dv->bv", last, lm_head_kernel(params, cfg)).astype(jnp.float32)
    return cache, logits


def start_slots(cache: KVCache, state: SlotState, logits: jax.Array, source_row: jax.Array,
                slots: jax.Array, max_new: jax.Array, temperature: jax.Array, top_p: jax.Array,
                top_k: jax.Array, seeds: jax.Array, sample_index: jax.Array,
                stop_ids: jax.Array, eos_id: jax.Array) -> SlotState:
    """Begin generation in `slots` [N] (>= S = padding): sample each one's first token.

    logits [B, V] from prefill; source_row [N] picks the prefill row of each slot (the K
    samples of a prompt share one row). max_new, temperature, top_p, top_k, seeds,
    sample_index: [N] per-slot request settings; stop_ids [N, M] each slot's stop ids
    (-1 = none).
    """
    s = state.done.shape[0]
    keys = request_keys(seeds, sample_index)
    lg = logits[jnp.clip(source_row, 0, logits.shape[0] - 1)]
    zeros = jnp.zeros_like(max_new)
    first = sample_tokens(lg, keys, zeros, temperature, top_p, top_k)

    def put(field, value):
        return field.at[slots].set(value, mode="drop")

    st = state.replace(
        done=put(state.done, False), num_generated=put(state.num_generated, 0),
        max_new=put(state.max_new, max_new), stop_reason=put(state.stop_reason, RUNNING),
        temperature=put(state.temperature, temperature), top_p=put(state.top_p, top_p),
        top_k=put(state.top_k, top_k), keys=put(state.keys, keys),
        stop_ids=put(state.stop_ids, stop_ids))
    tok = jnp.zeros((s,), jnp.int32).at[slots].set(first, mode="drop")
    starting = jnp.zeros((s,), bool).at[slots].set(True, mode="drop")
    return _record(st, tok, starting, cache.lengths, cache.max_len, eos_id)
