"""lmr_jax.data."""
