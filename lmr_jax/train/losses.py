"""Classification losses on cosine similarities: ArcFace, CosFace, sub-center ArcFace with
dynamic margins, and plain (normalised) softmax, with optional label smoothing; and the losses
of Baidu's GLR2019 models: ArcMargin (on cosines), N-pairs (on embeddings) and a linear softmax
(on logits).

Every loss takes the classifier output ``cosine`` (B, C), the cosine similarity between the
L2-normalised embedding and each L2-normalised class weight (already maximised over
sub-centres by ``lmr_jax.models.heads.CosineClassifier``), and integer ``labels`` (B,).
Rows with a negative label (GLDv2 non-landmark images, label -1) are ignored: they add
nothing to the loss, the accuracy or the sample count.

A loss returns a :class:`LossOutput` of *sums* over the rows it saw (not means), so that a
data-parallel step can add the sums of every device and divide once by the global count.

Notes on the reference (``loss/metric_learning.py: Arcface`` of the GLR2021 2nd-place code):
  * ArcFace is the non-easy-margin variant: ``phi = cos(t + m)`` where ``cos t > cos(pi - m)``,
    else ``cos t - sin(pi - m) * m``; logits ``s * (onehot * phi + (1 - onehot) * cos)``.
  * The reference computes ``sine = sqrt(1 - cos^2)`` without clamping, which is NaN when
    rounding puts a cosine slightly above 1. Here ``1 - cos^2`` is clamped at 0; for every
    cosine in [-1, 1] the result is identical.
  * Sub-center ArcFace with dynamic margins (the GLR2021 winner's loss): per-class margin
    ``m_c = m_min + m_range * (f_c - min f) / (max f - min f)`` with ``f_c = n_c ** -0.25``,
    ``n_c`` the number of training images of class c (rarer classes get larger margins).

The Baidu losses (docs/baidu.md, Training) do not all take cosines: ``arcmargin`` does (the
trainer's ``CosineClassifier``, ``classifier.name = "cosine"``); ``npairs`` takes the
embeddings themselves and ``linear_softmax`` the logits of a classifier head
(``baidu_softmax_v1`` / ``_v2``), both with ``classifier.name = "none"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmr_jax.registry import Registry

Array = jax.Array


class LossOutput(NamedTuple):
    """Per-batch sums of a classification loss.

    Attributes:
      loss_sum: () float32, sum of the per-sample cross-entropies over valid rows.
      correct: () float32, number of valid rows whose arg-max cosine is the label.
      count: () float32, number of valid rows (label >= 0).
    """

    loss_sum: Array
    correct: Array
    count: Array


LossFn = Callable[[Array, Array], LossOutput]

# Loss factories by name: keyword options -> LossFn. The trainer builds the configured one with
# ``LOSSES.build_selected(config.loss, context=...)``: the options of loss <name> come from the
# ``config.loss.<name>`` sub-dict, and the context offers the stage's ``scale`` and ``margin``
# and the list's ``class_counts`` to the factories that name them. A new loss is one factory
# decorated with ``@LOSSES.register(name)`` plus its sub-dict in the training config.
LOSSES: Registry[Callable[..., LossFn]] = Registry("loss")


def _target_cosine(cosine: Array, labels: Array) -> tuple[Array, Array, Array]:
    """Returns (valid (B,) bool, safe labels (B,), cosine of the label (B,))."""
    valid = labels >= 0
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    target = jnp.take_along_axis(cosine, safe[:, None], axis=1)[:, 0]
    return valid, safe, target


def arcface_phi(target: Array, margin: Array | float) -> Array:
    """Non-easy-margin ArcFace target logit ``cos(t + m)`` with the reference's fallback.

    Args:
      target: (B,) cosine of each row's label.
      margin: scalar or (B,) additive angular margin m in radians.

    Returns:
      (B,) ``cos t cos m - sin t sin m`` where ``cos t > cos(pi - m)``, else ``cos t - m sin m``.
    """
    if isinstance(margin, float | int):
        cos_m, sin_m = math.cos(margin), math.sin(margin)
        th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    else:
        cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
        th, mm = jnp.cos(math.pi - margin), jnp.sin(math.pi - margin) * margin
    sine = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
    phi = target * cos_m - sine * sin_m
    return jnp.where(target > th, phi, target - mm)


def _replace_target(cosine: Array, labels: Array, new_target: Array) -> Array:
    """``onehot * new_target + (1 - onehot) * cosine`` without materialising the one-hot."""
    cols = jnp.arange(cosine.shape[1], dtype=jnp.int32)[None, :]
    return jnp.where(cols == labels[:, None], new_target[:, None].astype(cosine.dtype), cosine)


def cross_entropy_sums(logits: Array, cosine: Array, labels: Array,
                       label_smoothing: float = 0.0) -> LossOutput:
    """Sums of (label-smoothed) softmax cross-entropy over rows with ``labels >= 0``.

    Args:
      logits: (B, C) logits.
      cosine: (B, C) margin-free scores used for the accuracy.
      labels: (B,) int labels, negative for ignored rows.
      label_smoothing: eps; the target is ``(1 - eps) * onehot + eps / C``.
    """
    valid, safe, _ = _target_cosine(cosine, labels)
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    validf = valid.astype(jnp.float32)
    correct = (jnp.argmax(cosine, axis=-1) == safe).astype(jnp.float32) * validf
    return LossOutput(jnp.sum(nll * validf), jnp.sum(correct), jnp.sum(validf))


def arcface_logits(cosine: Array, labels: Array, *, scale: float,
                   margin: float | Array) -> Array:
    """ArcFace logits ``s * (onehot * phi + (1 - onehot) * cosine)``.

    Args:
      cosine: (B, C) cosine similarities.
      labels: (B,) labels (negative rows get no margin).
      scale: s.
      margin: m, a float or a (C,) array of per-class margins (dynamic margins).
    """
    valid, safe, target = _target_cosine(cosine, labels)
    m = margin if isinstance(margin, float | int) else jnp.asarray(margin)[safe]
    phi = arcface_phi(target.astype(jnp.float32), m)
    return scale * _replace_target(cosine.astype(jnp.float32), jnp.where(valid, safe, -1), phi)


def cosface_logits(cosine: Array, labels: Array, *, scale: float, margin: float) -> Array:
    """CosFace (large-margin cosine) logits ``s * (cosine - m * onehot)``."""
    valid, safe, target = _target_cosine(cosine, labels)
    cosine = cosine.astype(jnp.float32)
    return scale * _replace_target(cosine, jnp.where(valid, safe, -1),
                                   target.astype(jnp.float32) - margin)


def dynamic_margins(class_counts: np.ndarray, *, margin_min: float, margin_range: float,
                    power: float = -0.25) -> np.ndarray:
    """Per-class margins of sub-center ArcFace with dynamic margins.

    Args:
      class_counts: (C,) number of training images per class (classes with 0 images are
        treated as having 1).
      margin_min: margin of the most frequent class.
      margin_range: margin of the rarest class minus margin_min.
      power: exponent applied to the counts (-1/4 in the GLR2021 winner's solution).

    Returns:
      (C,) float32 margins in [margin_min, margin_min + margin_range]; all margin_min when
      every class has the same count.
    """
    f = np.maximum(np.asarray(class_counts, np.float64), 1.0) ** power
    span = f.max() - f.min()
    norm = (f - f.min()) / span if span > 0 else np.zeros_like(f)
    return (margin_min + margin_range * norm).astype(np.float32)


def _cross_entropy_loss(logits_fn: Callable[[Array, Array], Array],
                        label_smoothing: float) -> LossFn:
    def loss_fn(cosine: Array, labels: Array) -> LossOutput:
        return cross_entropy_sums(logits_fn(cosine, labels), cosine, labels, label_smoothing)

    return loss_fn


@LOSSES.register("arcface")
def arcface(*, scale: float = 30.0, margin: float = 0.3, label_smoothing: float = 0.0) -> LossFn:
    """ArcFace: cross-entropy on :func:`arcface_logits` (scale s, additive angular margin m)."""
    return _cross_entropy_loss(
        lambda c, y: arcface_logits(c, y, scale=scale, margin=float(margin)), label_smoothing)


@LOSSES.register("cosface")
def cosface(*, scale: float = 30.0, margin: float = 0.3, label_smoothing: float = 0.0) -> LossFn:
    """CosFace: cross-entropy on :func:`cosface_logits` (scale s, additive cosine margin m)."""
    return _cross_entropy_loss(
        lambda c, y: cosface_logits(c, y, scale=scale, margin=float(margin)), label_smoothing)


@LOSSES.register("subcenter_arcface")
def subcenter_arcface(*, class_counts: np.ndarray | None = None, scale: float = 30.0,
                      dynamic_margin_min: float = 0.05, dynamic_margin_range: float = 0.45,
                      label_smoothing: float = 0.0) -> LossFn:
    """Sub-center ArcFace with dynamic margins: ArcFace with the per-class margins of
    :func:`dynamic_margins` (``class_counts`` (C,): training images per class). The sub-centres
    live in the classifier (``CosineClassifier(num_subcenters=k)``)."""
    if class_counts is None:
        raise ValueError("loss 'subcenter_arcface' needs class_counts (training images per "
                         "class) for its dynamic margins")
    margins = jnp.asarray(dynamic_margins(class_counts, margin_min=dynamic_margin_min,
                                          margin_range=dynamic_margin_range), jnp.float32)

    def logits_fn(c, y):
        if c.shape[1] != margins.shape[0]:
            raise ValueError(f"class_counts has {margins.shape[0]} classes, "
                             f"the classifier {c.shape[1]}")
        return arcface_logits(c, y, scale=scale, margin=margins)

    return _cross_entropy_loss(logits_fn, label_smoothing)


@LOSSES.register("softmax")
def softmax(*, scale: float = 30.0, label_smoothing: float = 0.0) -> LossFn:
    """Normalised softmax: cross-entropy on ``scale * cosine``, no margin."""
    return _cross_entropy_loss(lambda c, y: scale * c.astype(jnp.float32), label_smoothing)


def arcmargin_logits(cosine: Array, labels: Array, *, scale: float, margin: float,
                     easy_margin: bool = False) -> Array:
    """Baidu's ArcMargin logits ``s * (onehot * phi + (1 - onehot) * cosine)``.

    ``phi = cos * cos m - sin * sin m`` with ``sin = sqrt(1 - cos^2 + 1e-6)`` (Baidu's epsilon,
    which also keeps the gradient finite at |cos| = 1). Not easy margin: ``phi`` where
    ``cos > cos(pi - m)``, else ``cos - m sin(pi - m)``; easy margin: ``phi`` where ``cos > 0``,
    else ``cos``.

    Args:
      cosine: (B, C) cosines between normalised embeddings and normalised class weights.
      labels: (B,) labels (negative rows get no margin).
    """
    valid, safe, target = _target_cosine(cosine, labels)
    target = target.astype(jnp.float32)
    sine = jnp.sqrt(1.0 - target * target + 1e-6)
    phi = target * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        phi = jnp.where(target > 0, phi, target)
    else:
        phi = jnp.where(target > math.cos(math.pi - margin), phi,
                        target - margin * math.sin(math.pi - margin))
    return scale * _replace_target(cosine.astype(jnp.float32), jnp.where(valid, safe, -1), phi)


@LOSSES.register("arcmargin")
def arcmargin(*, scale: float = 80.0, margin: float = 0.15, easy_margin: bool = False) -> LossFn:
    """Baidu's ArcMargin: cross-entropy on :func:`arcmargin_logits` (defaults s 80, m 0.15)."""
    return _cross_entropy_loss(
        lambda c, y: arcmargin_logits(c, y, scale=scale, margin=float(margin),
                                      easy_margin=easy_margin), 0.0)


def npairs_sums(embeddings: Array, labels: Array, *, reg_lambda: float = 0.01) -> LossOutput:
    """Baidu's N-pairs loss on a batch of consecutive (anchor, positive) pairs, as sums.

    Args:
      embeddings: (B, D) raw embeddings (no normalisation), B even; rows 2i and 2i + 1 are the
        anchor and the positive of pair i (the ``pairs`` sampler's order).
      labels: (B,) int labels (>= 0; the pair sampler draws no others).
      reg_lambda: lambda of the embedding-norm penalty.

    Returns:
      Sums over the B rows whose mean is Baidu's loss: ``mean_i CE_i + 0.5 * lambda *
      mean_b ||f_b||^2``, with ``CE_i = -sum_j t_ij log softmax_j(a_i . p_j)`` and
      ``t_ij = 1`` where anchor i and positive j share a label (rows are not renormalised
      when a class appears in two pairs). ``correct``: 2 per pair whose best-scoring
      positive has the anchor's label.
    """
    b, d = embeddings.shape
    if b % 2:
        raise ValueError(f"npairs: the batch must hold (anchor, positive) pairs, got {b} rows")
    f = embeddings.astype(jnp.float32)
    pairs = f.reshape(b // 2, 2, d)
    anchors, positives = pairs[:, 0], pairs[:, 1]
    pair_labels = labels.reshape(b // 2, 2)
    logits = jnp.dot(anchors, positives.T, precision=jax.lax.Precision.HIGHEST)
    target = (pair_labels[:, 0][:, None] == pair_labels[:, 1][None, :]).astype(jnp.float32)
    ce = -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)      # (B/2,)
    reg = 0.5 * reg_lambda * jnp.mean(jnp.sum(f * f, axis=-1))
    loss = jnp.mean(ce) + reg
    best = jnp.argmax(logits, axis=-1)
    hit = (pair_labels[best, 1] == pair_labels[:, 0]).astype(jnp.float32)
    count = jnp.asarray(b, jnp.float32)
    return LossOutput(loss * count, 2.0 * jnp.sum(hit), count)


@LOSSES.register("npairs")
def npairs(*, reg_lambda: float = 0.01) -> LossFn:
    """Baidu's N-pairs loss (:func:`npairs_sums`) on embeddings; lambda 0.01 as Baidu's."""
    return lambda embeddings, labels: npairs_sums(embeddings, labels, reg_lambda=reg_lambda)


@LOSSES.register("linear_softmax")
def linear_softmax(*, label_smoothing: float = 0.0) -> LossFn:
    """Softmax cross-entropy on the logits of a linear classifier with bias (Baidu's
    res152_softmax models: the model's head is the classifier, ``baidu_softmax_v1`` / ``_v2``)."""
    return lambda logits, labels: cross_entropy_sums(logits, logits, labels, label_smoothing)
