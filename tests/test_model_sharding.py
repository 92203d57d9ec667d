"""Sharded forward passes on 8 fake CPU devices equal the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import make_hf_checkpoint, random_batch
from rstar_jax.models import (jit_logits, jit_scores, load_ppm, load_pretrained, make_mesh,
                              params_of)

MESHES = {"pure_data": (8, 1, 1), "pure_tensor": (1, 1, 8), "pure_fsdp": (1, 8, 1),
          "mixed": (2, 2, 2)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    make_hf_checkpoint(str(path), tie=False, num_key_value_heads=8, seed=5)
    return path


def test_eight_devices_available():
    assert jax.device_count() == 8


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_logits_equal_single_device(checkpoint, mesh_name):
    data, fsdp, tensor = MESHES[mesh_name]
    ids, mask = random_batch(8, 12, 128, seed=4)
    single = load_pretrained(checkpoint, dtype="float32")
    expected = np.asarray(single.logits(jnp.asarray(ids), jnp.asarray(mask)))

    mesh = make_mesh(data, fsdp, tensor)
    model = load_pretrained(checkpoint, dtype="float32", mesh=mesh)
    params = params_of(model)
    q = params["layers"]["q_kernel"]  # [L, D, H, Dh]
    if tensor > 1:
        assert q.sharding.spec[2] == "tensor"
        assert q.addressable_shards[0].data.shape[2] == q.shape[2] // tensor
        assert params["layers"]["gate_kernel"].sharding.spec[2] == "tensor"
        assert params["lm_head"].sharding.spec[1] == "tensor"
    if fsdp > 1:
        assert q.sharding.spec[1] == "fsdp"
        assert q.addressable_shards[0].data.shape[1] == q.shape[1] // fsdp
    if data > 1 and fsdp == 1 and tensor == 1:
        assert q.sharding.is_fully_replicated
    forward = jit_logits(model.cfg, params, mesh, batch_size=8)
    out = forward(params, jnp.asarray(ids), jnp.asarray(mask))
    if data * fsdp > 1:
        assert out.addressable_shards[0].data.shape[0] == 8 // (data * fsdp)
    real = mask.astype(bool)
    assert np.abs(np.asarray(out) - expected)[real].max() <= 1e-5


def test_sharded_ppm_scores_equal_single_device(checkpoint):
    ids, mask = random_batch(8, 10, 128, seed=6)
    single = load_ppm(checkpoint, dtype="float32", init_value_head_seed=1)
    expected = np.asarray(single.scores(jnp.asarray(ids), jnp.asarray(mask)))
    mesh = make_mesh(2, 2, 2)
    model = load_ppm(checkpoint, dtype="float32", mesh=mesh, init_value_head_seed=1)
    params = params_of(model)
    assert params["backbone"]["layers"]["q_kernel"].sharding.spec[2] == "tensor"
    out = jit_scores(model.cfg, params, mesh, batch_size=8)(params, jnp.asarray(ids),
                                                             jnp.asarray(mask))
    assert np.abs(np.asarray(out) - expected).max() <= 1e-5


def test_mesh_rejects_wrong_device_count():
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(3, 2, 2)
