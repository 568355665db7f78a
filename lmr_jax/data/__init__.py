"""lmr_jax.data: image lists, image store and the input pipelines of training and extraction.

Modules: ``lists`` (ImageList, ValidationSet), ``geo`` (countries, continents), ``store``
(array_record image store, image sources), and the grain input pipeline modules (``augment``,
``samplers``, ``pipeline``). Dataset tooling that builds the lists (GLDv2 CSVs, preparation)
is in :mod:`lmr_jax.datasets`; the synthetic dataset in :mod:`lmr_jax.synthetic`.
"""
