"""ResNet-family backbones (ResNet-50, IBN-a, SE, ResNeXt) with PyTorch numerics, NHWC.

Attribute names equal those of the reference PyTorch modules (``conv1``, ``bn1``,
``layer1``..``layer4``, ``downsample`` with PyTorch Sequential indices, ``bn1.IN``/``bn1.BN``
for IBN-a, ``se.fc.0``/``se.fc.2`` for squeeze-and-excitation), so ``lmr_jax.convert`` maps a
PyTorch ``state_dict`` onto these models by name. The unused ImageNet ``fc`` of some reference
classes is not built (drop ``fc.*`` when loading their checkpoints).

All backbones map (B, H, W, 3) to (B, H/16, W/16, num_features) with ``last_stride=1`` (the
reference's output stride 16) and to (B, H/32, W/32, num_features) with ``last_stride=2``.
Sizes are PyTorch's: each stride-2 stage gives ``ceil(size / 2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.models import layers
from lmr_jax.models.registry import register_backbone

Array = jax.Array
DType = Any

# Shortcut layouts of the first block of a stage whose shape changes.
SHORTCUT_CONV = "conv"  # conv 1x1 with the block's stride -> BN (torchvision, IBN-Net, SENet)
SHORTCUT_AVGPOOL = "avgpool"  # stride > 1: AvgPool2d(s, s) -> conv 1x1 -> BN (reference resnet50)
EXPANSION = 4  # bottleneck output channels = planes * EXPANSION


class SELayer(nnx.Module):
    """Squeeze-and-excitation: x * sigmoid(fc(mean_hw(x))), fc = Linear -> ReLU -> Linear.

    (B, H, W, C) -> (B, H, W, C). Both Linears have no bias; the hidden width is C // reduction.
    """

    def __init__(self, channels: int, reduction: int = 16, *, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        hidden = channels // reduction
        self.fc = layers.Sequential([
            layers.Linear(channels, hidden, use_bias=False, dtype=dtype, rngs=rngs),
            layers.ReLU(),
            layers.Linear(hidden, channels, use_bias=False, dtype=dtype, rngs=rngs),
        ])

    def __call__(self, x: Array) -> Array:
        squeezed = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        gate = jax.nn.sigmoid(self.fc(squeezed).astype(jnp.float32))
        return x * gate[:, None, None, :].astype(x.dtype)


class Bottleneck(nnx.Module):
    """Bottleneck block: 1x1 -> 3x3 (stride, groups) -> 1x1 [-> SE] + shortcut -> ReLU.

    The ResNet v1.5 block of every ResNet-family backbone here (reference, torchvision, IBN-a,
    SE, ResNeXt and Baidu's vd models). (B, H, W, inplanes) -> (B, ceil(H / stride),
    ceil(W / stride), outplanes).

    Args:
      inplanes, width, outplanes: input, inner (1x1 and 3x3 convs) and output channels.
      stride: stride of the 3x3 conv (and of the shortcut).
      groups: groups of the 3x3 conv (ResNeXt cardinality).
      ibn: IBN-a (InstanceNorm on the first half of the channels) in place of ``bn1``.
      se: the squeeze-and-excitation gate ``se`` on the residual branch, or None.
      downsample: the shortcut module, or None for the identity.
    """

    def __init__(self, inplanes: int, width: int, outplanes: int, *, stride: int = 1,
                 groups: int = 1, ibn: bool = False, se: nnx.Module | None = None,
                 downsample: layers.Sequential | None = None, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        self.conv1 = layers.Conv2d(inplanes, width, 1, dtype=dtype, rngs=rngs)
        self.bn1 = (layers.IBN(width, dtype=dtype, rngs=rngs) if ibn
                    else layers.BatchNorm(width, dtype=dtype))
        self.conv2 = layers.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups,
                                   dtype=dtype, rngs=rngs)
        self.bn2 = layers.BatchNorm(width, dtype=dtype)
        self.conv3 = layers.Conv2d(width, outplanes, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(outplanes, dtype=dtype)
        self.se = se
        self.downsample = downsample

    def __call__(self, x: Array) -> Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        if shortcut.shape != out.shape:
            raise ValueError(
                f"shortcut shape {shortcut.shape} != residual shape {out.shape} for input "
                f"{x.shape}: a floor-mode average-pool shortcut (the reference resnet50 layout) "
                "needs even feature-map sizes before each stride-2 stage, i.e. input height and "
                "width divisible by 16")
        return jax.nn.relu(out + shortcut.astype(out.dtype))


def _shortcut(inplanes: int, outplanes: int, stride: int, kind: str, dtype: DType,
              rngs: nnx.Rngs) -> layers.Sequential:
    """The projection shortcut of a stage's first block (PyTorch Sequential indices)."""
    if kind == SHORTCUT_AVGPOOL and stride != 1:
        return layers.Sequential([
            layers.AvgPool2d(stride, stride),
            layers.Conv2d(inplanes, outplanes, 1, dtype=dtype, rngs=rngs),
            layers.BatchNorm(outplanes, dtype=dtype),
        ])
    if kind not in (SHORTCUT_CONV, SHORTCUT_AVGPOOL):
        raise ValueError(f"unknown shortcut kind {kind!r}; expected 'conv' or 'avgpool'")
    return layers.Sequential([
        layers.Conv2d(inplanes, outplanes, 1, stride=stride, dtype=dtype, rngs=rngs),
        layers.BatchNorm(outplanes, dtype=dtype),
    ])


def bottleneck_stages(inplanes: int, *, blocks: Sequence[int], widths: Sequence[int],
                      outplanes: Sequence[int], strides: Sequence[int], groups: int = 1,
                      ibn: Sequence[bool] = (False, False, False, False),
                      make_se: Callable[[int], nnx.Module | None],
                      make_shortcut: Callable[[int, int, int], layers.Sequential],
                      dtype: DType, rngs: nnx.Rngs) -> list[nnx.List]:
    """The four stages of Bottlenecks of a ResNet-family backbone.

    Stage i has ``blocks[i]`` blocks of inner width ``widths[i]`` and ``outplanes[i]`` output
    channels; its first block has stride ``strides[i]`` and, where the stride or the channel
    count changes, the shortcut ``make_shortcut(in, out, stride)``; every block gets the SE
    gate ``make_se(out)`` (None: none) and, where ``ibn[i]``, IBN-a in ``bn1``.
    """
    stages = []
    for i in range(4):
        stage = []
        for j in range(blocks[i]):
            stride = strides[i] if j == 0 else 1
            downsample = (make_shortcut(inplanes, outplanes[i], stride)
                          if stride != 1 or inplanes != outplanes[i] else None)
            stage.append(Bottleneck(
                inplanes, widths[i], outplanes[i], stride=stride, groups=groups, ibn=ibn[i],
                se=make_se(outplanes[i]), downsample=downsample, dtype=dtype, rngs=rngs))
            inplanes = outplanes[i]
        stages.append(nnx.List(stage))
    return stages


class ResNet(layers.FourStageBackbone):
    """Bottleneck ResNet backbone without the classifier.

    Stem: conv 7x7/2/p3 -> BN -> ReLU -> max-pool 3x3/2/p1; then ``layer1``..``layer4`` (each an
    ``nnx.List`` of Bottlenecks) with planes ``base_planes * (1, 2, 4, 8)`` and strides
    ``(1, 2, 2, last_stride)``.

    Args:
      blocks: number of blocks per stage, e.g. (3, 4, 6, 3).
      last_stride: stride of layer4 (1: output stride 16; 2: output stride 32).
      shortcut: ``"conv"`` (strided 1x1 conv -> BN) or ``"avgpool"`` (AvgPool2d(s, s) -> 1x1
        conv -> BN when the stride is s > 1, as the reference resnet50 does in layer2/3; with
        last_stride 2 layer4 gets the same average-pool shortcut).
      groups, base_width: ResNeXt cardinality and per-group width (1, 64 for ResNet).
      ibn: per stage, whether ``bn1`` of its blocks is IBN-a.
      se_reduction: squeeze-and-excitation in every block with this reduction (None: off).
      base_planes: planes of layer1 (64 for the standard models); also the stem width.
      dtype: computation dtype; parameters are float32.
    Attributes:
      num_features: channels of the output map (``base_planes * 8 * 4``).
    """

    def __init__(self, blocks: Sequence[int], *, last_stride: int = 1,
                 shortcut: str = SHORTCUT_CONV, groups: int = 1, base_width: int = 64,
                 ibn: Sequence[bool] = (False, False, False, False),
                 se_reduction: int | None = None, base_planes: int = 64,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs):
        if len(blocks) != 4 or len(ibn) != 4:
            raise ValueError(f"expected 4 stages, got blocks={blocks}, ibn={ibn}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.dtype = dtype
        self.conv1 = layers.Conv2d(3, base_planes, 7, stride=2, padding=3, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(base_planes, dtype=dtype)
        planes = [base_planes * 2 ** i for i in range(4)]

        def make_se(channels: int) -> SELayer | None:
            return (SELayer(channels, se_reduction, dtype=dtype, rngs=rngs)
                    if se_reduction is not None else None)

        stages = bottleneck_stages(
            base_planes, blocks=blocks, widths=[int(p * (base_width / 64.0)) * groups
                                                for p in planes],
            outplanes=[p * EXPANSION for p in planes], strides=(1, 2, 2, last_stride),
            groups=groups, ibn=ibn, make_se=make_se,
            make_shortcut=lambda i, o, st: _shortcut(i, o, st, shortcut, dtype, rngs),
            dtype=dtype, rngs=rngs)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = planes[3] * EXPANSION


_IBN_A = (True, True, True, False)


@register_backbone("resnet50")
def resnet50(*, last_stride: int = 1, dtype: DType = jnp.float32, rngs: nnx.Rngs) -> ResNet:
    """The reference code's ResNet-50: average-pool shortcuts where the stride is 2."""
    return ResNet((3, 4, 6, 3), last_stride=last_stride, shortcut=SHORTCUT_AVGPOOL,
                  dtype=dtype, rngs=rngs)


@register_backbone("resnet50_torchvision")
def resnet50_torchvision(*, last_stride: int = 1, dtype: DType = jnp.float32,
                         rngs: nnx.Rngs) -> ResNet:
    """torchvision's ResNet-50 (v1.5, strided 1x1 shortcut convs), without ``fc``."""
    return ResNet((3, 4, 6, 3), last_stride=last_stride, shortcut=SHORTCUT_CONV,
                  dtype=dtype, rngs=rngs)


@register_backbone("resnet101_ibn_a")
def resnet101_ibn_a(*, last_stride: int = 1, dtype: DType = jnp.float32,
                    rngs: nnx.Rngs) -> ResNet:
    """ResNet-101-IBN-a: IBN in ``bn1`` of every block of layer1..layer3."""
    return ResNet((3, 4, 23, 3), last_stride=last_stride, ibn=_IBN_A, dtype=dtype, rngs=rngs)


@register_backbone("resnext101_ibn_a")
def resnext101_ibn_a(*, last_stride: int = 1, dtype: DType = jnp.float32,
                     rngs: nnx.Rngs) -> ResNet:
    """ResNeXt-101-IBN-a 32x4d (the reference hard-codes last_stride 1; 1 is the default)."""
    return ResNet((3, 4, 23, 3), last_stride=last_stride, groups=32, base_width=4, ibn=_IBN_A,
                  dtype=dtype, rngs=rngs)


@register_backbone("se_resnet101_ibn_a")
def se_resnet101_ibn_a(*, last_stride: int = 1, dtype: DType = jnp.float32,
                       rngs: nnx.Rngs) -> ResNet:
    """SE-ResNet-101-IBN-a: SE (reduction 16) in all blocks (reference: last_stride 1 fixed)."""
    return ResNet((3, 4, 23, 3), last_stride=last_stride, ibn=_IBN_A, se_reduction=16,
                  dtype=dtype, rngs=rngs)


@register_backbone("resnet_tiny")
def resnet_tiny(*, last_stride: int = 1, dtype: DType = jnp.float32, rngs: nnx.Rngs) -> ResNet:
    """A small ResNet for demos and tests: one bottleneck per stage, 16 base planes, 512 out.

    About 0.5 M parameters; any input size works (strided-conv shortcuts).
    """
    return ResNet((1, 1, 1, 1), last_stride=last_stride, base_planes=16, dtype=dtype, rngs=rngs)
