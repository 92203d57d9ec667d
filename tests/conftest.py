"""Test session set-up: 8 fake CPU devices so sharding is tested without accelerators."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Must run before any backend initialises (jax raises otherwise).
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
