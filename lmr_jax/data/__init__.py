"""lmr_jax.data: GLDv2 lists, image store and input pipelines.

Modules: ``lists`` (ImageList, ValidationSet), ``geo`` (countries, continents), ``gldv2``
(official CSVs -> lists, preparation), ``store`` (array_record image store, image sources),
``synthetic`` (GLDv2-format synthetic dataset), and the grain input pipeline modules.
"""
