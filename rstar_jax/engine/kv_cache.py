"""A slot KV cache: one contiguous row of keys/values per concurrent sequence.

S slots, each up to T tokens, L layers, G key/value heads of Dh dims. Keys and values are
tuples of L separate buffers of [S, G, T, Dh]: one buffer per layer, so a decode step reads
and updates each layer's cache in place. (A stacked [L, ...] array would be sliced per
layer, and XLA materialises such slices: measured on an H100 at 1.5B shapes, that copy
alone doubled the step time.) (slot, head) lead so decode attention is a batched matrix
product with no transposed copy. A slot's first `lengths[s]` positions are valid;
everything after is stale and masked, so freeing a slot costs nothing and a finished
sequence's prefix stays reusable until the row is rewritten.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from rstar_jax.models.config import Qwen2Config

CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")   # of each layer's buffer


@flax.struct.dataclass
class KVCache:
    """k, v: tuples of L arrays [S, G, T, Dh] in the model dtype; lengths: [S] int32."""

    k: tuple
    v: tuple
    lengths: jax.Array

    @property
    def num_slots(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: Qwen2Config, slots: int, max_len: int, dtype) -> KVCache:
    shape = (slots, cfg.num_key_value_heads, max_len, cfg.head_dim)
    layers = range(cfg.num_hidden_layers)
    return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in layers),
                   v=tuple(jnp.zeros(shape, dtype) for _ in layers),
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
    copy = lambda x: x.at[dst].set(x[src], mode="drop")  # noqa: E731
    return KVCache(k=tuple(map(copy, cache.k)), v=tuple(map(copy, cache.v)),
                   lengths=copy(cache.lengths))
