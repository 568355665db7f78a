"""lmr_jax.models."""
