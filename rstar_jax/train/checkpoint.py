"""Orbax checkpoints of the train state plus a JSON record of where the data order stands.

A checkpoint at step s holds the state after s optimizer steps and a `meta` record
(`step`, `epoch`, `batch_in_epoch`, `data_seed`, `data_fingerprint`, ...). Because the
batch of every step is a pure function of (data_seed, step) (`data.BatchPlan`), that is
all a rerun needs to continue with exactly the batches an uninterrupted run would see.
Orbax writes each step to a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """A CheckpointManager over `{state, meta}` items with periodic and final saves."""

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int,
                 async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"checkpoint.save_every must be >= 1, got {save_every}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=1, create=True,
                enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def restore(self, abstract_state: dict, shardings: dict, step: int | None = None):
        """(state placed with `shardings`, meta dict) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state, shardings)
        r = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return r.state, dict(r.meta)

    def maybe_save(self, step: int, state: dict, meta: Mapping, *, force: bool = False) -> bool:
        """Save at every `save_every`-th step, or now when `force` (the final step)."""
        if not force and step % self.save_every:
            return False
        if step in self._mngr.all_steps():
            return False
        self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))), force=True)
        return True

    def close(self):
        self._mngr.wait_until_finished()
        self._mngr.close()
