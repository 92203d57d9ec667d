"""Jitted forward passes with explicit input/output shardings over a mesh."""

from __future__ import annotations

import functools
from typing import Mapping

import jax
from jax.sharding import Mesh, NamedSharding

from rstar_jax.models import qwen2
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.sharding import (activation_constraint, batch_sharding, logical_to_spec,
                                       param_shardings)


def jit_logits(cfg: Qwen2Config, params: dict, mesh: Mesh, rules: Mapping | None = None,
               batch_size: int | None = None):
    """`f(params, input_ids[B,T], attention_mask[B,T]) -> logits[B,T,V]` jitted on `mesh`.

    Params must already be placed with `param_shardings` (load_pretrained(mesh=...) does).
    """
    p_shard = param_shardings(params, mesh, rules)
    x_shard = batch_sharding(mesh, 2, rules, batch_size)
    out_spec = logical_to_spec(("batch", "length", "act_vocab"),
                               None if batch_size is None else (batch_size, 1, cfg.vocab_size),
                               mesh, rules)
    fn = functools.partial(qwen2.forward_logits, cfg=cfg,
                           constrain=activation_constraint(mesh, rules))
    return jax.jit(lambda p, ids, mask: fn(p, input_ids=ids, attention_mask=mask),
                   in_shardings=(p_shard, x_shard, x_shard),
                   out_shardings=NamedSharding(mesh, out_spec))


def jit_scores(cfg: Qwen2Config, params: dict, mesh: Mesh, rules: Mapping | None = None,
               batch_size: int | None = None):
    """`f(ppm_params, input_ids[B,T], attention_mask[B,T]) -> scores[B]` jitted on `mesh`."""
    p_shard = param_shardings(params, mesh, rules)
    x_shard = batch_sharding(mesh, 2, rules, batch_size)
    return jax.jit(lambda p, ids, mask: qwen2.forward_scores(p, cfg, ids, mask),
                   in_shardings=(p_shard, x_shard, x_shard),
                   out_shardings=batch_sharding(mesh, 1, rules, batch_size))
