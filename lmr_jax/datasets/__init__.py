"""lmr_jax.datasets: dataset tooling that turns a dataset's own files into lmr_jax lists and stores.

Packages: ``gldv2`` (Google Landmarks Dataset v2: CSV readers, list building, preparation,
report). The runtime structures they produce (:class:`lmr_jax.data.lists.ImageList`, the image
store) live in :mod:`lmr_jax.data`.
"""
