"""Parity of Baidu's GLR2019 backbones and heads with independent PyTorch references.

The references (tests/torch_reference/baidu.py, written from the architecture facts) get
deterministic random weights (``common.randomize_``: well-conditioned BN statistics, small
residual-branch gammas), are converted with ``load_torch_state`` and every stage output plus the
head output (eval mode) is compared at two input sizes, one non-square.

Depth: the ResNet-vd and SE-ResNeXt-vd parity runs use reduced depths built with the same
classes (``ResNetVd(blocks=...)``) at full widths: they contain every block type (stage-1 plain
shortcut, average-pool shortcuts, identity blocks, SE, 64 groups). Full depths are checked for
their key sets and shapes against the references (abstract models: ``nnx.eval_shape`` and torch
on the meta device) and with one full-depth ResNet-152-vd forward at 64x64. Inception-v4 has no
depth knob and runs at full depth at 75x75 (its smallest input) and 107x83.

ResNet sizes are multiples of 32, the sizes Baidu fed its models (where Paddle's floor-mode
shortcut pool equals the ceil mode both implementations use).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lmr_jax.convert.mapping import load_torch_state, torch_key_map
from lmr_jax.models import create_backbone, list_models
from lmr_jax.models.baidu_heads import (
    SOFTMAX_V1_HIDDEN,
    BaiduClassifierModel,
    BaiduRetrievalModel,
)
from lmr_jax.models.inception_v4 import InceptionV4
from lmr_jax.models.registry import zero_initialised
from lmr_jax.models.resnet_vd import ResNetVd
from tests.torch_reference import baidu, common

TOL = 1e-4
BATCH = 2
RESNET_SIZES = ((64, 64), (96, 64))
INCEPTION_SIZES = ((75, 75), (107, 83))

SE_KW = dict(stem_widths=(64, 64, 128), widths=(256, 512, 1024, 2048), expansion=1, groups=64,
             se_reduction=16)
SE_REF_KW = dict(stem=(64, 64, 128), widths=(256, 512, 1024, 2048), expansion=1, groups=64,
                 se_reduction=16)
# name -> (torch backbone, NNX backbone builder, sizes); reduced depths for the ResNets.
CASES = {
    "resnet_vd": (lambda: baidu.TorchResNetVd((2, 2, 2, 2)),
                  lambda: ResNetVd((2, 2, 2, 2), rngs=nnx.Rngs(0)), RESNET_SIZES),
    "se_resnext_vd": (lambda: baidu.TorchResNetVd((1, 2, 1, 1), **SE_REF_KW),
                      lambda: ResNetVd((1, 2, 1, 1), **SE_KW, rngs=nnx.Rngs(0)), RESNET_SIZES),
    "inception_v4": (baidu.TorchInceptionV4, lambda: InceptionV4(rngs=nnx.Rngs(0)),
                     INCEPTION_SIZES),
}
FULL = {"resnet152_vd": baidu.resnet152_vd, "resnet200_vd": baidu.resnet200_vd,
        "se_resnext152_64x4d_vd": baidu.se_resnext152_64x4d_vd,
        "inception_v4": baidu.TorchInceptionV4}
# Parameters of the full backbones (timm's resnet152d / resnet200d / inception_v4 without
# their 1000-class fc have the same counts); SE: counted from the layer list.
PARAM_COUNTS = {"resnet152_vd": 58_163_040, "resnet200_vd": 72_689_504,
                "se_resnext152_64x4d_vd": 119_688_048, "inception_v4": 41_142_816}


def make_inputs(size: tuple[int, int], seed: int, batch: int = BATCH) -> np.ndarray:
    h, w = size
    return np.ascontiguousarray(common.structured_inputs(batch, max(h, w), seed)[:, :h, :w])


def build_pair(torch_head, nnx_head, seed: int):
    """(torch model, NNX model) with the same random weights, both in eval mode."""
    ref = common.randomize_(torch_head(), seed).eval()
    model = zero_initialised(nnx_head)
    load_torch_state(model, common.numpy_state(ref))
    model.eval()
    return ref, model


def torch_run(ref, x: np.ndarray):
    with torch.no_grad():
        stages, out = ref.forward_stages(common.nhwc_to_nchw(x))
    return [common.nchw_to_nhwc(s) for s in stages], out.numpy()


def assert_close(j, t, what):
    assert j.shape == t.shape, (what, j.shape, t.shape)
    rel, rel_max = common.rel_err(j, t)
    assert rel < TOL and rel_max < TOL, (what, rel, rel_max)


@pytest.fixture(scope="module", params=list(CASES))
def parity(request):
    name = request.param
    torch_base, nnx_base, sizes = CASES[name]
    ref, model = build_pair(
        lambda: baidu.TorchBaiduRetrieval(torch_base(), 1536 if name == "inception_v4" else 2048),
        lambda: BaiduRetrievalModel(nnx_base(), rngs=nnx.Rngs(1)), seed=1)
    results = {}
    for i, size in enumerate(sizes):
        x = make_inputs(size, seed=10 + i)
        stages = model.base.stage_outputs(jnp.asarray(x))
        emb = model.fc(jnp.mean(stages[-1], axis=(1, 2)))
        results[size] = (torch_run(ref, x), ([np.asarray(s) for s in stages], np.asarray(emb)))
    return name, model, results


def test_stage_outputs_match_torch(parity):
    name, _, results = parity
    for size, ((t_stages, _), (j_stages, _)) in results.items():
        assert len(t_stages) == len(j_stages) == (6 if name == "inception_v4" else 5)
        for k, (t, j) in enumerate(zip(t_stages, j_stages, strict=True)):
            assert_close(j, t, (name, size, k))
            assert 0.05 < t.std() < 30, (name, size, k, t.std())  # realistic scales
        t = t_stages[-1]
        assert np.linalg.norm(t[0] - t[1]) / np.linalg.norm(t) > 100 * TOL


def test_output_sizes(parity):
    name, _, results = parity
    for (h, w), ((t_stages, _), _) in results.items():
        if name == "inception_v4":
            def reduce(n):
                n = (n - 3) // 2 + 1 - 2  # conv 3x3/2, conv 3x3
                n = (n - 3) // 2 + 1 - 2  # pool 3/2, 3x3 valid branches
                n = (n - 3) // 2 + 1  # the last stem reduction
                return [n, n, (n - 3) // 2 + 1, (n - 3) // 2 + 1,
                        ((n - 3) // 2 - 2) // 2 + 1, ((n - 3) // 2 - 2) // 2 + 1]
            hs, ws = reduce(h), reduce(w)
            chans = (384, 384, 1024, 1024, 1536, 1536)
            assert [s.shape for s in t_stages] == [
                (BATCH, a, b, c) for a, b, c in zip(hs, ws, chans, strict=True)]
        else:
            chans = (64, 256, 512, 1024, 2048) if name == "resnet_vd" else (
                128, 256, 512, 1024, 2048)
            strides = (4, 4, 8, 16, 32)
            assert [s.shape for s in t_stages] == [
                (BATCH, h // s, w // s, c) for s, c in zip(strides, chans, strict=True)]


def test_retrieval_head_matches_torch(parity):
    name, model, results = parity
    for size, ((_, t_emb), (_, j_emb)) in results.items():
        assert_close(j_emb, t_emb, (name, size))
        assert np.linalg.norm(t_emb[0] - t_emb[1]) / np.linalg.norm(t_emb) > 100 * TOL
    x = make_inputs(next(iter(results)), seed=10)
    raw = np.asarray(model(jnp.asarray(x)))  # __call__ = the parts composed; not normalised
    np.testing.assert_allclose(raw, results[next(iter(results))][1][1], rtol=1e-6, atol=1e-6)
    emb = np.asarray(model.embed(jnp.asarray(x)))
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


@pytest.mark.parametrize("hidden", [SOFTMAX_V1_HIDDEN, ()], ids=["softmax_v1", "softmax_v2"])
def test_classifier_heads_match_torch(hidden):
    num_classes = 37
    torch_base, nnx_base, sizes = CASES["resnet_vd"]
    ref, model = build_pair(
        lambda: baidu.TorchBaiduClassifier(baidu.TorchResNetVd((1, 1, 1, 1)), 2048, num_classes,
                                           hidden),
        lambda: BaiduClassifierModel(ResNetVd((1, 1, 1, 1), rngs=nnx.Rngs(0)), num_classes,
                                     hidden=hidden, rngs=nnx.Rngs(1)), seed=2)
    keys = {k for k in torch_key_map(model) if not k.startswith("base.")}
    assert keys == {f"classifier.{i}.{p}" for i in range(len(hidden) + 1)
                    for p in ("weight", "bias")}
    x = make_inputs(sizes[1], seed=3)
    _, t_prob = torch_run(ref, x)
    j_prob = np.asarray(model.probabilities(jnp.asarray(x)))
    assert j_prob.shape == (BATCH, num_classes)
    np.testing.assert_allclose(j_prob.sum(axis=1), 1.0, rtol=1e-5)
    assert_close(j_prob, t_prob, hidden)
    assert np.abs(t_prob[0] - t_prob[1]).max() > 100 * TOL * t_prob.max()


@pytest.mark.parametrize("arch", list(FULL))
def test_full_depth_keys_and_shapes_equal_reference(arch):
    """Full-depth models: the same state keys and shapes as the reference, abstractly."""
    abstract = nnx.eval_shape(lambda: create_backbone(arch, last_stride=2, rngs=nnx.Rngs(0)))
    targets = torch_key_map(abstract)
    mine = {}
    for key, target in targets.items():
        var = target.variable()
        if var is not None:
            mine[key] = tuple(target.param.to_torch(np.empty(var.shape, np.uint8)).shape)
    with torch.device("meta"):
        ref = FULL[arch]()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert mine == want
    assert sum(int(np.prod(s)) for k, s in want.items()
               if not k.endswith(("running_mean", "running_var"))) == PARAM_COUNTS[arch]
    assert abstract.num_features == (1536 if arch == "inception_v4" else 2048)


def test_registry_lists_baidu_backbones():
    assert set(FULL) <= set(list_models())


def test_full_depth_resnet152_vd_forward():
    """One full-depth forward (64x96, batch 1): deep stages of 36 blocks stay in parity."""
    ref = common.randomize_(baidu.resnet152_vd(), 4).eval()
    model = zero_initialised(lambda: create_backbone("resnet152_vd", last_stride=2,
                                                     rngs=nnx.Rngs(0)))
    load_torch_state(model, common.numpy_state(ref))
    model.eval()
    x = make_inputs((64, 96), seed=5, batch=1)
    with torch.no_grad():
        t = common.nchw_to_nhwc(ref.stages(common.nhwc_to_nchw(x))[-1])
    j = np.asarray(model(jnp.asarray(x)))
    assert_close(j, t, "resnet152_vd layer4")


def test_last_stride_1_keeps_layer4_resolution():
    """last_stride 1: layer4 at output stride 16, same parameters as Baidu's stride 2."""
    s2 = nnx.eval_shape(lambda: ResNetVd((1, 1, 1, 1), rngs=nnx.Rngs(0)))
    s1 = nnx.eval_shape(lambda: ResNetVd((1, 1, 1, 1), last_stride=1, rngs=nnx.Rngs(0)))
    assert jax.tree.map(lambda a: a.shape, nnx.state(s1)) == jax.tree.map(
        lambda a: a.shape, nnx.state(s2))
    model = ResNetVd((1, 1, 1, 1), last_stride=1, rngs=nnx.Rngs(0))
    model.eval()
    out = model(jnp.zeros((1, 64, 96, 3)))
    assert out.shape == (1, 4, 6, 2048)
    inc = nnx.eval_shape(lambda: InceptionV4(last_stride=1, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m: m(jnp.zeros((1, 107, 83, 3))), inc)
    assert out.shape == (1, 5, 3, 1536)  # reduction-A gives 5 x 3, reduction-B keeps it


def test_layers_match_paddle_ops():
    """The lmr_jax layers give Paddle's own outputs (tests/data/paddle/ops.npz, written by real
    Paddle) for the semantics the ports rely on, on an odd-sized 9x11 input: the (1, 7) conv
    padded (0, 3), the unpadded 3x3/2 conv, BN + ReLU with the moving statistics, the exclusive
    3x3/1/1 average pool, the unpadded 3x3/2 max pool and the ceil-mode exclusive 2x2/2 pool."""
    from lmr_jax.models import layers
    from lmr_jax.models.inception_v4 import ConvBNReLU

    with np.load(pathlib.Path(__file__).parent / "data" / "paddle" / "ops.npz") as f:
        data = {k: f[k] for k in f.files}
    x = jnp.asarray(data["__input__"].astype(np.float32).transpose(0, 2, 3, 1))

    def nchw(y):
        return np.asarray(y).transpose(0, 3, 1, 2)

    conv_1x7 = ConvBNReLU(4, 5, (1, 7), padding=(0, 3), rngs=nnx.Rngs(0))
    conv_1x7.conv.kernel[...] = jnp.asarray(data["conv_1x7_weights"].transpose(2, 3, 1, 0))
    for attr, name in (("scale", "bn_scale"), ("bias", "bn_offset"), ("mean", "bn_mean"),
                       ("var", "bn_variance")):
        getattr(conv_1x7.bn, attr)[...] = jnp.asarray(data[name])
    conv_1x7.eval()
    conv_3x3 = layers.Conv2d(4, 3, 3, stride=2, rngs=nnx.Rngs(0))
    conv_3x3.kernel[...] = jnp.asarray(data["conv_3x3_s2_weights"].transpose(2, 3, 1, 0))
    got = {
        "conv_1x7": conv_1x7.conv(x),
        "bn_relu": conv_1x7(x),
        "conv_3x3_s2": conv_3x3(x),
        "avg_3x3_exclusive": layers.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
        "max_3x3_s2": layers.max_pool2d(x, 3, 2, 0),
        "avg_2x2_ceil_exclusive": layers.AvgPool2d(2, 2, ceil_mode=True,
                                                   count_include_pad=False)(x),
    }
    for name, value in got.items():
        assert_close(nchw(value), data[f"__{name}__"], name)
    # Exclusive counting matters here: the padded (inclusive) average differs at the border.
    inclusive = nchw(layers.avg_pool2d(x, 3, 1, 1, count_include_pad=True))
    assert common.rel_err(inclusive, data["__avg_3x3_exclusive__"])[1] > 0.05
