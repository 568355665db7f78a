"""Landmark recognition (the 2019 task) by similarity-weighted voting over reference neighbours."""

from __future__ import annotations

import numpy as np

from lmr_jax.retrieval import search

NON_LANDMARK = -1


def vote(neighbour_sims: np.ndarray, neighbour_labels: np.ndarray, *, threshold: float = 0.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted vote over each query's k neighbours.

    Args:
      neighbour_sims: (Q, k) similarities of the neighbours, best first.
      neighbour_labels: (Q, k) int landmark labels of the neighbours (-1 = non-landmark,
        -2 = no neighbour).
      threshold: a query whose winning confidence is below it is predicted non-landmark.
    Returns:
      labels (Q,) int64 (-1 = non-landmark) and confidences (Q,) float32, the confidence being
      the winner's summed similarity divided by k. Ties go to the label of the nearer neighbour.
    """
    sims = np.asarray(neighbour_sims, np.float32)
    labels = np.asarray(neighbour_labels, np.int64)
    k = sims.shape[1]
    valid = labels != -2
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    score = np.where(valid, np.einsum("qij,qj->qi", same.astype(np.float32),
                                      np.where(valid, sims, 0.0)), -np.inf)
    best = np.argmax(score, axis=1)  # first maximum: the nearest neighbour of the tie
    conf = np.take_along_axis(score, best[:, None], 1)[:, 0] / k
    pred = np.take_along_axis(labels, best[:, None], 1)[:, 0]
    pred = np.where((conf < threshold) | (pred < 0), NON_LANDMARK, pred)
    return pred, np.where(np.isfinite(conf), conf, 0.0).astype(np.float32)


def recognize(query_feats: np.ndarray, ref_feats: np.ndarray, ref_labels: np.ndarray, *,
              k: int = 5, threshold: float = 0.0, chunk_size: int = search.DEFAULT_CHUNK
              ) -> tuple[np.ndarray, np.ndarray]:
    """Landmark id and confidence per query from its top-k refs (exact chunked search).

    Args:
      query_feats: (Q, D) L2-normalised; ref_feats: (R, D) L2-normalised (memmap allowed).
      ref_labels: (R,) int landmark ids (-1 for non-landmark refs).
    Returns:
      labels (Q,) int64 (-1 = non-landmark) and confidences (Q,) float32.
    """
    ref_labels = np.asarray(ref_labels, np.int64)
    if len(ref_labels) != ref_feats.shape[0]:
        raise ValueError(f"{len(ref_labels)} ref labels for {ref_feats.shape[0]} ref features")
    sims, idx = search.topk_inner_product(query_feats, ref_feats, k, chunk_size=chunk_size)
    labels = np.where(idx >= 0, ref_labels[np.maximum(idx, 0)], -2)
    return vote(sims, labels, threshold=threshold)
