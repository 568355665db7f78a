"""lmr-jax: JAX/Flax reimplementation of the GLR2021 2nd-place landmark retrieval system."""

__version__ = "0.1.0"
