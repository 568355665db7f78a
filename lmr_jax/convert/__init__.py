"""lmr_jax.convert."""
