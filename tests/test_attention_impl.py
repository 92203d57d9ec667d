"""Attention kernels and remat policies give the same numbers as the plain XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, forward_logits, params_of
from rstar_jax.models.layers import resolve_attention_impl

CFG = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def _batch():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 96, (3, 24)), jnp.int32)
    lengths = np.array([24, 17, 9])
    mask = jnp.asarray(np.arange(24)[None] < lengths[:, None], jnp.int32)  # right padding
    return ids, mask


def _loss(params, ids, mask, **kw):
    logits = forward_logits(params, CFG, ids, mask, **kw)
    return jnp.sum(jax.nn.log_softmax(logits) * mask[..., None]) / 1000.0


def test_auto_attention_is_the_xla_fallback_off_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("checks the CPU fallback choice")
    assert resolve_attention_impl("auto", jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        resolve_attention_impl("flash", jnp.float32)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_do_not_change_loss_or_gradients(remat):
    params = params_of(Qwen2ForCausalLM(CFG))
    ids, mask = _batch()
    ref_loss, ref_grads = jax.value_and_grad(_loss)(params, ids, mask)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(p, ids, mask, remat=remat)))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_flash_attention_matches_xla_on_right_padded_batches():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params_of(Qwen2ForCausalLM(CFG)))
    ids, mask = _batch()
    real = np.asarray(mask).astype(bool)
    xla = np.asarray(forward_logits(params, CFG, ids, mask, attention_impl="xla"))
    cudnn = np.asarray(forward_logits(params, CFG, ids, mask, attention_impl="cudnn"))
    assert np.abs(xla - cudnn)[real].max() < 0.05 * np.abs(xla).max()
    g_xla = jax.grad(_loss)(params, ids, mask, attention_impl="xla")
    g_cudnn = jax.grad(_loss)(params, ids, mask, attention_impl="cudnn")
    for a, b in zip(jax.tree.leaves(g_xla), jax.tree.leaves(g_cudnn)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 0.05 * np.abs(a).max() + 1e-6
