"""Periodic retrieval evaluation during training: mAP@100 on a validation set.

The queries and the index of a :class:`lmr_jax.data.lists.ValidationSet` are embedded with the
model being trained through the one embedding path of offline extraction
(:func:`lmr_jax.retrieval.embedding.make_embed_fn`: evaluation mode, same views, L2-normalised),
searched exactly by inner product and scored with the GLDv2 mAP@100 of
``lmr_jax.retrieval.metrics``.
Every process embeds its share of the images; the embeddings are gathered on every process.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lmr_jax.data import pipeline, store
from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.retrieval import metrics, search
from lmr_jax.retrieval.embedding import EmbedFn
from lmr_jax.train import distributed


def embed_list(embed: EmbedFn, image_list: ImageList, source: Any,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of every row of ``image_list``, on every process.

    Args:
      embed: ``fn(images) -> (B, D)`` from :func:`lmr_jax.retrieval.embedding.make_embed_fn`.
      image_list: the images (its ``ids`` name images in error messages).
      source: their random-access source.
      eval_config: :func:`lmr_jax.data.pipeline.default_eval_config`-like settings.
      mesh: the data mesh (the global eval batch is ``batch_size * process_count``).
    """
    n = len(image_list)
    rows, feats = [], []
    with pipeline.make_eval_iterator(source, eval_config, ids=image_list.ids,
                                     device_count=mesh.devices.size) as it:
        for batch in it:
            images = distributed.global_batch({"image": batch["image"]}, mesh)["image"]
            emb = embed(images)
            feats.append(np.asarray(multihost_utils.process_allgather(emb, tiled=True)))
            rows.append(np.asarray(multihost_utils.process_allgather(
                np.asarray(batch["index"]), tiled=True)))
    rows = np.concatenate(rows)
    feats = np.concatenate(feats).astype(np.float32)
    keep = rows >= 0
    out = np.zeros((n, feats.shape[1]), np.float32)
    out[rows[keep]] = feats[keep]
    return out


def retrieval_map(embed: EmbedFn, validation: ValidationSet,
                  image_source_root: str, eval_config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh, k: int = 100) -> dict[str, float]:
    """Embeds the validation queries and index and returns ``{"map@100": ..., ...}``.

    Args:
      image_source_root: the prepared store (or image folder) holding the validation images.
      k: ranking depth (100 for GLDv2).
    """
    queries, index = validation.query_list(), validation.index_list()
    q = embed_list(embed, queries, store.open_source(queries, image_source_root),
                   eval_config, mesh)
    x = embed_list(embed, index, store.open_source(index, image_source_root),
                   eval_config, mesh)
    _, idx = search.topk_inner_product(q, x, min(k, len(index)))
    predictions = {str(qid): [str(validation.index_ids[j]) for j in row if j >= 0]
                   for qid, row in zip(validation.query_ids, idx, strict=True)}
    return metrics.retrieval_metrics(predictions, validation.gt_dict(), max_predictions=k)
