"""Parity of the ResNet-family models with independent PyTorch references.

For each architecture: the PyTorch reference in tests/torch_reference (written from the manifests
README) gets deterministic random weights, its state_dict keys are checked against the manifest,
it is converted with lmr_jax.convert.mapping.load_torch_state, and the stem, layer1..layer4 maps
and the whole-model embedding (GeM -> fcneck -> fcneck_bn, eval mode) are compared at two input
sizes (one not a multiple of 32, giving odd feature-map sizes) with inputs whose spatial
structure differs per sample. NNX models run eagerly: on XLA:CPU that is much faster here than
compiling a 100+ layer graph for each size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lmr_jax.convert.mapping import export_torch_state, load_torch_state, torch_key_map
from lmr_jax.models import create, list_models
from lmr_jax.models.registry import zero_initialised
from lmr_jax.models.resnet import SHORTCUT_AVGPOOL, ResNet
from tests.torch_reference import common
from tests.torch_reference import resnet as torch_resnet

TOL = 1e-4
BATCH = 2
# Input sizes per arch: the second is not a multiple of 32 (odd layer3/layer4 maps). The
# reference resnet50 layout needs sizes divisible by 16 (its 2x2 average-pool shortcuts).
SIZES = {
    "resnet50": (64, 80),
    "resnet50_torchvision": (64, 72),
    "resnet101_ibn_a": (64, 72),
    "resnext101_ibn_a": (64, 72),
    "se_resnet101_ibn_a": (64, 72),
}
# The reference backbones that carry an unused ImageNet classifier ``fc``; ours do not build it.
UNUSED_FC = {"resnext101_ibn_a", "se_resnet101_ibn_a"}
NECK_KEYS = {"fcneck.weight", "fcneck_bn.weight", "fcneck_bn.bias", "fcneck_bn.running_mean",
             "fcneck_bn.running_var", "fcneck_bn.num_batches_tracked"}


def build_untrained(name: str, **options) -> nnx.Module:
    """``create(name)`` without random initialisation (zeros; every entry is then loaded)."""
    return zero_initialised(lambda: create(name, rngs=nnx.Rngs(0), **options))


def build_pair(arch: str, seed: int, last_stride: int = 1, dtype=jnp.float32):
    """(torch whole model in eval mode, converted NNX model in eval mode)."""
    ref = common.RetrievalHead(torch_resnet.BUILDERS[arch](last_stride)).eval()
    common.randomize_(ref, seed)
    model = build_untrained(arch, last_stride=last_stride, dtype=dtype)
    load_torch_state(model, common.numpy_state(ref), drop=["base.fc.*"], context=arch)
    model.eval()
    return ref, model



def nnx_forward(model, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Stage outputs and embedding of the NNX model (each BN is called exactly once)."""
    stages = model.base.stage_outputs(jnp.asarray(x))
    emb = model.fcneck_bn(model.fcneck(model.pool(stages[-1])))
    return [np.asarray(s) for s in stages], np.asarray(emb)


@pytest.fixture(scope="module", params=list(SIZES))
def parity(request):
    arch = request.param
    ref, model = build_pair(arch, seed=1)
    results = {}
    for i, size in enumerate(SIZES[arch]):
        x = common.structured_inputs(BATCH, size, seed=10 + i)
        results[size] = (common.torch_forward(ref, x), nnx_forward(model, x), model(jnp.asarray(x)))
    return arch, ref, model, results


def _torch_keys_expected(arch: str) -> dict[str, tuple[int, ...]]:
    """The manifest entries of arch (torchvision: resnet50's with the torchvision shortcut)."""
    if arch != "resnet50_torchvision":
        return common.manifest_shapes(arch)
    renamed = {}
    for key, shape in common.manifest_shapes("resnet50").items():
        for layer in ("layer2", "layer3"):
            for old, new in ((".downsample.1.", ".downsample.0."), (".downsample.2.", ".downsample.1.")):
                if key.startswith(f"{layer}.0{old}"):
                    key = key.replace(old, new)
        renamed[key] = shape
    return renamed


def test_torch_reference_keys_equal_manifest(parity):
    arch, ref, _, _ = parity
    assert common.state_shapes(ref.base) == _torch_keys_expected(arch)


def test_nnx_key_set_equals_manifest(parity):
    arch, _, model, _ = parity
    expected = {k: s for k, s in _torch_keys_expected(arch).items()
                if not (arch in UNUSED_FC and k.startswith("fc."))}
    base_map = torch_key_map(model.base)
    assert set(base_map) == set(expected)
    exported = export_torch_state(model.base)
    assert {k: tuple(v.shape) for k, v in exported.items()} == expected
    assert set(torch_key_map(model)) == {"base." + k for k in expected} | NECK_KEYS


def test_param_count_equals_manifest(parity):
    arch, _, model, _ = parity
    if arch == "resnet50_torchvision":
        manifest = common.load_manifest("resnet50")  # same parameter shapes, other indices
    else:
        manifest = common.load_manifest(arch)
    unused_fc = 2048 * 1000 + 1000 if arch in UNUSED_FC else 0
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model.base, nnx.Param)))
    assert count == manifest["num_parameters"] - unused_fc


def test_stage_outputs_match_torch(parity):
    arch, _, _, results = parity
    for size, ((t_stages, _), (j_stages, _), _) in results.items():
        assert len(t_stages) == len(j_stages) == 5
        for name, t, j in zip(["stem", "layer1", "layer2", "layer3", "layer4"], t_stages, j_stages,
                              strict=True):
            assert j.shape == t.shape, (arch, size, name)
            rel, rel_max = common.rel_err(j, t)
            assert rel < TOL and rel_max < TOL, (arch, size, name, rel, rel_max)
        # The output stride is 16 with last_stride 1, rounding up like PyTorch.
        assert t_stages[-1].shape == (BATCH, -(-size // 16), -(-size // 16), 2048)


def test_embedding_matches_torch(parity):
    arch, _, _, results = parity
    for size, ((_, t_emb), (_, j_emb), model_emb) in results.items():
        assert model_emb.shape == (BATCH, 512) and model_emb.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(model_emb), j_emb)  # __call__ == the parts
        rel, rel_max = common.rel_err(j_emb, t_emb)
        assert rel < TOL and rel_max < TOL, (arch, size, rel, rel_max)
        # The per-sample differences are far above the tolerance, so a bug that mixes samples
        # (batch statistics where per-sample ones belong) could not pass.
        assert np.linalg.norm(t_emb[0] - t_emb[1]) / np.linalg.norm(t_emb) > 100 * TOL


def test_registry_lists_resnet_family():
    assert set(SIZES) | {"resnet_tiny"} <= set(list_models())


def test_avgpool_shortcut_rejects_sizes_it_cannot_take():
    """The reference resnet50 layout (2x2 average-pool shortcuts) needs even maps before the
    stride-2 stages; a clear error instead of a broadcasting failure (small model, same code;
    the shapes of resnet_tiny in test_heads, so eager kernels are mostly compiled already)."""
    model = ResNet((1, 1, 1, 1), base_planes=16, shortcut=SHORTCUT_AVGPOOL, rngs=nnx.Rngs(0))
    model.eval()
    assert {"layer2.0.downsample.1.weight", "layer3.0.downsample.2.weight",
            "layer4.0.downsample.0.weight"} <= set(torch_key_map(model))
    assert model(jnp.zeros((2, 64, 64, 3))).shape == (2, 4, 4, 512)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(jnp.zeros((2, 72, 72, 3)))


def test_last_stride_2():
    """last_stride 2: output stride 32; the reference resnet50 layout then gets the average-pool
    shortcut in layer4 too (the others keep a strided 1x1 conv there)."""
    ref, model = build_pair("resnet50", seed=3, last_stride=2)
    keys = set(torch_key_map(model.base))
    assert {"layer4.0.downsample.1.weight", "layer4.0.downsample.2.running_var"} <= keys
    assert keys == set(common.state_shapes(ref.base))
    x = common.structured_inputs(BATCH, 64, seed=4)
    t_stages, t_emb = common.torch_forward(ref, x)
    j_stages, j_emb = nnx_forward(model, x)
    assert j_stages[-1].shape == t_stages[-1].shape == (BATCH, 2, 2, 2048)
    for t, j in ((t_stages[-1], j_stages[-1]), (t_emb, j_emb)):
        rel, rel_max = common.rel_err(j, t)
        assert rel < TOL and rel_max < TOL, (rel, rel_max)
    for arch in ("resnet50_torchvision", "resnet101_ibn_a", "resnext101_ibn_a",
                 "se_resnet101_ibn_a"):
        abstract = nnx.eval_shape(lambda a=arch: create(a, last_stride=2, rngs=nnx.Rngs(0)))
        keys = set(torch_key_map(abstract.base))
        assert "layer4.0.downsample.0.weight" in keys and "layer4.0.downsample.2.weight" not in keys
        assert abstract.base.layer4[0].conv2.stride == 2


def test_train_mode_forward_and_running_stats_resnet101_ibn_a():
    """Batch statistics (BN) and per-sample statistics (IBN's InstanceNorm) in training mode,
    and PyTorch's running-statistics update (momentum 0.1, unbiased variance)."""
    arch = "resnet101_ibn_a"
    ref, model = build_pair(arch, seed=5)
    ref.train()
    model.train()
    before = common.numpy_state(ref)
    # Batch 2 at 64 px reuses the eager kernels compiled for the eval tests (a third sample
    # would recompile every conv). The neck BN normalises over the 2 samples, which makes its
    # output very sensitive to its input in channels where the two nearly agree: the float32
    # rounding of the neck's matrix product (XLA's and PyTorch's sum in different orders)
    # reached a relative error of 1.4e-4 on the AMD EPYC machine. So each part of the neck
    # gets the torch input of that part: the linear layer the torch pooled features, the BN
    # the torch linear output; the backbones are compared up to the pooled features.
    x = common.structured_inputs(BATCH, 64, seed=6)
    with torch.no_grad():
        t_stages = ref.base.stages(common.nhwc_to_nchw(x))
        t_pooled = common.gem(t_stages[-1])
        t_fc = ref.fcneck(t_pooled)
        t_emb = ref.fcneck_bn(t_fc).numpy()
    j_stages = model.base.stage_outputs(jnp.asarray(x))
    j_pooled = model.pool(j_stages[-1])
    j_fc = model.fcneck(jnp.asarray(t_pooled.numpy()))
    j_emb = model.fcneck_bn(jnp.asarray(t_fc.numpy()))
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "pooled", "neck linear", "embedding"]
    for name, t, j in zip(names, [common.nchw_to_nhwc(s) for s in t_stages]
                          + [t_pooled.numpy(), t_fc.numpy(), t_emb],
                          j_stages + [j_pooled, j_fc, j_emb], strict=True):
        rel, rel_max = common.rel_err(np.asarray(j), t)
        assert rel < TOL and rel_max < TOL, (name, rel, rel_max)
    t_state = common.numpy_state(ref)
    j_state = export_torch_state(model)
    running = sorted(k for k in t_state if k.endswith(("running_mean", "running_var")))
    assert running == sorted(k for k in j_state if k.endswith(("running_mean", "running_var")))
    assert len(running) == 2 * (1 + 3 * 33 + 4 + 1)  # stem, 3 per block, 4 shortcuts, neck
    for key in running:
        assert not np.allclose(t_state[key], before[key]), key  # the update happened
        np.testing.assert_allclose(j_state[key], t_state[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_gradients_under_jit_match_torch():
    """Training differentiates under jit through every layer kind (max-pool stem, average-pool
    shortcuts, strided conv shortcut, BN in training mode): parameter and input gradients of a
    small reference-layout ResNet against torch autograd."""
    ref = torch_resnet.ResNetReference((1, 1, 1, 1), avgpool_shortcut=True, base=16)
    common.randomize_(ref, 11)
    ref.train()
    model = ResNet((1, 1, 1, 1), base_planes=16, shortcut=SHORTCUT_AVGPOOL, rngs=nnx.Rngs(0))
    load_torch_state(model, common.numpy_state(ref))
    model.train()
    x = common.structured_inputs(BATCH, 64, seed=12)
    w = np.random.default_rng(13).standard_normal((BATCH, 4, 4, 512)).astype(np.float32)

    xt = common.nhwc_to_nchw(x).requires_grad_()
    (ref(xt) * common.nhwc_to_nchw(w)).sum().backward()
    t_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, x):
        return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x) * w)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 2)))(params, rest, jnp.asarray(x))
    j_grads = export_torch_state(nnx.merge(graphdef, g_params, rest, copy=True))
    assert set(t_grads) <= set(j_grads)
    for key, t in t_grads.items():
        rel, _ = common.rel_err(j_grads[key], t)
        assert rel < TOL, (key, rel)
    rel, rel_max = common.rel_err(np.asarray(g_x), common.nchw_to_nhwc(xt.grad))
    assert rel < TOL and rel_max < TOL, (rel, rel_max)


def test_bfloat16_forward_close_to_float32():
    ref, model = build_pair("resnet50", seed=7, dtype=jnp.bfloat16)
    x = common.structured_inputs(BATCH, 64, seed=8)
    _, t_emb = common.torch_forward(ref, x)
    stages = model.base.stage_outputs(jnp.asarray(x))
    assert stages[-1].dtype == jnp.bfloat16
    emb = model(jnp.asarray(x))
    assert emb.dtype == jnp.float32
    rel, _ = common.rel_err(np.asarray(emb), t_emb)
    assert rel < 3e-2, rel  # measured: 6.6e-3
