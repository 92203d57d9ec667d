"""A train step on an 8-device (data, fsdp, tensor) mesh equals the single-device step."""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, make_mesh, params_of
from rstar_jax.models.sharding import shard_params
from rstar_jax.train import steps as S
from rstar_jax.train.optim import make_optimizer

CFG = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
OPTIM = dict(learning_rate=1e-2, schedule="linear", warmup_steps=0, weight_decay=0.1,
             b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0)


def sft_batch(rng, a=2, m=4, t=16):
    lengths = rng.integers(6, t + 1, (a, m))
    mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
    return {"input_ids": rng.integers(0, CFG.vocab_size, (a, m, t)).astype(np.int32),
            "attention_mask": mask, "loss_mask": mask * (np.arange(t) >= 3)}


def ppm_batch(rng, a=2, m=4, t=16):
    out = {}
    for side in ("pos", "neg"):
        lengths = rng.integers(4, t + 1, (a, m))
        out[f"{side}_mask"] = (np.arange(t) < lengths[..., None]).astype(np.int32)
        out[f"{side}_ids"] = rng.integers(0, CFG.vocab_size, (a, m, t)).astype(np.int32)
    out["weight"] = rng.choice([0.25, 0.5, 1.0], (a, m)).astype(np.float32)
    out["valid"] = np.ones((a, m), np.float32)
    return out


def run_steps(mesh, params, loss_factory, batches, optimizer=None):
    optimizer = optimizer or make_optimizer(OPTIM, total_steps=10)[0]
    init, abstract, _ = S.jit_init_state(optimizer, jax.eval_shape(lambda: params), mesh)
    state = init(shard_params(params, mesh))
    step, st_sh, _ = S.jit_train_step(loss_factory, optimizer, abstract, batches[0], mesh, seed=3)
    history = []
    for b in batches:
        state, metrics = step(state, b)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history, st_sh


@pytest.mark.parametrize("kind", ["sft", "ppm"])
def test_sharded_step_equals_single_device_step(kind):
    rng = np.random.default_rng(0)
    if kind == "sft":
        params = params_of(Qwen2ForCausalLM(CFG, rngs=nnx.Rngs(0)))
        batches = [sft_batch(rng) for _ in range(2)]
        factory = lambda c: functools.partial(S.sft_loss, cfg=CFG, constrain=c)  # noqa: E731
    else:
        params = params_of(Qwen2PPM(CFG, rngs=nnx.Rngs(0)))
        batches = [ppm_batch(rng) for _ in range(2)]
        factory = lambda c: functools.partial(S.ppm_loss, cfg=CFG, dropout=0.1,  # noqa: E731
                                              sum_group_size=2, constrain=c)
    one = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    eight = make_mesh(2, 2, 2)
    # SGD with lr 1: the parameter change is the accumulated, normalised gradient itself,
    # so this compares gradients through the whole step (two steps, second from moved params).
    sgd = optax.sgd(1.0)
    single, h1, _ = run_steps(one, params, factory, batches, sgd)
    sharded, h8, st_sh = run_steps(eight, params, factory, batches, sgd)
    for a, b in zip(h1, h8):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    assert_trees_close(single["params"], sharded["params"], atol=1e-6, rtol=1e-5)
    # The real optimizer (clipping + AdamW with decay mask) at the paper's lr, one step.
    # Adam's first update is ~lr * g/|g|, which for gradients near 0 magnifies round-off
    # differences to a fraction of lr; 1e-7 is ~1.5% of one update (and far below 1e-5).
    adamw = make_optimizer({**OPTIM, "learning_rate": 7e-6}, total_steps=10)[0]
    single, _, _ = run_steps(one, params, factory, batches[:1], adamw)
    sharded, _, st_sh = run_steps(eight, params, factory, batches[:1], adamw)
    if kind == "ppm":
        # The value-head bias cancels in r_pos - r_neg: its gradient is 0 up to round-off,
        # which Adam turns into +-lr. Checked to move by at most one update instead.
        for tree in (single, sharded):
            bias = tree["params"]["v_head"].pop("bias")
            np.testing.assert_allclose(bias, params["v_head"]["bias"], rtol=0, atol=7e-6 * 1.01)
    assert_trees_close(single["params"], sharded["params"], atol=1e-7)
    assert_trees_close(single["opt_state"], sharded["opt_state"], atol=1e-6)
    # The big matrices really are split over fsdp and tensor, Adam moments likewise.
    embed = (st_sh["params"]["backbone"] if kind == "ppm" else st_sh["params"])["embed"]
    assert embed.spec == jax.P("tensor", "fsdp")
    adam_mu = st_sh["opt_state"][1][0].mu
    assert jax.tree.map(lambda s: s.spec, adam_mu) == jax.tree.map(lambda s: s.spec,
                                                                  st_sh["params"])


def assert_trees_close(a, b, atol, rtol=0.0):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_micro_batch_split_does_not_change_the_step():
    """Loss normalised by global response tokens: [2, 4] and [4, 2] splits are one batch."""
    rng = np.random.default_rng(1)
    params = params_of(Qwen2ForCausalLM(CFG, rngs=nnx.Rngs(0)))
    batch = sft_batch(rng)
    factory = lambda c: functools.partial(S.sft_loss, cfg=CFG, constrain=c)  # noqa: E731
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    a, h_a, _ = run_steps(mesh, params, factory, [batch], optax.sgd(1.0))
    b, h_b, _ = run_steps(mesh, params, factory,
                          [{k: v.reshape(4, 2, -1) for k, v in batch.items()}], optax.sgd(1.0))
    np.testing.assert_allclose(h_a[0]["loss"], h_b[0]["loss"], rtol=1e-6)
    assert_trees_close(a["params"], b["params"], atol=1e-6)
