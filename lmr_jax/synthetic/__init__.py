"""lmr_jax.synthetic: synthetic landmark images and a synthetic dataset in the GLDv2 layout.

Modules: ``render`` (procedural landmark scenes, views and distractor photos: the one synthetic
image generator), ``dataset`` (a whole GLDv2-format dataset of them, for the demo and tests).
"""
