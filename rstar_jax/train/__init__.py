"""Optax training loops for the policy (SFT) and the PPM (pairwise ranking), with Orbax
checkpoints that resume exactly, data order included."""

from rstar_jax.train.ppm import train_ppm
from rstar_jax.train.sft import train_sft

__all__ = ["train_ppm", "train_sft"]
