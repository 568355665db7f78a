"""lmr_jax.train."""
