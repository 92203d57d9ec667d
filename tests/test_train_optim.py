"""The optimizer: AdamW with the schedule's length in its state, equal to optax.adamw."""

import jax
import jax.numpy as jnp
import optax
import pytest

from rstar_jax.train.optim import decay_mask, learning_rate_at, make_optimizer

OPTIM = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
             max_grad_norm=1.0)


def optax_schedule(kind, lr, warmup, total):
    decay_steps = max(1, total - warmup)
    decay = {"linear": optax.linear_schedule(lr, 0.0, decay_steps),
             "cosine": optax.cosine_decay_schedule(lr, decay_steps),
             "constant": optax.constant_schedule(lr)}[kind]
    return decay if warmup == 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_matches_optax_adamw_with_the_same_schedule(kind, warmup):
    c = {**OPTIM, "schedule": kind, "warmup_steps": warmup}
    total = 12
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax_schedule(kind, 1e-3, warmup, total), b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.1, mask=decay_mask))
    ours, host_schedule = make_optimizer(c, total)
    params = {"embed": jnp.arange(12.0).reshape(3, 4) / 7, "q_bias": jnp.ones((4,))}
    p_ref, p_ours, s_ref, s_ours = params, params, ref.init(params), ours.init(params)
    for i in range(15):
        g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), params)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        assert host_schedule(i) == pytest.approx(float(optax_schedule(kind, 1e-3, warmup, total)(i)),
                                                  rel=1e-6)
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_ours)):
        assert jnp.max(jnp.abs(a - b)) <= 1e-7


def test_one_compiled_update_serves_every_schedule_length():
    c = {**OPTIM, "schedule": "linear", "warmup_steps": 2}
    params = {"embed": jnp.ones((3, 4))}
    texts = []
    for total in (10, 400):
        opt, _ = make_optimizer(c, total)
        state = opt.init(params)
        lowered = jax.jit(lambda g, s, p: opt.update(g, s, p)).lower(params, state, params)
        texts.append(lowered.as_text())
    assert texts[0] == texts[1]
    assert float(learning_rate_at(c, 5, 10)) != float(learning_rate_at(c, 5, 400))
