from setuptools import find_packages, setup

setup(
    name="rstar-jax",
    version="0.1.0",
    description="rStar-Math (MCTS self-evolved deep thinking for small LMs) in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["rstar_jax", "rstar_jax.*"]),
    package_data={"rstar_jax": ["data/benchmarks/*.json"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.14",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0",
        # tokenizer and config only: transformers 5 ships no Flax models.
        "transformers>=4.51,<6",
        "safetensors>=0.8,<1",  # <0.8 cannot read bfloat16 into numpy
        "sympy>=1.12,<2",
        "numpy>=1.26,<3",
        "math-verify>=0.8,<1",
        "reasoning-gym>=0.1.19,<1",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "gpu": ["jax[cuda12]>=0.10.2,<0.13"],
        "gpu-cuda13": ["jax[cuda13]>=0.10.2,<0.13"],
        # torch==2.13.0 (CPU) is the independent reference for logits parity tests.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "torch==2.13.0"],
    },
)
