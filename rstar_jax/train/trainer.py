"""The host loop shared by SFT and PPM training: resume, step, log, evaluate, checkpoint."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rstar_jax import distributed
from rstar_jax.models.sharding import mesh_from_config
from rstar_jax.train import steps
from rstar_jax.train.checkpoint import Checkpoints
from rstar_jax.train.data import BatchPlan
from rstar_jax.train.metrics import MetricsLog
from rstar_jax.train.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between SFT and PPM training; the loop below is the same for both."""

    name: str                                   # "sft" or "ppm": names files and metrics
    plan: BatchPlan
    make_batch: Callable[[int], dict]           # step -> global batch of [A, M, ...] arrays
    loss_factory: Callable[..., steps.LossFn]       # constrain -> loss_fn
    data_fingerprint: str
    evaluate: Callable[[dict], dict] | None = None   # params -> metrics (held-out set)


def total_steps_of(config, plan: BatchPlan) -> int:
    """All epochs' steps, or `max_steps` when set (> 0) for short runs and benchmarks."""
    return min(plan.total_steps, config.max_steps) if config.max_steps > 0 else plan.total_steps


def fit(config, task: Task, params: dict, out_dir: str | os.PathLike, *,
        mesh: Mesh | None = None, progress: bool = True) -> dict:
    """Train `params` (fp32 masters) on `task`; returns the final params (on the mesh).

    Resumes from the latest checkpoint in `out_dir/checkpoints` when there is one; a
    checkpoint from other data or another schedule is refused. Metrics go to
    `out_dir/metrics_<task>.jsonl`.
    """
    out_dir = os.fspath(out_dir)
    mesh = mesh or mesh_from_config(config.mesh)
    plan = task.plan
    # The schedule always spans the full run, so max_steps only stops it early.
    optimizer, schedule = make_optimizer(config.optim, plan.total_steps)
    last = total_steps_of(config, plan)
    abstract_params = jax.eval_shape(lambda: params)
    init_fn, abstract_state, st_sh = steps.jit_init_state(optimizer, abstract_params, mesh)

    # Every process runs this loop in lock-step on one global mesh; only process 0
    # writes the metrics file and shows a bar (orbax coordinates the checkpoints).
    main_process = jax.process_index() == 0
    ckpts = Checkpoints(os.path.join(out_dir, "checkpoints"),
                        save_every=int(config.checkpoint.save_every),
                        keep=int(config.checkpoint.keep),
                        async_save=bool(config.checkpoint.async_save))
    log = MetricsLog(os.path.join(out_dir, f"metrics_{task.name}.jsonl"),
                     tensorboard_dir=(os.path.join(out_dir, "tensorboard", task.name)
                                      if config.tensorboard else None)) \
        if main_process else NullLog()
    fixed_meta = {"task": task.name, "data_seed": int(plan.seed),
                  "data_fingerprint": task.data_fingerprint, "num_rows": plan.num_rows,
                  "batch_size": plan.batch_size, "total_steps": plan.total_steps,
                  "group_by_length": plan.lengths is not None}

    def meta(step: int) -> dict:
        epoch, k = divmod(step, plan.steps_per_epoch)
        return {**fixed_meta, "step": step, "epoch": epoch, "batch_in_epoch": k}

    start = ckpts.latest_step()
    if start is None:
        state, start = init_fn(params), 0
    else:
        state, saved = ckpts.restore(abstract_state, st_sh, start)
        for k, v in fixed_meta.items():
            if saved.get(k) != v:
                raise ValueError(
                    f"{ckpts.directory}/{start}: checkpoint has {k}={saved.get(k)!r}, this run "
                    f"has {v!r}; use a new --out directory or the same data and config")
        log.write(start, {}, event="resume")
    del params  # the state owns (and on accelerators donates) the parameter buffers

    step_fn = b_sh = None
    bar = tqdm(total=last, initial=start, desc=task.name, disable=not (progress and main_process),
               dynamic_ncols=True)
    t_last, tokens_since, log_every = time.perf_counter(), 0.0, max(1, int(config.log_every))
    for step in range(start, last):
        batch = task.make_batch(step)
        if step_fn is None:
            step_fn, _, b_sh = steps.jit_train_step(task.loss_factory, optimizer,
                                                    abstract_state, batch, mesh,
                                                    seed=int(config.seed))
        state, metrics = step_fn(state, device_batch(batch, b_sh))
        tokens_since += real_tokens(batch)
        done = step + 1
        if done % log_every == 0 or done == last:
            m = jax.device_get(metrics)
            now = time.perf_counter()
            m = {**m, "learning_rate": float(schedule(step)),
                 "tokens_per_second": tokens_since / max(now - t_last, 1e-9),
                 "epoch": plan.epoch_of_step(done)}
            tokens_since = 0.0
            t_last = now
            log.write(done, m)
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_second']:.0f}")
        bar.update(1)
        if task.evaluate is not None and config.eval_every > 0 and done % config.eval_every == 0:
            log.write(done, task.evaluate(state["params"]), event="eval")
        ckpts.maybe_save(done, state, meta(done), force=done == last)
    bar.close()
    if task.evaluate is not None:
        log.write(last, task.evaluate(state["params"]), event="final_eval")
    ckpts.maybe_save(last, state, meta(last), force=True)
    ckpts.close()
    log.close()
    return state["params"]


class NullLog:
    """The metrics log of processes other than 0 (one file per run, not per process)."""

    def write(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def device_batch(batch: Mapping, shardings: Mapping):
    """A host batch ready for a jitted step with `shardings`: as it is for one process
    (jit places it); with several, global arrays built from each process's own rows."""
    if jax.process_count() == 1:
        return batch
    return distributed.to_global(batch, shardings)


def gathered_params(params: dict) -> dict:
    """Trained params as arrays on this process's default device, the same on every
    process (an all-gather when the mesh spans processes), for export."""
    if jax.process_count() == 1:
        return params
    return jax.tree.map(jax.numpy.asarray, distributed.to_host(params))


def real_tokens(batch: Mapping) -> float:
    """Non-padding tokens in a global batch (every `*mask` array but the loss mask)."""
    return float(sum(np.sum(v) for k, v in batch.items()
                     if k.endswith("mask") and k != "loss_mask"))


def set_params(model: nnx.Module, params: dict, dtype=None) -> nnx.Module:
    """Put pure params (optionally cast, e.g. to the export dtype) into an NNX model."""
    if dtype is not None:
        params = steps.cast_floats(params, dtype)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def master_params(model: nnx.Module, mesh: Mesh) -> dict:
    """The model's params as fp32 master weights placed on the mesh."""
    from rstar_jax.models.sharding import shard_params
    from rstar_jax.models.qwen2 import params_of
    return shard_params(steps.cast_floats(params_of(model), "float32"), mesh)


def check_config(config: Mapping, where: str = "config") -> None:
    """Fail early, naming the field, on settings the loop cannot run with (before any
    model is loaded)."""
    def at_least(name: str, value, low) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ValueError(f"{where}.{name} must be a number >= {low}, got {value!r}")

    for name in ("epochs", "batch_size", "micro_batch_size", "max_length", "log_every"):
        at_least(name, config[name], 1)
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"{where}.compute_dtype must be 'float32' or 'bfloat16', "
                         f"got {config.compute_dtype!r}")
    if config.export_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"{where}.export_dtype must be 'float32' or 'bfloat16', "
                         f"got {config.export_dtype!r}")
    if config.attention_impl not in ("auto", "xla", "cudnn"):
        raise ValueError(f"{where}.attention_impl must be 'auto', 'xla' or 'cudnn', "
                         f"got {config.attention_impl!r}")
    if config.remat_policy not in ("full", "dots"):
        raise ValueError(f"{where}.remat_policy must be 'full' or 'dots', got {config.remat_policy!r}")
    if config.batch_size % config.micro_batch_size:
        raise ValueError(f"{where}.batch_size ({config.batch_size}) must be a multiple of "
                         f"{where}.micro_batch_size ({config.micro_batch_size})")
    if max(config.bucket_lengths) < config.max_length:
        raise ValueError(f"{where}.bucket_lengths {tuple(config.bucket_lengths)} must include "
                         f"max_length ({config.max_length})")
    at_least("optim.learning_rate", config.optim.learning_rate, 0)
    if config.optim.learning_rate <= 0:
        raise ValueError(f"{where}.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    at_least("optim.warmup_steps", config.optim.warmup_steps, 0)
    at_least("checkpoint.save_every", config.checkpoint.save_every, 1)
    at_least("checkpoint.keep", config.checkpoint.keep, 1)
