"""AdamW with the Hugging Face Trainer's conventions, as the reference trains (§4.4, §4.5)."""

from __future__ import annotations

from typing import Mapping

import jax
import optax

# Leaves that get weight decay. HF Trainer exempts biases and norm weights
# (`get_decay_parameter_names`); embeddings, LM head and all kernels decay.
_DECAYED = ("embed", "lm_head", "q_kernel", "k_kernel", "v_kernel", "o_kernel",
            "gate_kernel", "up_kernel", "down_kernel", "kernel")


def decay_mask(params: dict) -> dict:
    """True for every leaf that weight decay applies to (same tree as params)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key in _DECAYED, params)


def make_schedule(c: Mapping, total_steps: int) -> optax.Schedule:
    """Learning rate per optimizer step: warmup then linear (HF default) or cosine decay to 0."""
    lr, warmup, kind = float(c["learning_rate"]), int(c["warmup_steps"]), c["schedule"]
    decay_steps = max(1, total_steps - warmup)
    if kind == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.schedule must be 'linear', 'cosine' or 'constant', got {kind!r}")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(c: Mapping, total_steps: int) -> tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
    """(optimizer, schedule) from a config `optim` section.

    Gradient-norm clipping comes first, as HF Trainer clips (max_grad_norm) before the
    optimizer step; 0 disables it.
    """
    schedule = make_schedule(c, total_steps)
    adamw = optax.adamw(schedule, b1=float(c["b1"]), b2=float(c["b2"]), eps=float(c["eps"]),
                        weight_decay=float(c["weight_decay"]), mask=decay_mask)
    clip = float(c["max_grad_norm"])
    parts = ([optax.clip_by_global_norm(clip)] if clip > 0 else []) + [adamw]
    return optax.chain(*parts), schedule
