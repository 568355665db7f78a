"""Landmark recognition (the 2019 task) by similarity-weighted voting over reference neighbours,
by a softmax landmark classifier (Baidu's res152_softmax models), or by both combined."""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from lmr_jax.data import augment, baidu_preprocess
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


def classify_images(model: nnx.Module, source: Any, *, batch_size: int = 16,
                    size: int = baidu_preprocess.CLASSIFICATION_SIZE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class and probability of every image of ``source`` by a softmax classifier.

    Args:
      model: a classifier model with ``probabilities`` ((B, H, W, 3) -> (B, C); the
        ``baidu_softmax_v1`` / ``_v2`` heads).
      source: a random-access source of ``{"image": encoded bytes, "index": row}`` records
        (:func:`lmr_jax.data.store.open_source`).
      batch_size: images per forward pass.
      size: Baidu's classification preprocessing size (short side and centre crop).
    Returns:
      classes (N,) int64 (the classifier's class indices) and probabilities (N,) float32.
    """
    model.eval()
    probabilities = nnx.jit(lambda m, x: m.probabilities(x))
    classes, probs = [], []
    for start in range(0, len(source), batch_size):
        rows = range(start, min(start + batch_size, len(source)))
        batch = np.stack([baidu_preprocess.classification_preprocess(
            augment.decode_image(source[i]["image"], row=i), size) for i in rows])
        p = np.asarray(probabilities(model, batch))
        classes.append(np.argmax(p, axis=1))
        probs.append(np.max(p, axis=1))
    if not classes:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(classes).astype(np.int64),
            np.concatenate(probs).astype(np.float32))


def combine_with_classifier(knn_labels: np.ndarray, knn_confidences: np.ndarray,
                            cls_labels: np.ndarray, cls_probabilities: np.ndarray, *,
                            threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One prediction per query from the kNN vote and a softmax classifier.

    The rule (an lmr_jax choice; Baidu's paper voted over the two models without publishing
    how): where both predict the same landmark its confidence is the sum of the kNN confidence
    and the classifier probability (agreement boosts it); where they disagree, or the kNN
    vote found no landmark, the prediction with the higher confidence is kept with its own
    confidence. A confidence below ``threshold`` gives a non-landmark prediction.

    Args:
      knn_labels, knn_confidences: (Q,) from :func:`recognize` (-1 = non-landmark).
      cls_labels, cls_probabilities: (Q,) the classifier's top-1 landmark labels (same label
        space as ``knn_labels``) and probabilities.
    Returns:
      labels (Q,) int64 (-1 = non-landmark) and confidences (Q,) float32.
    """
    knn_labels = np.asarray(knn_labels, np.int64)
    knn_conf = np.where(knn_labels >= 0, np.asarray(knn_confidences, np.float32), 0.0)
    cls_labels = np.asarray(cls_labels, np.int64)
    cls_conf = np.asarray(cls_probabilities, np.float32)
    if not (knn_labels.shape == knn_conf.shape == cls_labels.shape == cls_conf.shape):
        raise ValueError(f"kNN predictions {knn_labels.shape} and classifier predictions "
                         f"{cls_labels.shape} differ in length")
    agree = knn_labels == cls_labels
    use_cls = ~agree & (cls_conf >= knn_conf)
    labels = np.where(use_cls, cls_labels, knn_labels)
    conf = np.where(agree, knn_conf + cls_conf, np.where(use_cls, cls_conf, knn_conf))
    labels = np.where(conf < threshold, NON_LANDMARK, labels)
    return labels, conf.astype(np.float32)
