"""ResNet-vd and SE-ResNeXt-vd backbones as Baidu built them for Google Landmark 2019, NHWC.

"vd" is the ResNet-D layout of "Bag of Tricks for Image Classification" (He et al., 2019):

* stem: three 3x3 conv-BN-ReLU (the first with stride 2), then max-pool 3x3/2/1;
* the stride of a stage sits on the bottleneck's 3x3 conv (v1.5);
* projection shortcuts wherever the stride or the channel count changes (the first block of
  every stage in Baidu's models): in the first stage a plain 1x1 conv + BN at stride 1; in a
  strided stage an average of 2x2 windows with stride 2 (padded cells not counted) before the
  1x1 conv + BN at stride 1.

Models (all convs without bias, BN eps 1e-5, inference with the running statistics):

* ``resnet152_vd`` / ``resnet200_vd``: stem 32/32/64, widths 64/128/256/512 with expansion 4
  (outputs 256/512/1024/2048), depths (3, 8, 36, 3) / (3, 12, 48, 3);
* ``se_resnext152_64x4d_vd`` (Paddle's "SENet154_vd"): stem 64/64/128, depths (3, 8, 36, 3),
  64-group 3x3 convs, no expansion (block outputs = inner widths 256/512/1024/2048) and a
  squeeze-and-excitation gate with biases (reduction 16) on every residual branch.

Attribute names follow the layout of timm's ``resnet*d`` models (``conv1`` is the stem
Sequential with indices 0/1/3/4/6, ``bn1``, ``layer1``..``layer4``, ``downsample.1`` /
``downsample.2``); Paddle checkpoints are mapped onto them by ``lmr_jax.convert.paddle_names``.

``last_stride``: Baidu's models use 2 (output stride 32, the default here). With 1, layer4
keeps the resolution (output stride 16) and its first block's shortcut has no average pool
(a plain 1x1 conv + BN); the parameters are the same, so the same weights load.

Sizes: the 3x3 convs give ``ceil(size / 2)``; the shortcut pool uses ceil mode, so any input
size works. Paddle's own graph pooled in floor mode, which gives the same sizes wherever it was
defined (even maps: Baidu padded its inputs to multiples of 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.models import layers
from lmr_jax.models.registry import register_backbone
from lmr_jax.models.resnet import bottleneck_stages

Array = jax.Array
DType = Any


class SqueezeExcitation(nnx.Module):
    """SE gate with biases: x * sigmoid(fc2(relu(fc1(mean_hw(x))))).

    (B, H, W, C) -> (B, H, W, C); ``fc1``: C -> int(C / reduction), ``fc2``: back to C, both
    Linears with bias. The squeeze is computed in float32.
    """

    def __init__(self, channels: int, reduction: int, *, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        hidden = int(channels / reduction)
        self.fc1 = layers.Linear(channels, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = layers.Linear(hidden, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        squeezed = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(squeezed))).astype(jnp.float32))
        return x * gate[:, None, None, :].astype(x.dtype)


def projection_shortcut(inplanes: int, outplanes: int, stride: int, *, dtype: DType,
                        rngs: nnx.Rngs) -> layers.Sequential:
    """The vd shortcut: [avg-pool stride x stride, exclusive, ceil mode] -> 1x1 conv -> BN.

    Index 0 is the pool (an identity for stride 1), 1 the conv, 2 the BN.
    """
    return layers.Sequential([
        layers.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
        layers.Conv2d(inplanes, outplanes, 1, dtype=dtype, rngs=rngs),
        layers.BatchNorm(outplanes, dtype=dtype),
    ])


class ResNetVd(layers.FourStageBackbone):
    """ResNet-vd / (SE-)ResNeXt-vd backbone without the classifier.

    Args:
      blocks: blocks per stage, e.g. (3, 8, 36, 3).
      stem_widths: channels of the three stem convs, e.g. (32, 32, 64).
      widths: inner width of the blocks of each stage, e.g. (64, 128, 256, 512).
      expansion: block output channels = width * expansion (4 for ResNet, 1 for the 64x4d
        SE-ResNeXt).
      groups: groups of every 3x3 block conv.
      se_reduction: squeeze-and-excitation in every block with this reduction (None: off).
      last_stride: stride of layer4 (2: Baidu's output stride 32; 1: output stride 16).
      dtype: computation dtype; parameters are float32.
    Attributes:
      num_features: channels of the output map (``widths[-1] * expansion``).
    """

    def __init__(self, blocks: Sequence[int], *, stem_widths: Sequence[int] = (32, 32, 64),
                 widths: Sequence[int] = (64, 128, 256, 512), expansion: int = 4,
                 groups: int = 1, se_reduction: int | None = None, last_stride: int = 2,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs):
        if len(blocks) != 4 or len(widths) != 4 or len(stem_widths) != 3:
            raise ValueError(f"expected 4 stages and 3 stem convs, got blocks={blocks}, "
                             f"widths={widths}, stem_widths={stem_widths}")
        if min(blocks) < 1:
            raise ValueError(f"every stage needs at least one block, got {blocks}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.dtype = dtype
        self.conv1 = layers.deep_stem(stem_widths, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(stem_widths[2], dtype=dtype)

        def make_se(channels: int) -> SqueezeExcitation | None:
            return (SqueezeExcitation(channels, se_reduction, dtype=dtype, rngs=rngs)
                    if se_reduction is not None else None)

        outplanes = [w * expansion for w in widths]
        stages = bottleneck_stages(
            stem_widths[2], blocks=blocks, widths=widths, outplanes=outplanes,
            strides=(1, 2, 2, last_stride), groups=groups, make_se=make_se,
            make_shortcut=lambda i, o, st: projection_shortcut(i, o, st, dtype=dtype, rngs=rngs),
            dtype=dtype, rngs=rngs)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = outplanes[3]


RESNET152_VD_BLOCKS = (3, 8, 36, 3)
RESNET200_VD_BLOCKS = (3, 12, 48, 3)


@register_backbone("resnet152_vd")
def resnet152_vd(*, last_stride: int = 2, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs) -> ResNetVd:
    """Baidu's ResNet-152-vd (res152_arcmargin/_index/_npairs, res152_softmax_v1/v2)."""
    return ResNetVd(RESNET152_VD_BLOCKS, last_stride=last_stride, dtype=dtype, rngs=rngs)


@register_backbone("resnet200_vd")
def resnet200_vd(*, last_stride: int = 2, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs) -> ResNetVd:
    """Baidu's ResNet-200-vd (res200_arcmargin)."""
    return ResNetVd(RESNET200_VD_BLOCKS, last_stride=last_stride, dtype=dtype, rngs=rngs)


@register_backbone("se_resnext152_64x4d_vd")
def se_resnext152_64x4d_vd(*, last_stride: int = 2, dtype: DType = jnp.float32,
                           rngs: nnx.Rngs) -> ResNetVd:
    """Baidu's SE-ResNeXt-152 64x4d vd (se_x152_arcmargin; Paddle's SENet154_vd)."""
    return ResNetVd(RESNET152_VD_BLOCKS, stem_widths=(64, 64, 128),
                    widths=(256, 512, 1024, 2048), expansion=1, groups=64, se_reduction=16,
                    last_stride=last_stride, dtype=dtype, rngs=rngs)
