"""Token sampling: greedy, temperature, top-k and top-p, with one PRNG stream per request.

Each sequence owns a key; the token at generation index n uses fold_in(key, n), so a
request's samples do not depend on which slot it got, on the other sequences in the batch
or on how decoding was split into jitted chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def request_keys(seeds: jax.Array, sample_index: jax.Array) -> jax.Array:
    """Raw PRNG keys [N, 2] uint32 of sample `sample_index[i]` of a request seeded `seeds[i]`."""
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.PRNGKey(s), i))(seeds, sample_index)


def filter_logits(logits: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf.

    logits [N, V] float32 (already divided by the temperature); top_p [N] (1.0 = off);
    top_k [N] int (<= 0 = off). Top-k applies first and top-p renormalises over the kept
    tokens, as vLLM does. Ties at the threshold are all kept.
    """
    v = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)                                   # [N, V] descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    rank = jnp.arange(v)[None, :]
    ordered = jnp.where(rank < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # keep a token while the mass of better tokens is below p; always keep the best one
    keep = jnp.maximum(jnp.sum(mass_before < top_p[:, None], axis=-1), 1)
    keep = jnp.minimum(keep, k)
    threshold = jnp.take_along_axis(ordered, (keep - 1)[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_tokens(logits: jax.Array, keys: jax.Array, counts: jax.Array,
                  temperature: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Next token [N] int32 of logits [N, V] float32.

    keys [N, 2] per-sequence keys, counts [N] tokens generated so far (the PRNG step),
    temperature [N] (0 = greedy), top_p [N], top_k [N].
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    needs_filter = jnp.any(((top_p < 1.0) | (top_k > 0)) & (temperature > 0))
    # The sort over the vocabulary is the costly part; skip it when no row filters
    # (the reference samples with top_p=1, top_k=-1).
    scaled = jax.lax.cond(needs_filter, filter_logits, lambda x, p, k: x, scaled, top_p, top_k)

    def draw(scaled):
        step_keys = jax.vmap(jax.random.fold_in)(keys, counts)
        return jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)

    # Random bits for the whole vocabulary cost as much as a layer: skip them when all greedy.
    sampled = jax.lax.cond(jnp.any(temperature > 0), draw, lambda x: greedy, scaled)
    return jnp.where(temperature > 0, sampled, greedy)


SAMPLING_MODES = ("greedy", "sample", "filter")


def sample_tokens_static(logits: jax.Array, keys: jax.Array, counts: jax.Array,
                         temperature: jax.Array, top_p: jax.Array, top_k: jax.Array, *,
                         mode: str) -> jax.Array:
    """`sample_tokens` with the work chosen at trace time instead of by `lax.cond`.

    mode "greedy": argmax only (every row has temperature 0); "sample": temperature
    sampling without top-k/top-p; "filter": top-k/top-p too. Rows with temperature 0 are
    greedy in every mode. Inside the decode loop a data-dependent `lax.cond` makes the
    GPU report its predicate to the host each token, stalling the kernel queue; a static
    mode keeps the loop free of host round trips.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if mode == "greedy":
        return greedy
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    if mode == "filter":
        scaled = filter_logits(scaled, top_p, top_k)
    step_keys = jax.vmap(jax.random.fold_in)(keys, counts)
    sampled = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)
