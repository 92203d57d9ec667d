"""Decode attention for one layer: rotate the new token's q/k, write k/v into the cache,
attend over the slot's cached keys plus the new one.

Shapes: S slots, G kv heads, R = H // G query heads per kv head, Dh head dim, T cache
length. qkv [S, G, R + 2, Dh] is the fused projection (bias added, not yet rotated): rows
0..R-1 are the group's query heads, row R the key, row R + 1 the value. cos, sin [S, Dh]
are the RoPE tables at each slot's position, which is `lengths` [S] (keys already cached).
k_cache, v_cache [S, G, T, Dh] are one layer's buffers (kv_cache.py). Slots where
`active` [S] is False write nothing (their output is unused).

Two implementations of the same function (`write_and_attend(..., impl)` picks one):

  write_and_attend_xla     the reference: RoPE, a scatter into each cache, then attention
                           over the static bucket [0, kv_len). Slicing a bucket shorter
                           than T copies it every step; reading all of T wastes the tail.
  write_and_attend_pallas  one Pallas (Triton) kernel per layer: a program per (slot, kv
                           head) rotates its queries and key, reads the slot's cached row in
                           place only up to its own length (a trip count read at run time),
                           folds in the new key from registers, and stores the new k/v in
                           place (the caches are aliased to the outputs). No bucket, no
                           wasted tail, and RoPE, the cache scatter and query padding stop
                           being separate kernels (on an H100 at 1.5B shapes those small
                           kernels cost about as much as the attention itself).

"auto" is pallas on GPU (when this JAX still has Pallas' Triton backend) and xla elsewhere;
on CPU the kernel runs in interpret mode (tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

try:   # JAX has deprecated Pallas' Triton backend; without it "auto" falls back to xla
    from jax.experimental.pallas import triton as plgpu
except ImportError:   # pragma: no cover - depends on the installed JAX
    plgpu = None

from rstar_jax.models.layers import MASK_VALUE, apply_rope

IMPLS = ("xla", "pallas", "auto")
# Triton's dot needs at least 16 rows: the R query heads are gathered into this many rows.
MIN_ROWS = 16
MIN_BLOCK_K = 16
# Masked scores and the running max's start value: finite so that exp(mask - m) is 0
# without inf - inf anywhere.
_MASK = -1e30


def decode_attention_xla(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                         valid_len: jax.Array, kv_len: int | None = None) -> jax.Array:
    """Attention of q [S, H, Dh] over positions [0, kv_len) of the cache, masked to valid_len [S].

    kv_len (static, <= T; None = T) bounds the keys read. Softmax in float32, normalised
    before the cast to the value dtype as HF does. Returns [S, H, Dh] in q's dtype.
    """
    if kv_len is not None and kv_len < k_cache.shape[2]:
        k_cache, v_cache = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
    s, h, dh = q.shape
    g = k_cache.shape[1]
    valid = jnp.arange(k_cache.shape[2])[None, :] < valid_len[:, None]          # [S, Tk]
    qg = q.reshape(s, g, h // g, dh)
    if jax.default_backend() == "cpu" and h > g:
        # On CPU, one matrix-vector product per query head of a group: XLA:CPU runs the
        # batched [R, Dh] x [Dh, Tk] products of every (slot, group) 1.6-2x slower than R
        # separate vector products over the same cached rows (tiny preset, S=256,
        # Tk=512: 7.5 ms vs 4.3 ms a layer). Accelerators keep the one batched product.
        return jnp.stack([_attend(qg[:, :, r], k_cache, v_cache, valid[:, None, :],
                                  "sgk,sgtk->sgt", "sgt,sgtk->sgk")
                          for r in range(h // g)], axis=2).reshape(s, h, dh).astype(q.dtype)
    return _attend(qg, k_cache, v_cache, valid[:, None, None, :], "sgrk,sgtk->sgrt",
                   "sgrt,sgtk->sgrk").reshape(s, h, dh).astype(q.dtype)


def _attend(q, k_cache, v_cache, mask, scores_spec: str, values_spec: str):
    """Softmax attention of q over the cache rows [S, G, Tk, Dh] where `mask` holds
    (float32 softmax, normalised before the cast to the value dtype)."""
    dh = k_cache.shape[-1]
    scores = jnp.einsum(scores_spec, q, k_cache).astype(jnp.float32) * (dh ** -0.5)
    scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
    return jnp.einsum(values_spec, probs, v_cache)


def split_and_rotate(qkv: jax.Array, cos: jax.Array, sin: jax.Array):
    """Fused projections [B, P, G, R + 2, Dh] -> rotated q [B, P, H, Dh], rotated k and v
    [B, P, G, Dh]; cos, sin [B, P, Dh]. (Prefill and the XLA decode path share this.)"""
    b, t, g, j, dh = qkv.shape
    q = qkv[:, :, :, : j - 2].reshape(b, t, g * (j - 2), dh)
    return (apply_rope(q, cos, sin), apply_rope(qkv[:, :, :, j - 2], cos, sin),
            qkv[:, :, :, j - 1])


def write_and_attend_xla(qkv: jax.Array, cos: jax.Array, sin: jax.Array, k_cache: jax.Array,
                         v_cache: jax.Array, lengths: jax.Array, active: jax.Array,
                         kv_len: int | None = None):
    """The reference. Returns (attn [S, H, Dh] in qkv's dtype, k_cache, v_cache)."""
    s, g = qkv.shape[:2]
    q, k, v = (x[:, 0] for x in split_and_rotate(qkv[:, None], cos[:, None], sin[:, None]))
    write = jnp.where(active, lengths, k_cache.shape[2])[:, None]                  # T: dropped
    rows, heads = jnp.arange(s)[:, None], jnp.arange(g)[None, :]
    k_cache = k_cache.at[rows, heads, write].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[rows, heads, write].set(v.astype(v_cache.dtype), mode="drop")
    attn = decode_attention_xla(q, k_cache, v_cache, lengths + 1, kv_len)
    return attn, k_cache, v_cache


def _kernel(len_ref, active_ref, qkv_ref, cos_ref, sin_ref, k_ref, v_ref,
            o_ref, k_out, v_out, *, r: int, block_k: int, max_len: int, scale: float,
            exact: bool):
    """One (slot, kv head).

    qkv_ref [R + 2, Dh]; cos_ref, sin_ref [Dh]; k_ref, v_ref [T, Dh] (the cached row, read
    in place); o_ref [R, Dh]; k_out, v_out [T, Dh] alias k_ref, v_ref (only the new
    position is stored).
    """
    dh = cos_ref.shape[0]
    half = dh // 2
    lo, hi = pl.ds(0, half), pl.ds(half, half)
    cdt = k_ref.dtype
    f32 = jnp.float32
    pos = len_ref[...]                                # the new token's position
    n = jnp.minimum(pos, max_len)                     # cached keys before it
    # float32 caches: exact (IEEE) dots, not TF32; others: the dtype's default MMA.
    precision = jax.lax.Precision.HIGHEST if exact else None

    # RoPE (rotate-half): the two halves of a head rotate as a pair. The tables' halves
    # are equal, so the first half of cos/sin serves both. Rounded to the cache dtype as
    # the reference rounds its rotated q and k.
    c = cos_ref[lo].astype(cdt).astype(f32)
    s_ = sin_ref[lo].astype(cdt).astype(f32)

    def rotate(x1, x2):
        return (x1 * c - x2 * s_).astype(cdt), (x2 * c + x1 * s_).astype(cdt)

    # The R query rows padded to MIN_ROWS for Triton's dot: a clamped gather keeps every
    # address inside the block, the padding rows are zeroed and never stored.
    # (Both indexers are arrays: interpret mode cannot mix an array with a slice.)
    row = jnp.arange(MIN_ROWS)
    is_query = row < r
    src = jnp.broadcast_to(jnp.minimum(row, r - 1)[:, None], (MIN_ROWS, half))
    col = jnp.broadcast_to(jnp.arange(half)[None, :], (MIN_ROWS, half))
    q1 = jnp.where(is_query[:, None], plgpu.load(qkv_ref.at[src, col]).astype(f32), 0.0)
    q2 = jnp.where(is_query[:, None], plgpu.load(qkv_ref.at[src, col + half]).astype(f32), 0.0)
    q1, q2 = rotate(q1, q2)                                                # [16, Dh/2]
    k1, k2 = rotate(qkv_ref[r, lo].astype(f32), qkv_ref[r, hi].astype(f32))   # [Dh/2]
    v_new = qkv_ref[r + 1, :].astype(cdt)                                  # [Dh]

    offsets = jnp.arange(block_k)

    def body(i, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(i * block_k, block_k)
        valid = start + offsets < n                                          # [block_k]
        # Masked loads skip the tail past n (its lanes are undefined): scores there are
        # replaced by _MASK and values by 0, so stale or non-finite entries never count.
        rows = pl.ds(start, block_k)
        kb1 = plgpu.load(k_ref.at[rows, lo], mask=valid[:, None])
        kb2 = plgpu.load(k_ref.at[rows, hi], mask=valid[:, None])
        v = plgpu.load(v_ref.at[rows, :], mask=valid[:, None])
        v = jnp.where(valid[:, None], v, jnp.zeros((), v.dtype))
        sc = (plgpu.dot(q1, kb1, trans_b=True, precision=precision)
              + plgpu.dot(q2, kb2, trans_b=True, precision=precision)) * scale   # [16, bk]
        sc = jnp.where(valid[None, :], sc, _MASK)
        m_next = jnp.maximum(m_prev, sc.max(axis=-1))
        correction = jnp.exp(m_prev - m_next)
        p = jnp.exp(sc - m_next[:, None])
        l_next = correction * l_prev + p.sum(axis=-1)
        acc = correction[:, None] * acc + plgpu.dot(p.astype(cdt), v, precision=precision)
        return acc, m_next, l_next

    init = (jnp.zeros((MIN_ROWS, dh), f32), jnp.full((MIN_ROWS,), _MASK, f32),
            jnp.zeros((MIN_ROWS,), f32))
    acc, m, l = jax.lax.fori_loop(0, pl.cdiv(n, block_k), body, init)

    # The new key, from registers: one more column of the online softmax.
    s_new = ((q1.astype(f32) * k1.astype(f32)[None, :]).sum(axis=-1)
             + (q2.astype(f32) * k2.astype(f32)[None, :]).sum(axis=-1)) * scale     # [16]
    m_fin = jnp.maximum(m, s_new)
    correction = jnp.exp(m - m_fin)
    p_new = jnp.exp(s_new - m_fin)
    l = correction * l + p_new
    acc = (correction[:, None] * acc
           + p_new.astype(cdt).astype(f32)[:, None] * v_new.astype(f32)[None, :])
    out = (acc / l[:, None]).astype(o_ref.dtype)                          # [16, Dh]
    # Padding rows index past the block's R rows and are masked off (interpret mode drops
    # such a scatter; clamped duplicates would race with the real rows there).
    out_row = jnp.broadcast_to(row[:, None], (MIN_ROWS, dh))
    out_col = jnp.broadcast_to(jnp.arange(dh)[None, :], (MIN_ROWS, dh))
    plgpu.store(o_ref.at[out_row, out_col], out,
                mask=jnp.broadcast_to(is_query[:, None], (MIN_ROWS, dh)))

    # The new key/value go to position pos of the row, for active slots with room.
    write = (active_ref[...] != 0) & (pos < max_len)
    at = jnp.minimum(pos, max_len - 1)
    keep = jnp.full((half,), write)
    plgpu.store(k_out.at[at, lo], k1, mask=keep)
    plgpu.store(k_out.at[at, hi], k2, mask=keep)
    plgpu.store(v_out.at[at, :], v_new, mask=jnp.full((dh,), write))


def kernel_block_k(max_len: int, block_k: int) -> int:
    """The key block the kernel uses for a cache of max_len T: block_k halved until it
    divides T (blocks never run past the buffer), at least 16 (Triton's dot minimum)."""
    b = 1 << (max(min(block_k, max_len), 1).bit_length() - 1)   # a power of two <= both
    while b > MIN_BLOCK_K and max_len % b:
        b //= 2
    if b < MIN_BLOCK_K or max_len % b:
        raise ValueError(f"decode_attention='pallas' needs the cache length T ({max_len}) to be "
                         f"a multiple of {MIN_BLOCK_K}; use decode_attention='xla' for this max_len")
    return b


def check_pallas_shapes(head_dim: int, max_len: int, block_k: int,
                        group: int | None = None) -> int:
    """Raise ValueError unless the kernel supports these shapes; returns its key block.

    head_dim: a power of two >= 32 (each rotated half must feed Triton's dot); group: R,
    the query heads per kv head, at most MIN_ROWS.
    """
    if head_dim < 32 or head_dim & (head_dim - 1):
        raise ValueError(f"decode_attention='pallas' needs a power-of-two head dim >= 32, got "
                         f"{head_dim}; use decode_attention='xla' for this model")
    if group is not None and not 1 <= group <= MIN_ROWS:
        raise ValueError(f"decode_attention='pallas' supports 1..{MIN_ROWS} query heads per kv "
                         f"head, got {group}; use decode_attention='xla' for this model")
    return kernel_block_k(max_len, block_k)


@functools.partial(jax.jit, static_argnames=("block_k", "interpret", "num_warps", "num_stages"))
def write_and_attend_pallas(qkv: jax.Array, cos: jax.Array, sin: jax.Array, k_cache: jax.Array,
                            v_cache: jax.Array, lengths: jax.Array, active: jax.Array, *,
                            block_k: int = 32, interpret: bool = False, num_warps: int = 2,
                            num_stages: int = 3):
    """The fused kernel; same contract as write_and_attend_xla (which reads all of T).

    Grid (S, G). block_k: the key block (a power of two dividing T, see kernel_block_k).
    The defaults (32 keys, 2 warps, 3 stages) were the fastest of a 3x3x3 sweep on an
    H100 at 1.5B shapes (launch/bench_decode_attention.py, benchmarks/RESULTS.md).
    interpret=True runs on CPU. The caches are updated in place when their buffers are
    donated (the engine's decode loop carries them), otherwise XLA copies them first.
    """
    s, g, j, dh = qkv.shape
    _, g_k, t, dh_k = k_cache.shape
    r = j - 2
    if k_cache.shape != v_cache.shape or (g_k, dh_k) != (g, dh) or k_cache.shape[0] != s:
        raise ValueError(f"write_and_attend_pallas: qkv {qkv.shape} does not match the caches "
                         f"k {k_cache.shape}, v {v_cache.shape}")
    bk = check_pallas_shapes(dh, t, block_k, r)
    exact = bool(jnp.dtype(k_cache.dtype) == jnp.float32)
    kernel = functools.partial(_kernel, r=r, block_k=bk, max_len=t, scale=dh ** -0.5, exact=exact)
    slot = pl.BlockSpec((None,), lambda i, h: (i,))
    table = pl.BlockSpec((None, dh), lambda i, h: (i, 0))
    row = pl.BlockSpec((None, None, t, dh), lambda i, h: (i, h, 0, 0))
    attn, k_cache, v_cache = pl.pallas_call(
        kernel,
        grid=(s, g),
        in_specs=[slot, slot, pl.BlockSpec((None, None, j, dh), lambda i, h: (i, h, 0, 0)),
                  table, table, row, row],
        out_specs=[pl.BlockSpec((None, None, r, dh), lambda i, h: (i, h, 0, 0)), row, row],
        out_shape=[jax.ShapeDtypeStruct((s, g, r, dh), qkv.dtype),
                   jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
                   jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype)],
        input_output_aliases={5: 1, 6: 2},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="decode_write_and_attend",
    )(lengths.astype(jnp.int32), active.astype(jnp.int32), qkv, cos.astype(jnp.float32),
      sin.astype(jnp.float32), k_cache, v_cache)
    return attn.reshape(s, g * r, dh), k_cache, v_cache


def resolve_impl(impl: str) -> str:
    """"auto" -> "pallas" on GPU, "xla" elsewhere; others unchanged (validated)."""
    if impl not in IMPLS:
        raise ValueError(f"decode_attention must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" and plgpu is not None else "xla"
    if impl == "pallas" and plgpu is None:
        raise ValueError("decode_attention='pallas' needs jax.experimental.pallas.triton, which "
                         f"this JAX ({jax.__version__}) lacks; use 'xla' or 'auto'")
    return impl


def write_and_attend(qkv: jax.Array, cos: jax.Array, sin: jax.Array, k_cache: jax.Array,
                     v_cache: jax.Array, lengths: jax.Array, active: jax.Array,
                     kv_len: int | None = None, impl: str = "xla", *, block_k: int = 32,
                     interpret: bool | None = None, shard: tuple | None = None):
    """Dispatch: "xla" reads the bucket [0, kv_len); "pallas" ignores kv_len and reads each
    row up to its own length in place (interpret=None: interpret unless on GPU).

    shard: (mesh, PartitionSpec of the cache buffers) when the caches are sharded. XLA
    cannot partition a Pallas call (it would gather the whole cache onto every device), so
    the kernel then runs per shard under shard_map: slots and kv heads split as the cache
    is, and qkv with them.
    Returns (attn [S, H, Dh], k_cache, v_cache).
    """
    if resolve_impl(impl) == "xla":
        return write_and_attend_xla(qkv, cos, sin, k_cache, v_cache, lengths, active, kv_len)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    f = functools.partial(write_and_attend_pallas, block_k=block_k, interpret=interpret)
    if shard is None:
        return f(qkv, cos, sin, k_cache, v_cache, lengths, active)
    mesh, spec = shard
    spec = tuple(spec) + (None,) * (4 - len(spec))
    if spec[2] is not None or spec[3] is not None:
        raise ValueError(f"decode_attention: the Pallas kernel needs whole cache rows per "
                         f"device; the cache is sharded {spec}")
    cache, per_slot = P(*spec), P(spec[0])
    table = P(spec[0], None)
    return jax.shard_map(
        f, mesh=mesh,
        in_specs=(cache, table, table, cache, cache, per_slot, per_slot),
        out_specs=(P(spec[0], spec[1], None), cache, cache), check_vma=False,
    )(qkv, cos, sin, k_cache, v_cache, lengths, active)
