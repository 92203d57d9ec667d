"""Decode attention: the ragged Pallas kernel (interpret mode on CPU) against the XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.engine import GenerationEngine, Request
from rstar_jax.engine.decode_attention import (decode_attention, decode_attention_pallas,
                                               decode_attention_xla, kernel_block_k, resolve_impl)
from rstar_jax.models.sharding import make_mesh
from engine_fixtures import CFG, ENGINE, make_params, prompts

GARBAGE = 1e4   # stale cache entries past valid_len: large, and must not matter


def make_inputs(seed, s, g, r, dh, t, lengths, dtype=jnp.float32, garbage=GARBAGE):
    """q [S, G*R, Dh], caches [S, G, T, Dh] whose positions >= lengths hold `garbage`."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((s, g * r, dh)).astype(np.float32)
    k = rng.standard_normal((s, g, t, dh)).astype(np.float32)
    v = rng.standard_normal((s, g, t, dh)).astype(np.float32)
    lengths = np.asarray(lengths, np.int32)
    stale = np.arange(t)[None, None, :, None] >= lengths[:, None, None, None]
    k = np.where(stale, garbage, k)
    v = np.where(stale, -garbage, v)
    return (jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype),
            jnp.asarray(lengths))


# (S, G, R, Dh, T, block_k, lengths): length 1, exact multiples of block_k, full T, and
# ragged lengths in between; R = 6 (1.5B's GQA group), R = 1, R = 7 (7B), R = 16.
SHAPES = [
    (6, 2, 6, 32, 128, 32, [1, 32, 128, 37, 96, 65]),
    (4, 3, 1, 16, 64, 16, [64, 1, 16, 33]),
    (3, 4, 7, 64, 96, 32, [96, 31, 64]),
    (2, 1, 16, 16, 48, 16, [48, 17]),
    (3, 2, 2, 128, 256, 64, [200, 256, 1]),
]


@pytest.mark.parametrize("s,g,r,dh,t,block_k,lengths", SHAPES)
def test_pallas_matches_xla_float32(s, g, r, dh, t, block_k, lengths):
    q, k, v, n = make_inputs(0, s, g, r, dh, t, lengths)
    got = decode_attention_pallas(q, k, v, n, block_k=block_k, interpret=True)
    want = decode_attention_xla(q, k, v, n)
    assert got.shape == (s, g * r, dh) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # the stale tail does not matter: the same inputs with a clean tail give the same result
    clean = make_inputs(0, s, g, r, dh, t, lengths, garbage=0.0)
    again = decode_attention_pallas(*clean, block_k=block_k, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(again), atol=1e-6, rtol=1e-6)


def test_pallas_matches_xla_bfloat16():
    s, g, r, dh, t = 5, 2, 6, 64, 128
    q, k, v, n = make_inputs(1, s, g, r, dh, t, [1, 64, 128, 77, 3], dtype=jnp.bfloat16)
    got = decode_attention_pallas(q, k, v, n, block_k=32, interpret=True)
    assert got.dtype == jnp.bfloat16
    # reference in float32 on the same bf16 values
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    want = decode_attention_xla(f32(q), f32(k), f32(v), n)
    np.testing.assert_allclose(np.asarray(f32(got)), np.asarray(want), atol=3e-2, rtol=3e-2)


def test_non_finite_stale_entries_are_ignored():
    q, k, v, n = make_inputs(2, 3, 2, 6, 32, 64, [5, 64, 40])
    clean = decode_attention_xla(q, k, v, n)
    stale = jnp.arange(64)[None, None, :, None] >= n[:, None, None, None]
    k_bad = jnp.where(stale, jnp.nan, k)
    v_bad = jnp.where(stale, jnp.inf, v)
    got = decode_attention_pallas(q, k_bad, v_bad, n, block_k=16, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(clean), atol=1e-5, rtol=1e-5)


def test_dispatch_and_bucket():
    q, k, v, n = make_inputs(3, 4, 2, 6, 32, 128, [3, 20, 64, 50])
    full = decode_attention_xla(q, k, v, n)
    bucket = decode_attention(q, k, v, n, 64, "xla")          # reads only [0, 64)
    ragged = decode_attention(q, k, v, n, 64, "pallas", block_k=32)
    np.testing.assert_allclose(np.asarray(bucket), np.asarray(full), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ragged), np.asarray(full), atol=1e-5)
    assert resolve_impl("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        resolve_impl("flash")


def test_kernel_block_k():
    assert kernel_block_k(4096, 64) == 64
    assert kernel_block_k(96, 64) == 32          # halved until it divides T
    assert kernel_block_k(48, 256) == 16
    assert kernel_block_k(512, 100) == 64        # rounded down to a power of two
    with pytest.raises(ValueError, match="multiple of 16"):
        kernel_block_k(100, 64)


@pytest.mark.parametrize("dtype,s,g,r,dh,t,block_k", [
    (jnp.bfloat16, 256, 2, 6, 128, 1536, 64),    # Qwen2.5-Math-1.5B decode shapes
    (jnp.bfloat16, 128, 4, 7, 128, 4096, 128),   # 7B, the full 4096 cache
    (jnp.float32, 8, 2, 2, 16, 128, 16),         # the tiny test model
])
def test_pallas_lowers_to_triton_for_cuda(dtype, s, g, r, dh, t, block_k):
    """The Pallas -> Triton lowering runs without a GPU (cross-platform export): shape and
    type errors of the kernel surface here, not first on the H100."""
    from jax import export
    q = jax.ShapeDtypeStruct((s, g * r, dh), dtype)
    cache = jax.ShapeDtypeStruct((s, g, t, dh), dtype)
    n = jax.ShapeDtypeStruct((s,), jnp.int32)
    f = jax.jit(lambda *a: decode_attention_pallas(*a, block_k=block_k, interpret=False))
    triton = "__gpu$xla.gpu.triton"
    exp = export.export(f, platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])(
        q, cache, cache, n)
    text = exp.mlir_module()
    assert triton in text and "ragged_decode_attention" in text
    assert exp.out_avals[0].shape == (s, g * r, dh)


# ---- the engine with the kernel: same greedy tokens as the XLA path --------------------



@pytest.fixture(scope="module")
def params():
    return make_params()


def tokens(results):
    return [[(c.token_ids, c.stop_reason) for c in r] for r in results]


def test_engine_pallas_gives_same_greedy_tokens_as_xla(params):
    ps = prompts(0, [5, 11, 3, 20, 9, 40])
    reqs = [Request(p, num_samples=2, max_new_tokens=12) for p in ps]
    xla = GenerationEngine(params, CFG, **ENGINE).generate(reqs)
    engine = GenerationEngine(params, CFG, decode_attention="pallas", decode_block_k=16, **ENGINE)
    assert engine.decode_attention == "pallas"
    assert tokens(engine.generate(reqs)) == tokens(xla)
    # prefix reuse and slot refills on top: still the same tokens
    more = [p + r[0].token_ids + [7] for p, r in zip(ps, xla)]
    reqs2 = [Request(p, num_samples=2, max_new_tokens=10) for p in more]
    assert (tokens(engine.generate(reqs2))
            == tokens(GenerationEngine(params, CFG, **ENGINE).generate(reqs2)))


def test_engine_pallas_sharded_over_a_mesh(params):
    ps = prompts(3, [5, 17, 9])
    reqs = [Request(p, num_samples=2, max_new_tokens=8) for p in ps]
    one = GenerationEngine(params, CFG, **ENGINE).generate(reqs)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    engine = GenerationEngine(params, CFG, mesh=mesh, decode_attention="pallas",
                              decode_block_k=32, **ENGINE)
    assert tokens(engine.generate(reqs)) == tokens(one)


def test_engine_rejects_unsupported_pallas_shapes(params):
    with pytest.raises(ValueError, match="multiple of 16"):
        GenerationEngine(params, CFG, decode_attention="pallas", **{**ENGINE, "max_len": 100})
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        GenerationEngine(params, CFG, decode_attention="triton", **ENGINE)
