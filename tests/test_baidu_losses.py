"""Baidu's GLR2019 losses and the pair sampler against numpy transcriptions of Baidu's
definitions (docs/baidu.md, Training), written here loop by loop from the formulas."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmr_jax.data.samplers import SAMPLERS
from lmr_jax.train.losses import LOSSES


def softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference_arcmargin(x, w, labels, s=80.0, m=0.15, easy=False) -> float:
    """ArcMargin as Baidu wrote it: rows normalised with no epsilon, sine with + 1e-6,
    softmax and then a separate cross-entropy; the mean over the batch."""
    x = x / np.sqrt((x * x).sum(axis=1, keepdims=True))
    w = w / np.sqrt((w * w).sum(axis=1, keepdims=True))
    cos = x @ w.T
    sin = np.sqrt(1.0 - cos ** 2 + 1e-6)
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy:
        phi = np.where(cos > 0, phi, cos)
    else:
        phi = np.where(cos > math.cos(math.pi - m), phi, cos - m * math.sin(math.pi - m))
    onehot = np.zeros_like(cos)
    onehot[np.arange(len(labels)), labels] = 1.0
    prob = softmax_rows(s * (onehot * phi + (1.0 - onehot) * cos))
    return float(np.mean([-math.log(prob[i, labels[i]]) for i in range(len(labels))]))


def reference_npairs(f: np.ndarray, labels: np.ndarray, lam: float = 0.01) -> float:
    """N-pairs: reshape to (B/2, 2, D); logits anchors . positives^T; soft targets 1 where the
    labels agree (divided by samples_each_class - 1 = 1); + 0.5 lambda mean ||f||^2."""
    n = len(f) // 2
    anchors, positives = f[0::2], f[1::2]
    la, lp = labels[0::2], labels[1::2]
    total = 0.0
    for i in range(n):
        logits = np.array([anchors[i] @ positives[j] for j in range(n)])
        logp = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
        total += -sum(float(la[i] == lp[j]) * logp[j] for j in range(n))
    return total / n + 0.5 * lam * float(np.mean([fb @ fb for fb in f]))


def mean_loss(out) -> float:
    return float(out.loss_sum / out.count)


@pytest.mark.parametrize("easy", [False, True])
def test_arcmargin_equals_baidu(easy):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16))
    w = rng.standard_normal((5, 16))
    # Put one label's cosine below cos(pi - m) to reach the fallback branch.
    w[4] = -x[5] + 0.01 * rng.standard_normal(16)
    labels = np.array([0, 1, 2, 3, 1, 4])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = jnp.asarray(xn @ wn.T, jnp.float32)
    assert float(cos[5, 4]) < math.cos(math.pi - 0.15)
    loss = LOSSES.build("arcmargin", easy_margin=easy)(cos, jnp.asarray(labels))
    want = reference_arcmargin(x, w, labels, easy=easy)
    assert mean_loss(loss) == pytest.approx(want, rel=1e-4)
    assert float(loss.count) == 6
    # The defaults are Baidu's (s 80, m 0.15); another s gives another loss.
    other = LOSSES.build("arcmargin", scale=30.0, easy_margin=easy)(cos, jnp.asarray(labels))
    assert mean_loss(other) == pytest.approx(reference_arcmargin(x, w, labels, s=30.0,
                                                                 easy=easy), rel=1e-4)


def test_arcmargin_gradient_is_finite_at_cosine_one():
    cos = jnp.asarray([[1.0, 0.2], [0.1, -1.0]], jnp.float32)
    grad = jax.grad(lambda c: LOSSES.build("arcmargin")(c, jnp.asarray([0, 1])).loss_sum)(cos)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_npairs_equals_baidu_with_a_repeated_class():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((8, 12)).astype(np.float32)
    labels = np.array([3, 3, 7, 7, 3, 3, 1, 1])  # class 3 in two pairs: rows sum to 2
    loss = LOSSES.build("npairs")(jnp.asarray(f), jnp.asarray(labels))
    assert mean_loss(loss) == pytest.approx(reference_npairs(f.astype(np.float64), labels),
                                            rel=1e-5)
    lam = LOSSES.build("npairs", reg_lambda=0.5)(jnp.asarray(f), jnp.asarray(labels))
    assert mean_loss(lam) == pytest.approx(reference_npairs(f.astype(np.float64), labels, 0.5),
                                           rel=1e-5)
    with pytest.raises(ValueError, match="pairs"):
        LOSSES.build("npairs")(jnp.asarray(f[:7]), jnp.asarray(labels[:7]))


def test_npairs_accuracy_counts_pairs_whose_best_positive_matches():
    f = np.zeros((4, 2), np.float32)
    f[0], f[1], f[2], f[3] = [1, 0], [1, 0], [0, 1], [1, 0]  # anchor 1 prefers positive 0
    out = LOSSES.build("npairs")(jnp.asarray(f), jnp.asarray([0, 0, 1, 1]))
    assert float(out.correct) == 2 and float(out.count) == 4


def test_linear_softmax_is_cross_entropy_on_logits():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    labels = np.array([0, 6, 2, -1, 3])  # -1: ignored
    out = LOSSES.build("linear_softmax")(jnp.asarray(logits), jnp.asarray(labels))
    prob = softmax_rows(logits.astype(np.float64))
    keep = labels >= 0
    want = -np.log(prob[np.arange(5)[keep], labels[keep]])
    assert float(out.loss_sum) == pytest.approx(want.sum(), rel=1e-5)
    assert float(out.count) == 4
    assert float(out.correct) == float(np.sum(np.argmax(logits, 1)[keep] == labels[keep]))


def test_pair_sampler_gives_consecutive_pairs_of_distinct_identities():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 2, 2, 3, 2, 6])
    labels = np.concatenate([labels, [-1, -1]])
    image_list = types.SimpleNamespace(labels=labels)
    sampler = SAMPLERS.build("pairs", image_list, batch_size=8, seed=3)
    rows = sampler.epoch_indices(0)
    assert len(rows) == (len(labels) - 2) // 8 * 8
    got = labels[rows].reshape(-1, 4, 2)
    assert np.all(got[..., 0] == got[..., 1])            # (anchor, positive) share a label
    for batch in got:
        assert len(set(batch[:, 0].tolist())) == 4        # P distinct identities per batch
    pairs = rows.reshape(-1, 2)
    multi = labels[pairs[:, 0]] != 0                       # identity 0 has a single image
    assert np.all(pairs[multi, 0] != pairs[multi, 1])      # two different images otherwise
    np.testing.assert_array_equal(rows, SAMPLERS.build("pairs", image_list, batch_size=8,
                                                        seed=3).epoch_indices(0))
    with pytest.raises(ValueError, match="must be even"):
        SAMPLERS.build("pairs", image_list, batch_size=7, seed=0)
