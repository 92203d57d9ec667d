"""rstar-jax: rStar-Math (MCTS-driven self-evolved deep thinking) in JAX/Flax."""

__version__ = "0.1.0"
