"""Decode attention: one query token per slot against that slot's KV-cache row.

q [S, H, Dh]; k_cache, v_cache [S, G, T, Dh] (one layer's cache buffer, kv_cache.py);
valid_len [S] keys to attend to per slot (the new key already written in). Query heads
are grouped under their key/value head: head h reads kv head h // R, R = H // G.

Two implementations of the same function:

  decode_attention_xla     plain XLA over the static bucket [0, kv_len). Slicing a bucket
                           shorter than T out of the buffer makes XLA copy it every step
                           for every layer; reading the whole buffer wastes the tail.
  decode_attention_pallas  a ragged Pallas (Triton) kernel: one program per (slot, kv
                           head) reads that slot's row in place, block by block, only up
                           to its own valid_len (a trip count read at run time), with an
                           online softmax in float32. No copy, no wasted tail, no bucket.

`decode_attention(..., impl)` picks one: "xla", "pallas" or "auto" (pallas on GPU).
On CPU the Pallas kernel runs in interpret mode (tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from rstar_jax.models import layers as Lyr

IMPLS = ("xla", "pallas", "auto")
# Triton's dot needs at least 16 rows: the R query heads of a group are padded up to this.
MIN_ROWS = 16
MIN_BLOCK_K = 16
# Masked scores and the running max's start value: finite so that exp(mask - m) is 0
# without inf - inf anywhere.
_MASK = -1e30


def decode_attention_xla(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                         valid_len: jax.Array, kv_len: int | None = None) -> jax.Array:
    """The reference: attention over positions [0, kv_len) of the cache, masked to valid_len.

    kv_len (static, <= T; None = T) bounds the keys read. Softmax in float32, normalised
    before the cast to the value dtype as HF does. Returns [S, H, Dh] in q's dtype.
    """
    if kv_len is not None and kv_len < k_cache.shape[2]:
        k_cache, v_cache = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
    s, h, dh = q.shape
    g = k_cache.shape[1]
    qg = q.reshape(s, g, h // g, dh)
    scores = jnp.einsum("sgrk,sgtk->sgrt", qg, k_cache).astype(jnp.float32) * (dh ** -0.5)
    valid = jnp.arange(k_cache.shape[2])[None, :] < valid_len[:, None]          # [S, K]
    scores = jnp.where(valid[:, None, None, :], scores, Lyr.MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
    return jnp.einsum("sgrt,sgtk->sgrk", probs, v_cache).reshape(s, h, dh).astype(q.dtype)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, max_len: int,
            scale: float, exact: bool):
    """One (slot, kv head): q_ref [Rp, Dh], k_ref/v_ref [T, Dh] (the row, in place), o_ref [Rp, Dh]."""
    rows, dh = q_ref.shape
    n = jnp.minimum(len_ref[...], max_len)           # this slot's valid keys
    q = q_ref[...]
    # float32 caches: exact (IEEE) dots, not TF32; others: the dtype's default MMA.
    precision = jax.lax.Precision.HIGHEST if exact else None
    offsets = jnp.arange(block_k)

    def body(i, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(i * block_k, block_k)
        valid = start + offsets < n                                          # [block_k]
        # Masked loads skip the tail past valid_len (its lanes are undefined): scores there
        # are replaced by _MASK and values by 0, so stale or non-finite entries never count.
        k = plgpu.load(k_ref.at[pl.ds(start, block_k), :], mask=valid[:, None])
        v = plgpu.load(v_ref.at[pl.ds(start, block_k), :], mask=valid[:, None])
        v = jnp.where(valid[:, None], v, jnp.zeros((), v.dtype))
        s = plgpu.dot(q, k, trans_b=True, precision=precision) * scale      # [Rp, block_k] f32
        s = jnp.where(valid[None, :], s, _MASK)
        m_next = jnp.maximum(m_prev, s.max(axis=-1))
        correction = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next[:, None])
        l_next = correction * l_prev + p.sum(axis=-1)
        acc = correction[:, None] * acc + plgpu.dot(p.astype(v.dtype), v, precision=precision)
        return acc, m_next, l_next

    init = (jnp.zeros((rows, dh), jnp.float32), jnp.full((rows,), _MASK, jnp.float32),
            jnp.zeros((rows,), jnp.float32))
    acc, _, l = jax.lax.fori_loop(0, pl.cdiv(n, block_k), body, init)
    # valid_len 0 attends to nothing: zeros, not 0/0.
    o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)


def kernel_block_k(max_len: int, block_k: int) -> int:
    """The key block the kernel uses for a cache of max_len T: block_k halved until it
    divides T (blocks never run past the buffer), at least 16 (Triton's dot minimum)."""
    b = 1 << (max(min(block_k, max_len), 1).bit_length() - 1)   # a power of two <= both
    while b > MIN_BLOCK_K and max_len % b:
        b //= 2
    if b < MIN_BLOCK_K or max_len % b:
        raise ValueError(f"decode_attention_pallas needs the cache length T ({max_len}) to be a "
                         f"multiple of {MIN_BLOCK_K}; use decode_attention='xla' for this max_len")
    return b


def check_pallas_shapes(head_dim: int, max_len: int, block_k: int) -> int:
    """Raise ValueError unless the kernel supports these shapes; returns its key block."""
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"decode_attention_pallas needs a power-of-two head dim >= 16, got "
                         f"{head_dim}; use decode_attention='xla' for this model")
    return kernel_block_k(max_len, block_k)


@functools.partial(jax.jit, static_argnames=("block_k", "interpret", "num_warps", "num_stages"))
def decode_attention_pallas(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                            valid_len: jax.Array, *, block_k: int = 64, interpret: bool = False,
                            num_warps: int = 4, num_stages: int = 2) -> jax.Array:
    """Ragged decode attention reading each slot's full-length cache row in place.

    Grid (S, G): the program of (slot s, kv head g) loads the R query heads of group g
    (padded to 16 rows), then loops over key blocks of `block_k` (a power of two dividing
    T, see kernel_block_k) up to ceil(valid_len[s] / block_k) only. Dh must be a power of
    two >= 16 (Triton). interpret=True runs the kernel on CPU. Returns [S, H, Dh] in q's dtype.
    """
    s, h, dh = q.shape
    _, g, t, dh_k = k_cache.shape
    if k_cache.shape != v_cache.shape or dh_k != dh or h % g or k_cache.shape[0] != s:
        raise ValueError(f"decode_attention_pallas: q {q.shape} does not match the caches "
                         f"k {k_cache.shape}, v {v_cache.shape}")
    bk = check_pallas_shapes(dh, t, block_k)
    r = h // g
    rows = max(MIN_ROWS, 1 << (r - 1).bit_length())
    qg = q.reshape(s, g, r, dh)
    if rows > r:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, rows - r), (0, 0)))
    exact = bool(jnp.dtype(k_cache.dtype) == jnp.float32)
    kernel = functools.partial(_kernel, block_k=bk, max_len=t, scale=dh ** -0.5, exact=exact)
    row = pl.BlockSpec((None, None, t, dh), lambda i, j: (i, j, 0, 0))
    out = pl.pallas_call(
        kernel,
        grid=(s, g),
        in_specs=[pl.BlockSpec((None,), lambda i, j: (i,)),
                  pl.BlockSpec((None, None, rows, dh), lambda i, j: (i, j, 0, 0)),
                  row, row],
        out_specs=pl.BlockSpec((None, None, rows, dh), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((s, g, rows, dh), q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="ragged_decode_attention",
    )(valid_len.astype(jnp.int32), qg, k_cache, v_cache)
    return out[:, :, :r].reshape(s, h, dh)


def resolve_impl(impl: str) -> str:
    """"auto" -> "pallas" on GPU, "xla" elsewhere; others unchanged (validated)."""
    if impl not in IMPLS:
        raise ValueError(f"decode_attention must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return impl


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     valid_len: jax.Array, kv_len: int | None = None, impl: str = "xla", *,
                     block_k: int = 64, interpret: bool | None = None,
                     shard: tuple | None = None) -> jax.Array:
    """Dispatch: "xla" reads the bucket [0, kv_len); "pallas" ignores kv_len and reads each
    row up to its valid_len in place (interpret=None: interpret unless on GPU).

    shard: (mesh, PartitionSpec of the cache buffers) when the caches are sharded. XLA
    cannot partition a Pallas call (it would gather the whole cache onto every device), so
    the kernel then runs per shard under shard_map: slots and kv heads split as the cache
    is, q's heads with their kv heads (they are grouped contiguously).
    """
    if resolve_impl(impl) == "xla":
        return decode_attention_xla(q, k_cache, v_cache, valid_len, kv_len)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    f = functools.partial(decode_attention_pallas, block_k=block_k, interpret=interpret)
    if shard is None:
        return f(q, k_cache, v_cache, valid_len)
    mesh, spec = shard
    spec = tuple(spec) + (None,) * (4 - len(spec))
    if spec[2] is not None or spec[3] is not None:
        raise ValueError(f"decode_attention: the Pallas kernel needs whole cache rows per "
                         f"device; the cache is sharded {spec}")
    cache = P(*spec)
    rows = P(spec[0], spec[1], None)
    return jax.shard_map(f, mesh=mesh, in_specs=(rows, cache, cache, P(spec[0])),
                         out_specs=rows, check_vma=False)(q, k_cache, v_cache, valid_len)
