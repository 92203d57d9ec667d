"""save_pretrained/load_pretrained round trips, PPM export into transformers, bad checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_fixtures import edit_config, make_hf_checkpoint, random_batch, torch, transformers
from rstar_jax.models import (CheckpointError, Qwen2PPM, load_ppm, load_pretrained, params_of,
                              save_pretrained)


def _assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_load_round_trip_is_bit_exact(tmp_path, dtype, tie):
    make_hf_checkpoint(str(tmp_path / "src"), tie=tie)
    model = load_pretrained(tmp_path / "src", dtype=dtype)
    save_pretrained(model, tmp_path / "out")
    again = load_pretrained(tmp_path / "out", dtype=dtype)
    _assert_trees_equal(params_of(model), params_of(again))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] == tie
    assert cfg["torch_dtype"] == dtype


def test_sharded_save_writes_index_and_round_trips(tmp_path):
    make_hf_checkpoint(str(tmp_path / "src"), tie=False)
    model = load_pretrained(tmp_path / "src", dtype="float32")
    save_pretrained(model, tmp_path / "out", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "out" / "model.safetensors").exists()
    _assert_trees_equal(params_of(model), params_of(load_pretrained(tmp_path / "out", dtype="float32")))


def test_saved_policy_opens_in_transformers_with_same_logits(tmp_path):
    make_hf_checkpoint(str(tmp_path / "src"), tie=True, seed=2)
    model = load_pretrained(tmp_path / "src", dtype="float32")
    save_pretrained(model, tmp_path / "out")
    ref = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids, mask = random_batch(2, 11, 128, seed=3)
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(model.logits(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - expected)[mask.astype(bool)].max() <= 1e-4


def test_saved_ppm_opens_in_transformers_and_value_head_reproduces_scores(tmp_path):
    make_hf_checkpoint(str(tmp_path / "src"), tie=False, seed=4)
    policy = load_pretrained(tmp_path / "src", dtype="float32")
    ppm = Qwen2PPM.from_policy(policy, seed=3)
    # A non-trivial head, so the check cannot pass on the near-zero reference init.
    ppm.v_head.kernel.set_value(jax.random.normal(jax.random.key(0), ppm.v_head.kernel.shape))
    ppm.v_head.bias.set_value(jnp.array([0.3]))
    save_pretrained(ppm, tmp_path / "ppm")

    ids, mask = random_batch(3, 13, 128, seed=5)
    ours = np.asarray(ppm.scores(jnp.asarray(ids), jnp.asarray(mask)))

    trunk = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "ppm")).eval()
    head = load_file(str(tmp_path / "ppm" / "value_head.safetensors"))
    assert head["v_head.weight"].shape == (1, 64) and head["v_head.bias"].shape == (1,)
    linear = torch.nn.Linear(64, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(head["v_head.weight"]))
        linear.bias.copy_(torch.tensor(head["v_head.bias"]))
        hidden = trunk(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       output_hidden_states=True).hidden_states[-1]
        last = torch.tensor(mask.sum(-1) - 1)
        v = linear(hidden[torch.arange(3), last])[:, 0]
        expected = torch.tanh(v / 5).numpy()
    assert np.abs(ours - expected).max() <= 1e-5
    _assert_trees_equal(params_of(ppm), params_of(load_ppm(tmp_path / "ppm", dtype="float32")))


def test_missing_config_json_fails_fast(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_unsupported_model_type_fails_fast(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    edit_config(str(tmp_path), model_type="llama")
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        load_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    f = str(tmp_path / "model.safetensors")
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    edit_config(str(tmp_path), intermediate_size=80)
    with pytest.raises(CheckpointError, match=r"gate_proj.weight' has shape \(96, 64\).*\(80, 64\)"):
        load_pretrained(tmp_path)


def test_no_weights_file_is_named(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_pretrained(tmp_path)


def test_policy_directory_is_not_silently_a_ppm(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=True)
    with pytest.raises(CheckpointError, match="value_head.safetensors"):
        load_ppm(tmp_path)
