"""Policy SFT on the selected traces (reference train/train_SFT.py, rstar_reference §4.4)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

import jax
from jax.sharding import Mesh

from rstar_jax import distributed
from rstar_jax.models.hf_io import save_pretrained
from rstar_jax.models.qwen2 import Qwen2ForCausalLM
from rstar_jax.models.sharding import mesh_from_config
from rstar_jax.train import data as train_data
from rstar_jax.train import steps
from rstar_jax.train import trainer


def remat_of(config):
    """False, or the remat policy name ("full" / "dots") when config.remat is on."""
    return config.remat_policy if config.remat else False


def pad_id_of(tokenizer) -> int:
    """Padding id (its value never matters: padded positions are masked out)."""
    pid = tokenizer.pad_token_id
    return int(pid if pid is not None else tokenizer.eos_token_id)


def sft_task(config, cfg, rows: Sequence[dict], tokenizer) -> trainer.Task:
    """Tokenized rows, their batch plan and the SFT loss, as a trainer task."""
    examples, dropped = train_data.tokenize_sft(rows, tokenizer, int(config.max_length),
                                       vocab_size=cfg.vocab_size)
    if dropped:
        logging.warning("SFT: %d of %d rows have no response token within max_length=%d; "
                        "dropped", dropped, len(rows), config.max_length)
    plan = train_data.BatchPlan(len(examples), int(config.batch_size), int(config.micro_batch_size),
                                int(config.epochs), int(config.data_seed),
                                lengths=(tuple(len(e.ids) for e in examples)
                                         if config.group_by_length else None))
    buckets, pad = tuple(config.bucket_lengths), pad_id_of(tokenizer)

    def loss_factory(constrain):
        return functools.partial(steps.sft_loss, cfg=cfg, compute_dtype=config.compute_dtype,
                                 remat=remat_of(config), constrain=constrain,
                                 attention_impl=config.attention_impl)

    return trainer.Task(name="sft", plan=plan,
                  make_batch=lambda step: train_data.sft_batch(examples, plan.rows_of_step(step), plan,
                                                      buckets, pad),
                  loss_factory=loss_factory, data_fingerprint=train_data.fingerprint(rows))


def train_sft(config, model: Qwen2ForCausalLM, rows: Sequence[dict], tokenizer,
              out_dir: str | os.PathLike, *, mesh: Mesh | None = None,
              progress: bool = True) -> Qwen2ForCausalLM:
    """Fine-tune `model` on SFT rows; the trained policy is also written (HF layout) to
    `out_dir/policy` in `config.export_dtype`. Reruns resume from `out_dir/checkpoints`."""
    trainer.check_config(config)
    mesh = mesh or mesh_from_config(config.mesh)
    task = sft_task(config, model.cfg, rows, tokenizer)
    params = trainer.fit(config, task, trainer.master_params(model, mesh), out_dir, mesh=mesh,
                   progress=progress)
    trainer.set_params(model, trainer.gathered_params(params), config.export_dtype)
    if jax.process_index() == 0:
        save_pretrained(model, os.path.join(os.fspath(out_dir), "policy"), tokenizer=tokenizer)
    distributed.barrier(f"{out_dir}: policy saved")
    return model
