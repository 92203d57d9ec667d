"""PPM training: pairwise ranking of sibling steps (reference train/rm.py, rstar_reference §4.5)."""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rstar_jax import distributed
from rstar_jax.models.hf_io import save_pretrained
from rstar_jax.models.qwen2 import Qwen2PPM
from rstar_jax.models.sharding import mesh_from_config, param_shardings
from rstar_jax.train import data as train_data
from rstar_jax.train import steps
from rstar_jax.train import trainer
from rstar_jax.train.sft import pad_id_of, remat_of


def _loss_kwargs(config, cfg) -> dict:
    return dict(cfg=cfg, compute_dtype=config.compute_dtype, remat=remat_of(config),
                attention_impl=config.attention_impl,
                reduction=config.loss_reduction, sum_group_size=int(config.sum_group_size))


def make_evaluator(config, cfg, pairs: Sequence[train_data.PairExample], pad_id: int, mesh: Mesh):
    """`evaluate(params) -> {eval_accuracy, eval_loss, eval_pairs}` on held-out pairs.

    Accuracy is mean(r_pos > r_neg), the reference's eval metric; eval_loss is the
    weighted loss per pair. Dropout is off.
    """
    if not pairs:
        return None
    bs = int(config.eval_batch_size)
    plan = train_data.BatchPlan(len(pairs), bs, bs, 1, 0)
    chunks = [np.arange(i, min(i + bs, len(pairs))) for i in range(0, len(pairs), bs)]
    buckets = tuple(config.bucket_lengths)
    kw = {**_loss_kwargs(config, cfg), "reduction": "mean"}
    fn = b_sh = None

    def one(params, batch):
        num, aux = steps.ppm_loss(params, jax.tree.map(lambda x: x[0], batch), None, **kw)
        return {**aux, "numerator": num}

    def evaluate(params):
        nonlocal fn, b_sh
        sums = {}
        for rows in chunks:
            batch = train_data.pair_batch(pairs, rows, plan, buckets, pad_id)
            if fn is None:
                b_sh = steps.batch_shardings(batch, mesh)
                fn = jax.jit(one, in_shardings=(param_shardings(params, mesh), b_sh))
            for k, v in jax.device_get(fn(params, trainer.device_batch(batch, b_sh))).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {"eval_accuracy": sums["correct"] / sums["pairs"],
                "eval_loss": sums["numerator"] / sums["pairs"], "eval_pairs": sums["pairs"]}

    return evaluate


def ppm_task(config, cfg, rows: Sequence[dict], tokenizer, mesh: Mesh) -> trainer.Task:
    """Held-out split, tokenized pairs, batch plan, loss and evaluator as a trainer task."""
    pairs = train_data.tokenize_pairs(rows, tokenizer, int(config.max_length), vocab_size=cfg.vocab_size)
    train_idx, held_idx = train_data.split_holdout(len(pairs), float(config.holdout_fraction),
                                          int(config.holdout_seed))
    train = [pairs[i] for i in train_idx]
    held = [pairs[i] for i in held_idx]
    plan = train_data.BatchPlan(len(train), int(config.batch_size), int(config.micro_batch_size),
                                int(config.epochs), int(config.data_seed),
                                lengths=(tuple(max(len(e.pos), len(e.neg)) for e in train)
                                         if config.group_by_length else None))
    buckets, pad = tuple(config.bucket_lengths), pad_id_of(tokenizer)

    def loss_factory(constrain):
        return functools.partial(steps.ppm_loss, dropout=float(config.value_head_dropout),
                                 constrain=constrain, **_loss_kwargs(config, cfg))

    return trainer.Task(name="ppm", plan=plan,
                  make_batch=lambda step: train_data.pair_batch(train, plan.rows_of_step(step), plan,
                                                       buckets, pad),
                  loss_factory=loss_factory, data_fingerprint=train_data.fingerprint(rows),
                  evaluate=make_evaluator(config, cfg, held, pad, mesh))


def train_ppm(config, model: Qwen2PPM, rows: Sequence[dict], tokenizer,
              out_dir: str | os.PathLike, *, mesh: Mesh | None = None,
              progress: bool = True) -> Qwen2PPM:
    """Train the PPM on preference pairs; written (trunk + value head) to `out_dir/ppm`.

    `model` should start from this round's policy (`Qwen2PPM.from_policy` or
    `load_ppm(policy_dir, init_value_head_seed=...)`): the reference re-initialises the
    PPM from the policy each round (§4.5).
    """
    trainer.check_config(config)
    mesh = mesh or mesh_from_config(config.mesh)
    task = ppm_task(config, model.cfg, rows, tokenizer, mesh)
    params = trainer.fit(config, task, trainer.master_params(model, mesh), out_dir, mesh=mesh,
                   progress=progress)
    trainer.set_params(model, trainer.gathered_params(params), config.export_dtype)
    if jax.process_index() == 0:
        save_pretrained(model, os.path.join(os.fspath(out_dir), "ppm"), tokenizer=tokenizer)
    distributed.barrier(f"{out_dir}: ppm saved")
    return model
