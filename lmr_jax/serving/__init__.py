"""lmr_jax.serving: the embedding model exported for serving, and its loader.

The top of the library: it may import anything in lmr_jax, nothing in lmr_jax imports it.

``artifact`` (the artefact on disk and :func:`load`, which runs it without building any
lmr-jax model: it imports neither ``lmr_jax.models`` nor the embedding code) and ``export``
(:func:`lmr_jax.serving.export.export_embedding`, which writes one from a model; used by
``scripts/export.py``). Only the loader is imported here, so serving stays light::

    from lmr_jax import serving
    embed = serving.load("exported/")           # folder written by scripts/export.py
    features = embed(images_uint8)               # (B, S, S, 3) uint8 -> (B, D) float32
"""

from lmr_jax.serving.artifact import ServedEmbedding, ServingArtifactError, load, read_metadata

__all__ = ["ServedEmbedding", "ServingArtifactError", "load", "read_metadata"]
