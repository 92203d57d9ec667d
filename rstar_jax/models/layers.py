"""Pure building blocks of a Qwen2 decoder layer.

Shapes: B batch, T query tokens, S key tokens, D hidden, H query heads, G key/value heads,
Dh head dim, F MLP width. Numerics follow Hugging Face Qwen2 so logits match to fp32
round-off: normalisation statistics, RoPE angles and softmax run in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # finite, so fully masked (padding) rows give uniform weights, not NaN


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis. HF multiplies the weight after casting back to x.dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables for rotate-half RoPE. positions [B, T] -> ([B, T, Dh], [B, T, Dh]) f32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, heads, Dh] by angles [B, T, Dh] (the HF rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def qkv_projection(p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """Projected, rotated q [B, T, H, Dh] and k, v [B, T, G, Dh] of one layer's input x [B, T, D]."""
    q = jnp.einsum("btd,dhk->bthk", x, p["q_kernel"]) + p["q_bias"]
    k = jnp.einsum("btd,dhk->bthk", x, p["k_kernel"]) + p["k_bias"]
    v = jnp.einsum("btd,dhk->bthk", x, p["v_kernel"]) + p["v_bias"]
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention in plain XLA.

    q [B, T, H, Dh]; k, v [B, S, G, Dh]; mask [B, T, S] bool (True = may attend).
    Returns [B, T, H, Dh]. Softmax in float32, probabilities cast back as HF's eager path does.
    """
    b, t, h, dh = q.shape
    g = k.shape[2]
    q = q.reshape(b, t, g, h // g, dh)
    scores = jnp.einsum("btgrk,bsgk->bgrts", q, k).astype(jnp.float32) * (dh ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs, v)
    return out.reshape(b, t, h, dh)


def flash_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                           kv_lengths: jax.Array | None) -> jax.Array:
    """Causal GQA through cuDNN's fused flash attention (GPU, bf16/fp16 only).

    q [B, T, H, Dh]; k, v [B, T, G, Dh]; kv_lengths [B] real tokens per row, which must be
    RIGHT-padded (then causality alone keeps real queries off padding keys; outputs at
    padded query positions are undefined). Same result as `grouped_attention` with a
    causal + padding mask, without materialising the [B, H, T, T] scores.
    """
    if kv_lengths is not None:
        # empty filler rows (zero loss weight) still need one key, or cuDNN may give NaN
        kv_lengths = jnp.maximum(kv_lengths, 1)
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, key_value_seq_lengths=kv_lengths,
        query_seq_lengths=kv_lengths, implementation="cudnn")


def resolve_attention_impl(impl: str, dtype) -> str:
    """"auto" -> "cudnn" on GPU for bf16/fp16, else "xla" (the fallback the CPU tests run)."""
    if impl not in ("auto", "xla", "cudnn"):
        raise ValueError(f"attention_impl must be 'auto', 'xla' or 'cudnn', got {impl!r}")
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half else "xla"


def attention_output(p: dict, attn: jax.Array) -> jax.Array:
    """o_proj: [B, T, H, Dh] -> [B, T, D] (Qwen2 has no o_proj bias)."""
    return jnp.einsum("bthk,hkd->btd", attn, p["o_kernel"])


def swiglu_mlp(p: dict, x: jax.Array) -> jax.Array:
    """down(silu(gate(x)) * up(x)): [B, T, D] -> [B, T, D]."""
    gate = jnp.einsum("btd,df->btf", x, p["gate_kernel"])
    up = jnp.einsum("btd,df->btf", x, p["up_kernel"])
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["down_kernel"])


def causal_mask(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
    """[B, T, T] bool: causal, and keys where attention_mask [B, T] is 0 are hidden."""
    mask = jnp.tril(jnp.ones((length, length), dtype=bool))[None]
    mask = jnp.broadcast_to(mask, (batch, length, length))
    if attention_mask is not None:
        mask = mask & attention_mask.astype(bool)[:, None, :]
    return mask
