"""Losses against independent PyTorch / numpy transcriptions of the reference formulas."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmr_jax.train import losses


def torch_arcface_logits(cosine, label, s, m):
    """The reference Arcface.forward after the cosine (loss/metric_learning.py), on CPU."""
    cos_m, sin_m = math.cos(m), math.sin(m)
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
    phi = cosine * cos_m - sine * sin_m
    phi = torch.where(cosine > th, phi, cosine - mm)
    one_hot = torch.zeros(cosine.size())
    one_hot.scatter_(1, label.view(-1, 1).long(), 1)
    output = (one_hot * phi) + ((1.0 - one_hot) * cosine)
    return output * s


def random_cosines(rng, b, c):
    emb = rng.normal(size=(b, 16))
    w = rng.normal(size=(c, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = emb @ w.T
    # Push a few targets into the fallback region (cos <= th = -cos m) and near +1.
    cos[0, 3] = -0.99
    cos[1, 5] = 0.999
    return np.clip(cos, -1, 1).astype(np.float32)


@pytest.mark.parametrize("m", [0.3, 0.5])
def test_arcface_matches_reference(m):
    rng = np.random.default_rng(0)
    cos = random_cosines(rng, 8, 11)
    labels = np.array([3, 5, 0, 10, 2, 2, 7, 1], np.int32)
    ref = torch_arcface_logits(torch.from_numpy(cos), torch.from_numpy(labels), 30.0, m)
    got = losses.arcface_logits(jnp.asarray(cos), jnp.asarray(labels), scale=30.0, margin=m)
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-6, atol=2e-5)
    # The fallback branch is really taken for row 0 (cos -0.99 <= -cos m).
    assert abs(float(got[0, 3]) - 30.0 * (-0.99 - math.sin(math.pi - m) * m)) < 1e-4

    out = losses.LOSSES.build("arcface", scale=30.0, margin=m)(jnp.asarray(cos), jnp.asarray(labels))
    ref_loss = F.cross_entropy(ref, torch.from_numpy(labels).long(), reduction="sum")
    np.testing.assert_allclose(float(out.loss_sum), float(ref_loss), rtol=1e-5)
    assert float(out.count) == 8
    assert float(out.correct) == float((cos.argmax(1) == labels).sum())


def test_arcface_clamps_cosine_above_one():
    cos = jnp.asarray([[1.0000001, 0.2]], jnp.float32)
    got = losses.arcface_logits(cos, jnp.asarray([0]), scale=30.0, margin=0.3)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(float(got[0, 0]), 30.0 * math.cos(0.3), rtol=1e-6)


def test_cosface_and_softmax_and_label_smoothing():
    rng = np.random.default_rng(1)
    cos = random_cosines(rng, 6, 9)
    labels = np.array([1, 4, 8, 0, 0, 3], np.int32)
    tc, tl = torch.from_numpy(cos), torch.from_numpy(labels).long()
    onehot = F.one_hot(tl, 9).float()
    ref = 30.0 * (tc - 0.35 * onehot)
    out = losses.LOSSES.build("cosface", scale=30.0, margin=0.35)(jnp.asarray(cos), jnp.asarray(labels))
    np.testing.assert_allclose(float(out.loss_sum),
                               float(F.cross_entropy(ref, tl, reduction="sum")), rtol=1e-5)

    out = losses.LOSSES.build("softmax", scale=16.0, label_smoothing=0.1)(jnp.asarray(cos),
                                                                        jnp.asarray(labels))
    # Label-smoothed CE as in the reference's CrossEntropyLabelSmooth: (1-eps) onehot + eps/C.
    target = 0.9 * onehot + 0.1 / 9
    ref_ls = -(target * F.log_softmax(16.0 * tc, dim=1)).sum()
    np.testing.assert_allclose(float(out.loss_sum), float(ref_ls), rtol=1e-5)


def test_negative_labels_are_ignored():
    rng = np.random.default_rng(2)
    cos = random_cosines(rng, 5, 7)
    labels = np.array([2, -1, 4, -1, 6], np.int32)
    fn = losses.LOSSES.build("arcface", scale=30.0, margin=0.3)
    out = fn(jnp.asarray(cos), jnp.asarray(labels))
    keep = labels >= 0
    sub = fn(jnp.asarray(cos[keep]), jnp.asarray(labels[keep]))
    assert float(out.count) == 3
    np.testing.assert_allclose(float(out.loss_sum), float(sub.loss_sum), rtol=1e-6)
    assert float(out.correct) == float(sub.correct)


def test_dynamic_margins_and_subcenter_loss():
    counts = np.array([1, 10, 100, 1000, 5, 0])
    margins = losses.dynamic_margins(counts, margin_min=0.05, margin_range=0.45)
    # Direct transcription: f = n^-1/4, min-max normalised to [0.05, 0.5].
    f = np.maximum(counts, 1).astype(np.float64) ** -0.25
    expect = 0.05 + 0.45 * (f - f.min()) / (f.max() - f.min())
    np.testing.assert_allclose(margins, expect, rtol=1e-6)
    assert margins[0] == pytest.approx(0.5) and margins[3] == pytest.approx(0.05)

    rng = np.random.default_rng(3)
    cos = random_cosines(rng, 6, 6)
    labels = np.array([0, 1, 2, 3, 4, 5], np.int32)
    out = losses.LOSSES.build("subcenter_arcface", scale=30.0, class_counts=counts,
                              dynamic_margin_min=0.05, dynamic_margin_range=0.45)(
        jnp.asarray(cos), jnp.asarray(labels))
    ref_rows = [torch_arcface_logits(torch.from_numpy(cos[i:i + 1]),
                                     torch.from_numpy(labels[i:i + 1]), 30.0,
                                     float(margins[labels[i]])) for i in range(6)]
    ref = F.cross_entropy(torch.cat(ref_rows), torch.from_numpy(labels).long(), reduction="sum")
    np.testing.assert_allclose(float(out.loss_sum), float(ref), rtol=1e-5)
    with pytest.raises(ValueError, match="class_counts"):
        losses.LOSSES.build("subcenter_arcface")
    with pytest.raises(ValueError, match="unknown loss"):
        losses.LOSSES.build("triplet")


def test_the_configured_loss_gets_its_options_and_the_stage_context():
    from lmr_jax.train.config import base_config

    cfg = base_config("resnet50").loss
    cos = jnp.asarray(random_cosines(np.random.default_rng(4), 4, 6))
    labels = jnp.asarray([0, 1, 2, 3])
    context = {"scale": 16.0, "margin": 0.2, "class_counts": np.ones(6)}
    for name in losses.LOSSES.names():  # every registered loss has its config sub-dict
        cfg.name = name
        losses.LOSSES.build_selected(cfg, context=context)(cos, labels)
    cfg.name = "softmax"
    cfg.softmax.label_smoothing = 0.1
    got = losses.LOSSES.build_selected(cfg, context=context)(cos, labels)
    want = losses.LOSSES.build("softmax", scale=16.0, label_smoothing=0.1)(cos, labels)
    assert float(got.loss_sum) == float(want.loss_sum)
    cfg.softmax.margin_typo = 0.1
    with pytest.raises(ValueError, match=r"loss 'softmax' does not take \['margin_typo'\]"):
        losses.LOSSES.build_selected(cfg, context=context)
