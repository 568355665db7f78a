"""Retrieval head, pooling and cosine classifier against PyTorch, plus the model API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from lmr_jax.convert.mapping import load_torch_state, torch_key_map
from lmr_jax.models import create
from lmr_jax.models.heads import AvgMaxPool, CosineClassifier, GeM, RetrievalModel
from lmr_jax.models.layers import FrozenParam
from tests.torch_reference import common


def _feature_map(seed: int, shape=(3, 5, 7, 16)) -> np.ndarray:
    """NHWC maps with negative entries (GeM's clamp matters) and per-sample structure."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + rng.uniform(0, 1, (shape[0], 1, 1, shape[3]))).astype(
        np.float32)


@pytest.mark.parametrize("p", [3.0, 4.5])
def test_gem_matches_torch(p):
    x = _feature_map(0)
    want = common.gem(common.nhwc_to_nchw(x), p=p, eps=1e-6).numpy()
    got = np.asarray(GeM(p)(jnp.asarray(x)))
    assert got.shape == (3, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    # Computed in float32 also for bfloat16 maps.
    assert GeM(p)(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.float32


def test_gem_learnable_p_gradient_matches_torch():
    x = _feature_map(1)
    pool = GeM(3.0, learnable=True)
    assert isinstance(pool.p, nnx.Param) and pool.p.shape == ()
    weights = np.random.default_rng(2).uniform(0.5, 1.5, (3, 16)).astype(np.float32)

    def loss(module):
        return jnp.sum(module(jnp.asarray(x)) * weights)

    grads = nnx.grad(loss)(pool)
    p_t = torch.tensor(3.0, requires_grad=True)
    (common.gem(common.nhwc_to_nchw(x), p=p_t) * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(float(grads.p[...]), float(p_t.grad), rtol=1e-4)
    # A fixed p is no state at all (the reference's GeM has no state entry).
    assert not jax.tree.leaves(nnx.state(GeM(3.0)))


def test_avgmax_pool_matches_torch():
    x = _feature_map(3)
    xt = common.nhwc_to_nchw(x)
    want = (F.adaptive_avg_pool2d(xt, 1) + F.adaptive_max_pool2d(xt, 1)).flatten(1).numpy()
    np.testing.assert_allclose(np.asarray(AvgMaxPool()(jnp.asarray(x))), want, rtol=1e-6)


@pytest.mark.parametrize("num_subcenters", [1, 3])
def test_cosine_classifier_matches_torch(num_subcenters):
    num_classes, dim = 7, 12
    clf = CosineClassifier(dim, num_classes, num_subcenters, rngs=nnx.Rngs(0))
    assert clf.weight.shape == (num_classes * num_subcenters, dim)
    emb = np.random.default_rng(4).standard_normal((5, dim)).astype(np.float32)
    emb[0] = 0.0  # F.normalize's eps: a zero embedding gives zero cosines, not NaN
    w = torch.from_numpy(np.array(clf.weight[...]))
    cos = F.linear(F.normalize(torch.from_numpy(emb)), F.normalize(w))
    want = cos.view(5, num_classes, num_subcenters).max(dim=2).values.numpy()
    got = np.asarray(clf(jnp.asarray(emb)))
    assert got.shape == (5, num_classes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], 0.0)
    grad = jax.grad(lambda e: jnp.sum(clf(e)))(jnp.asarray(emb))
    assert np.all(np.isfinite(np.asarray(grad)))  # also at the zero embedding


def test_cosine_classifier_init_and_torch_key():
    clf = CosineClassifier(512, 1000, rngs=nnx.Rngs(0))
    w = np.asarray(clf.weight[...])
    bound = np.sqrt(6.0 / (512 + 1000))  # xavier-uniform, like the reference ArcFace weight
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.01 * bound
    keys = torch_key_map(clf, "classifier.")
    assert list(keys) == ["classifier.weight"]
    weight = torch.empty(1000, 512)
    torch.nn.init.xavier_uniform_(weight, generator=torch.Generator().manual_seed(0))
    load_torch_state(clf, {"classifier.weight": weight.numpy()}, prefix="classifier.")
    np.testing.assert_array_equal(np.asarray(clf.weight[...]), weight.numpy())  # same layout


def test_whole_model_key_set_equals_reference_manifest():
    """base.* + fcneck + fcneck_bn (RetrievalModel) + classifier.weight == the whole-model
    manifest of the reference, except the unused ImageNet base.fc."""
    abstract = nnx.eval_shape(lambda: create("se_resnet101_ibn_a", rngs=nnx.Rngs(0)))
    clf = nnx.eval_shape(lambda: CosineClassifier(512, 1000, rngs=nnx.Rngs(0)))
    expected = {k: s for k, s in common.manifest_shapes("se_resnet101_ibn_a_full").items()
                if not k.startswith("base.fc.")}
    targets = {**torch_key_map(abstract), **torch_key_map(clf, "classifier.")}
    assert set(targets) == set(expected)
    for key, target in targets.items():
        var = target.variable()
        shape = () if var is None else target.param.to_torch(np.empty(var.shape, np.uint8)).shape
        assert tuple(shape) == expected[key], key


@pytest.fixture(scope="module")
def tiny():
    return create("resnet_tiny", rngs=nnx.Rngs(0))


def test_retrieval_model_head_structure(tiny):
    assert isinstance(tiny, RetrievalModel)
    assert tiny.base.num_features == 512
    assert tiny.fcneck.bias is None
    assert isinstance(tiny.fcneck_bn.bias, FrozenParam)
    np.testing.assert_array_equal(np.asarray(tiny.fcneck_bn.bias[...]), 0.0)
    # The neck bias is not a trainable Param (it stays 0, as in the reference).
    trainable = nnx.state(tiny, nnx.Param)
    assert "bias" not in trainable["fcneck_bn"]
    bound = np.sqrt(6.0 / (512 + 512))  # xavier-uniform fcneck
    k = np.asarray(tiny.fcneck.kernel[...])
    assert k.shape == (512, 512) and np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound


def test_embed_is_normalised_output_and_features_shape(tiny):
    tiny.eval()
    x = jnp.asarray(common.structured_inputs(2, 72, seed=0))
    out = tiny(x)
    emb = tiny.embed(x)
    assert out.shape == emb.shape == (2, 512) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(emb),
                               np.asarray(out) / np.linalg.norm(np.asarray(out), axis=1,
                                                                keepdims=True), rtol=1e-5,
                               atol=1e-7)
    assert tiny.features(x).shape == (2, 5, 5, 512)  # output stride 16, rounded up


def test_train_forward_under_jit_matches_eager_and_updates_stats():
    model = create("resnet_tiny", rngs=nnx.Rngs(1))
    model.train()
    x = jnp.asarray(common.structured_inputs(4, 64, seed=1))
    stats_before = [np.array(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    out_jit, new_state = forward(state, x)
    eager = nnx.merge(graphdef, state)
    out_eager = eager(x)
    # The neck BN (batch statistics over 4 samples) amplifies rounding differences between the
    # fused and the eager computation in low-variance channels: L2 error 1e-4, max error 1e-3.
    rel, rel_max = common.rel_err(np.asarray(out_jit), np.asarray(out_eager))
    assert rel < 1e-4 and rel_max < 1e-3, (rel, rel_max)
    stats_jit = jax.tree.leaves(nnx.state(nnx.merge(graphdef, new_state), nnx.BatchStat))
    stats_eager = jax.tree.leaves(nnx.state(eager, nnx.BatchStat))
    for a, b, c in zip(stats_jit, stats_eager, stats_before, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        assert not np.allclose(np.asarray(a), c)
    # Evaluation mode uses and keeps the running statistics.
    eager.eval()
    before = jax.tree.leaves(nnx.state(eager, nnx.BatchStat))
    eager(x)
    for a, b in zip(before, jax.tree.leaves(nnx.state(eager, nnx.BatchStat)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_avgmax_pooling_and_learnable_p_models():
    model = create("resnet_tiny", pooling="avgmax", embed_dim=64, rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(common.structured_inputs(2, 64, seed=2))
    feats = np.asarray(model.features(x))
    pooled = feats.mean(axis=(1, 2)) + feats.max(axis=(1, 2))
    want = np.asarray(model.fcneck_bn(model.fcneck(jnp.asarray(pooled))))
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-6)
    learn = create("resnet_tiny", learnable_p=True, gem_p=2.5, rngs=nnx.Rngs(0))
    assert float(nnx.state(learn, nnx.Param)["pool"]["p"][...]) == 2.5
    with pytest.raises(ValueError, match="pooling"):
        create("resnet_tiny", pooling="max")


def test_float16_and_bfloat16_forward_close_to_float32():
    x = jnp.asarray(common.structured_inputs(2, 64, seed=3))
    ref = create("resnet_tiny", rngs=nnx.Rngs(5))
    ref.eval()
    want = np.asarray(ref(x))
    state = nnx.state(ref)
    for dtype in (jnp.float16, jnp.bfloat16):
        model = create("resnet_tiny", dtype=dtype, rngs=nnx.Rngs(5))
        nnx.update(model, state)
        model.eval()
        # One compiled program per dtype: faster here than compiling each op eagerly.
        feats, got = nnx.jit(lambda m, x: (m.features(x), m(x)))(model, x)
        assert feats.dtype == dtype
        got = np.asarray(got)
        assert got.dtype == np.float32 and np.all(np.isfinite(got))
        rel, _ = common.rel_err(got, want)
        assert rel < 5e-2, (dtype, rel)
