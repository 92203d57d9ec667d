"""Our Qwen2 logits against PyTorch transformers on tiny random checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import make_hf_checkpoint, random_batch, torch, torch_logits
from rstar_jax.models import load_pretrained


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("shard_size", [None, "60KB"], ids=["single_file", "sharded_files"])
def test_fp32_logits_match_transformers(tmp_path, tie, shard_size):
    ref = make_hf_checkpoint(str(tmp_path), tie=tie, max_shard_size=shard_size)
    if shard_size:
        assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_pretrained(tmp_path, dtype="float32")
    ids, mask = random_batch(3, 17, ref.config.vocab_size)
    expected = torch_logits(ref, ids, mask)
    ours = np.asarray(model.logits(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)  # padded query positions are not defined outputs
    assert ours.shape == expected.shape
    assert np.abs(ours - expected)[real].max() <= 1e-4


def test_unpadded_logits_match_without_mask_and_non_default_rope_theta(tmp_path):
    # transformers 5 saves rope_theta under rope_parameters: a reader that misses it would
    # silently use 10000 and fail here.
    ref = make_hf_checkpoint(str(tmp_path), tie=False, seed=3, rope_theta=500.0)
    model = load_pretrained(tmp_path, dtype="float32")
    ids, _ = random_batch(2, 9, ref.config.vocab_size, seed=1)
    assert np.abs(np.asarray(model.logits(jnp.asarray(ids))) - torch_logits(ref, ids)).max() <= 1e-4


def test_bf16_logits_within_bf16_tolerance(tmp_path):
    """bf16 ours vs fp32 truth must be about as close as bf16 transformers vs fp32 truth."""
    ref = make_hf_checkpoint(str(tmp_path), tie=False, seed=1)
    ids, mask = random_batch(2, 16, ref.config.vocab_size, seed=2)
    real = mask.astype(bool)
    truth = torch_logits(ref, ids, mask)
    torch_bf16 = torch_logits(ref.to(torch.bfloat16), ids, mask)
    ours = np.asarray(load_pretrained(tmp_path, dtype="bfloat16").logits(
        jnp.asarray(ids), jnp.asarray(mask)))
    torch_err = np.abs(torch_bf16 - truth)[real].max()
    our_err = np.abs(ours - truth)[real].max()
    assert our_err <= 2.0 * torch_err + 1e-3, (our_err, torch_err)
    assert our_err < 0.05 * np.abs(truth).max()


def test_layer_stack_is_scanned_so_program_size_does_not_grow_with_depth():
    import jax
    from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, forward_logits, params_of

    def program_size(layers):
        cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
                          num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1)
        params = params_of(Qwen2ForCausalLM(cfg))
        ids = jnp.zeros((1, 4), jnp.int32)
        return len(jax.jit(lambda p, x: forward_logits(p, cfg, x)).lower(params, ids).as_text())

    small, deep = program_size(2), program_size(12)
    assert abs(deep - small) < 0.02 * small
