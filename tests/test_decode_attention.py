"""Decode attention: the fused write-and-attend Pallas kernel (interpret mode on CPU)
against the XLA reference (RoPE, cache scatter, attention over all of T)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.engine import GenerationEngine, Request
from rstar_jax.engine.decode_attention import (decode_attention_xla, kernel_block_k,
                                               check_pallas_shapes, resolve_impl,
                                               write_and_attend, write_and_attend_pallas,
                                               write_and_attend_xla)
from rstar_jax.models.layers import rope_tables
from rstar_jax.models.sharding import make_mesh
from engine_fixtures import CFG, ENGINE, make_params, prompts

GARBAGE = 1e4   # stale cache entries at and past each slot's length: large, and must not matter


def make_inputs(seed, s, g, r, dh, t, lengths, active=None, dtype=jnp.float32, garbage=GARBAGE):
    """qkv [S, G, R+2, Dh], RoPE tables [S, Dh] at `lengths`, caches [S, G, T, Dh] whose
    positions >= lengths hold `garbage`, lengths [S], active [S]."""
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((s, g, r + 2, dh)).astype(np.float32)
    k = rng.standard_normal((s, g, t, dh)).astype(np.float32)
    v = rng.standard_normal((s, g, t, dh)).astype(np.float32)
    lengths = np.asarray(lengths, np.int32)
    stale = np.arange(t)[None, None, :, None] >= lengths[:, None, None, None]
    k = np.where(stale, garbage, k)
    v = np.where(stale, -garbage, v)
    cos, sin = rope_tables(jnp.asarray(lengths)[:, None], dh, 10000.0)
    active = np.ones(s, bool) if active is None else np.asarray(active, bool)
    return (jnp.asarray(qkv, dtype), cos[:, 0], sin[:, 0], jnp.asarray(k, dtype),
            jnp.asarray(v, dtype), jnp.asarray(lengths), jnp.asarray(active))


def check_against_reference(inputs, got, atol, rtol):
    attn, k, v = got
    want_attn, want_k, want_v = write_and_attend_xla(*inputs)
    active = np.asarray(inputs[-1])
    f32 = lambda x: np.asarray(x.astype(jnp.float32))  # noqa: E731
    # inactive slots' outputs are unused (and the reference attends to a stale key there)
    np.testing.assert_allclose(f32(attn)[active], f32(want_attn)[active], atol=atol, rtol=rtol)
    # the caches: the new key/value written at each active slot's length, nothing else
    np.testing.assert_allclose(f32(k), f32(want_k), atol=atol, rtol=rtol)
    np.testing.assert_allclose(f32(v), f32(want_v), atol=atol, rtol=rtol)


# (S, G, R, Dh, T, block_k, lengths, active): no cached key yet (length 0), the last free
# position (T - 1), exact multiples of block_k, ragged lengths, inactive slots; R = 6
# (1.5B's GQA group), 1, 7 (7B), 16.
SHAPES = [
    (6, 2, 6, 32, 128, 32, [0, 32, 127, 37, 96, 65], [1, 1, 1, 1, 0, 1]),
    (4, 3, 1, 32, 64, 16, [63, 1, 16, 33], None),
    (3, 4, 7, 64, 96, 32, [95, 31, 0], [1, 0, 1]),
    (2, 1, 16, 32, 48, 16, [47, 17], None),
    (3, 2, 2, 128, 256, 64, [200, 255, 1], None),
]


@pytest.mark.parametrize("s,g,r,dh,t,block_k,lengths,active", SHAPES)
def test_pallas_matches_reference_float32(s, g, r, dh, t, block_k, lengths, active):
    inputs = make_inputs(0, s, g, r, dh, t, lengths, active)
    got = write_and_attend_pallas(*inputs, block_k=block_k, interpret=True)
    assert got[0].shape == (s, g * r, dh) and got[0].dtype == jnp.float32
    check_against_reference(inputs, got, atol=1e-5, rtol=1e-5)
    # the stale tail does not matter: a clean tail gives the same attention
    clean = make_inputs(0, s, g, r, dh, t, lengths, active, garbage=0.0)
    again = write_and_attend_pallas(*clean, block_k=block_k, interpret=True)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(again[0]), atol=1e-6, rtol=1e-6)


def test_pallas_matches_reference_bfloat16():
    inputs = make_inputs(1, 5, 2, 6, 64, 128, [1, 64, 127, 77, 3], dtype=jnp.bfloat16)
    got = write_and_attend_pallas(*inputs, block_k=32, interpret=True)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    check_against_reference(inputs, got, atol=3e-2, rtol=3e-2)


def test_non_finite_stale_entries_are_ignored():
    qkv, cos, sin, k, v, n, act = make_inputs(2, 3, 2, 6, 32, 64, [5, 63, 40])
    clean = write_and_attend_xla(qkv, cos, sin, k, v, n, act)
    stale = jnp.arange(64)[None, None, :, None] >= n[:, None, None, None]
    got = write_and_attend_pallas(qkv, cos, sin, jnp.where(stale, jnp.nan, k),
                                  jnp.where(stale, jnp.inf, v), n, act, block_k=16, interpret=True)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(clean[0]), atol=1e-5, rtol=1e-5)


def test_dispatch_and_bucket():
    inputs = make_inputs(3, 4, 2, 6, 32, 128, [3, 20, 63, 50])
    full = write_and_attend_xla(*inputs)
    bucket = write_and_attend(*inputs, 64, "xla")          # reads only [0, 64)
    ragged = write_and_attend(*inputs, 64, "pallas", block_k=32)
    np.testing.assert_allclose(np.asarray(bucket[0]), np.asarray(full[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ragged[0]), np.asarray(full[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ragged[1]), np.asarray(full[1]), atol=1e-6)
    assert resolve_impl("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        resolve_impl("flash")


def test_without_the_triton_backend_auto_falls_back(monkeypatch):
    from rstar_jax.engine import decode_attention as da
    monkeypatch.setattr(da, "plgpu", None)
    assert da.resolve_impl("auto") == "xla"
    with pytest.raises(ValueError, match="lacks"):
        da.resolve_impl("pallas")


def test_xla_bucket_reads_only_its_keys():
    qkv, cos, sin, k, v, n, act = make_inputs(4, 2, 2, 3, 32, 64, [10, 30])
    q = qkv[:, :, :3].reshape(2, 6, 32)
    np.testing.assert_allclose(np.asarray(decode_attention_xla(q, k, v, n + 1, 32)),
                               np.asarray(decode_attention_xla(q, k, v, n + 1)), atol=1e-6)


def test_kernel_block_k_and_shape_checks():
    assert kernel_block_k(4096, 64) == 64
    assert kernel_block_k(96, 64) == 32          # halved until it divides T
    assert kernel_block_k(48, 256) == 16
    assert kernel_block_k(512, 100) == 64        # rounded down to a power of two
    with pytest.raises(ValueError, match="multiple of 16"):
        kernel_block_k(100, 64)
    with pytest.raises(ValueError, match="head dim >= 32"):
        check_pallas_shapes(16, 128, 32)
    with pytest.raises(ValueError, match="query heads per kv head"):
        check_pallas_shapes(64, 128, 32, group=20)


@pytest.mark.parametrize("dtype,s,g,r,dh,t,block_k", [
    (jnp.bfloat16, 256, 2, 6, 128, 1536, 32),    # Qwen2.5-Math-1.5B decode shapes
    (jnp.bfloat16, 128, 4, 7, 128, 4096, 64),    # 7B, the full 4096 cache
    (jnp.float32, 8, 2, 2, 32, 128, 16),         # the engine test model
])
def test_pallas_lowers_to_triton_for_cuda(dtype, s, g, r, dh, t, block_k):
    """The Pallas -> Triton lowering runs without a GPU (cross-platform export): shape and
    type errors of the kernel surface here, not first on the H100."""
    from jax import export
    qkv = jax.ShapeDtypeStruct((s, g, r + 2, dh), dtype)
    table = jax.ShapeDtypeStruct((s, dh), jnp.float32)
    cache = jax.ShapeDtypeStruct((s, g, t, dh), dtype)
    n = jax.ShapeDtypeStruct((s,), jnp.int32)
    act = jax.ShapeDtypeStruct((s,), jnp.bool_)
    f = jax.jit(lambda *a: write_and_attend_pallas(*a, block_k=block_k, interpret=False),
                donate_argnums=(3, 4))
    triton = "__gpu$xla.gpu.triton"
    exp = export.export(f, platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])(
        qkv, table, table, cache, cache, n, act)
    text = exp.mlir_module()
    assert triton in text and "decode_write_and_attend" in text
    assert [a.shape for a in exp.out_avals] == [(s, g * r, dh), (s, g, t, dh), (s, g, t, dh)]


# ---- the engine with the kernel: same greedy tokens as the XLA path --------------------

# The engine test model with head dim 32 (the kernel splits each head into rotated halves
# that feed Triton's dot, so it needs Dh >= 32); 2 kv heads for the tensor-parallel mesh.
PCFG = dataclasses.replace(CFG, hidden_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def params():
    return make_params(PCFG)


def tokens(results):
    return [[(c.token_ids, c.stop_reason) for c in r] for r in results]


def test_engine_pallas_gives_same_greedy_tokens_as_xla(params):
    ps = prompts(0, [5, 11, 3, 20, 9, 40])
    reqs = [Request(p, num_samples=2, max_new_tokens=12) for p in ps]
    xla = GenerationEngine(params, PCFG, **ENGINE).generate(reqs)
    engine = GenerationEngine(params, PCFG, decode_attention="pallas", decode_block_k=16, **ENGINE)
    assert engine.decode_attention == "pallas"
    assert tokens(engine.generate(reqs)) == tokens(xla)
    # prefix reuse and slot refills on top: still the same tokens
    more = [p + r[0].token_ids + [7] for p, r in zip(ps, xla)]
    reqs2 = [Request(p, num_samples=2, max_new_tokens=10) for p in more]
    assert (tokens(engine.generate(reqs2))
            == tokens(GenerationEngine(params, PCFG, **ENGINE).generate(reqs2)))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (the fake CPU mesh)")
def test_engine_pallas_sharded_over_a_mesh(params):
    ps = prompts(3, [5, 17, 9])
    reqs = [Request(p, num_samples=2, max_new_tokens=8) for p in ps]
    one = GenerationEngine(params, PCFG, **ENGINE).generate(reqs)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    engine = GenerationEngine(params, PCFG, mesh=mesh, decode_attention="pallas",
                              decode_block_k=32, **ENGINE)
    assert tokens(engine.generate(reqs)) == tokens(one)


def test_engine_rejects_unsupported_pallas_shapes(params):
    with pytest.raises(ValueError, match="multiple of 16"):
        GenerationEngine(params, PCFG, decode_attention="pallas", **{**ENGINE, "max_len": 100})
    with pytest.raises(ValueError, match="head dim >= 32"):      # CFG's head dim is 16
        GenerationEngine(make_params(), CFG, decode_attention="pallas", **ENGINE)
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        GenerationEngine(params, PCFG, decode_attention="triton", **ENGINE)
