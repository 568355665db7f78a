"""lmr_jax.retrieval."""
