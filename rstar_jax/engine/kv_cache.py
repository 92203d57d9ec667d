"""A slot KV cache: one contiguous row of keys/values per concurrent sequence.

S slots, each up to T tokens, L layers, G key/value heads of Dh dims. The layout is
[L, S, G, T, Dh]: (slot, head) lead so decode attention is a batched matrix product over
them with no transposed copy of the cache. A slot's first
`lengths[s]` positions are valid; everything after is stale and masked, so freeing a slot
costs nothing and a finished sequence's prefix stays reusable until the row is rewritten.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from rstar_jax.models.config import Qwen2Config

CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")


@flax.struct.dataclass
class KVCache:
    """k, v: [L, S, G, T, Dh] in the model dtype; lengths: [S] int32 valid tokens per slot."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


def init_cache(cfg: Qwen2Config, slots: int, max_len: int, dtype) -> KVCache:
    shape = (cfg.num_hidden_layers, slots, cfg.num_key_value_heads, max_len, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   lengths=jnp.zeros((slots,), jnp.int32))


def cache_bytes_per_token(cfg: Qwen2Config, itemsize: int) -> int:
    """Bytes of K and V one token occupies over all layers."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * itemsize


def copy_rows(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
    """Row dst[i] becomes a copy of row src[i], lengths included: src, dst [N] int32.

    All rows are read before any is written, so a slot may be both a source and a
    destination in one call. Entries with dst >= S are padding and are dropped. This is
    the fork of prefix sharing: one prefilled prompt becomes K sample slots.
    """
    s = cache.num_slots
    src = jnp.clip(src, 0, s - 1)
    return KVCache(
        k=cache.k.at[:, dst].set(cache.k[:, src], mode="drop"),
        v=cache.v.at[:, dst].set(cache.v[:, src], mode="drop"),
        lengths=cache.lengths.at[dst].set(cache.lengths[src], mode="drop"),
    )
