"""The static-mode sampler used inside the decode loop equals the general one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.engine.sampling import request_keys, sample_tokens, sample_tokens_static


def _inputs(temperature, top_p, top_k):
    n, v = 6, 50
    logits = jax.random.normal(jax.random.key(0), (n, v)) * 3
    keys = request_keys(jnp.arange(n), jnp.zeros(n, jnp.int32))
    counts = jnp.arange(n, dtype=jnp.int32)
    full = lambda x, dt: jnp.full((n,), x, dt)  # noqa: E731
    return (logits, keys, counts, full(temperature, jnp.float32), full(top_p, jnp.float32),
            full(top_k, jnp.int32))


@pytest.mark.parametrize("mode,temperature,top_p,top_k", [
    ("greedy", 0.0, 1.0, -1), ("sample", 0.7, 1.0, -1), ("filter", 1.0, 0.8, 5),
    ("filter", 0.0, 0.8, 5), ("sample", 0.0, 1.0, -1)])
def test_static_mode_matches_general_sampler(mode, temperature, top_p, top_k):
    args = _inputs(temperature, top_p, top_k)
    np.testing.assert_array_equal(sample_tokens_static(*args, mode=mode), sample_tokens(*args))


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="sampling mode"):
        sample_tokens_static(*_inputs(0.0, 1.0, -1), mode="beam")
