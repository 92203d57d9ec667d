"""AdamW with the Hugging Face Trainer's conventions, as the reference trains (§4.4, §4.5)."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import numpy as np
import optax

# Leaves that get weight decay. HF Trainer exempts biases and norm weights
# (`get_decay_parameter_names`); embeddings, LM head and all kernels decay.
_DECAYED = ("embed", "lm_head", "q_kernel", "k_kernel", "v_kernel", "o_kernel",
            "gate_kernel", "up_kernel", "down_kernel", "kernel")


def decay_mask(params: dict) -> dict:
    """True for every leaf that weight decay applies to (same tree as params)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key in _DECAYED, params)


def learning_rate_at(c: Mapping, count, total_steps, xp=None):
    """Learning rate at optimizer step `count` of `total_steps`: warmup, then linear (HF
    default), cosine or constant decay to 0; `xp` is numpy or jax.numpy.

    `total_steps` may be a traced value: the train step reads it from the optimizer
    state, so its compiled form is the same for every run length (rounds of a
    self-evolution run and the control reuse one compiled step).
    """
    import jax.numpy as jnp
    xp = xp or jnp
    lr, warmup, kind = float(c["learning_rate"]), int(c["warmup_steps"]), c["schedule"]
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"optim.schedule must be 'linear', 'cosine' or 'constant', got {kind!r}")
    count = xp.asarray(count, xp.float32)
    decay_steps = xp.maximum(xp.asarray(total_steps, xp.float32) - warmup, 1.0)
    after = xp.maximum(count - warmup, 0.0)
    if kind == "linear":
        decay = lr * (1.0 - xp.clip(after, 0.0, decay_steps) / decay_steps)
    elif kind == "cosine":
        decay = lr * 0.5 * (1.0 + xp.cos(xp.pi * xp.minimum(after, decay_steps) / decay_steps))
    else:
        decay = xp.full_like(count, lr)
    if warmup <= 0:
        return decay
    ramp = lr * xp.clip(count, 0.0, float(warmup)) / warmup
    return xp.where(count < warmup, ramp, decay)


class _ScheduleState(NamedTuple):
    count: jax.Array   # optimizer steps taken
    total: jax.Array   # steps of the whole schedule (traced in the train step)


def scale_by_schedule(c: Mapping, total_steps: int) -> optax.GradientTransformation:
    """Multiply updates by -learning_rate_at(count, total), total kept in the state."""
    import jax.numpy as jnp

    def init(params):
        del params
        return _ScheduleState(jnp.zeros((), jnp.int32), jnp.asarray(total_steps, jnp.int32))

    def update(updates, state, params=None):
        del params
        lr = learning_rate_at(c, state.count, state.total)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, _ScheduleState(state.count + 1, state.total)

    return optax.GradientTransformation(init, update)


def make_schedule(c: Mapping, total_steps: int):
    """Host-side learning rate per step (for logs): `learning_rate_at` in numpy."""
    learning_rate_at(c, 0, total_steps, np)   # validates the kind

    def schedule(step):
        return float(learning_rate_at(c, step, total_steps, np))
    return schedule


def make_optimizer(c: Mapping, total_steps: int):
    """(optimizer, schedule) from a config `optim` section.

    AdamW as optax.adamw (Adam moments, decoupled weight decay on `decay_mask` leaves,
    then the learning rate), with the schedule's length held in the optimizer state.
    Gradient-norm clipping comes first, as HF Trainer clips (max_grad_norm) before the
    optimizer step; 0 disables it.
    """
    schedule = make_schedule(c, total_steps)
    adamw = optax.chain(
        optax.scale_by_adam(b1=float(c["b1"]), b2=float(c["b2"]), eps=float(c["eps"])),
        optax.add_decayed_weights(float(c["weight_decay"]), mask=decay_mask),
        scale_by_schedule(c, total_steps))
    clip = float(c["max_grad_norm"])
    parts = ([optax.clip_by_global_norm(clip)] if clip > 0 else []) + [adamw]
    return optax.chain(*parts), schedule
