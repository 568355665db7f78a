"""ResNeSt backbones (split-attention networks) with PyTorch numerics, NHWC.

Follows the ResNeSt layout the reference code uses (Zhang et al., "ResNeSt: Split-Attention
Networks"; radix 2, cardinality 1, bottleneck width 64, deep stem, ``avg_down`` shortcuts,
``avd`` pooling after the split-attention conv). Attribute names equal the PyTorch module's, so
a PyTorch ``state_dict`` (ImageNet release or a trained reference checkpoint, minus the unused
``fc.*``) loads by name with ``lmr_jax.convert.mapping.load_torch_state``.

Layouts by ``last_stride``:
  * 1 (the reference's output stride 16, its dilation-2 layout): layer3 stride 2, layer4
    stride 1 with its first block at dilation 1 (padding 1) and the later blocks at
    dilation 2 (padding 2). The first block's avd pool is then a stride-1 3x3 box blur
    (count_include_pad), not an identity.
  * 2 (standard ResNeSt, output stride 32): layer4 stride 2, dilation 1 everywhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.models import layers
from lmr_jax.models.registry import register_backbone

Array = jax.Array
DType = Any


class SplAtConv2d(nnx.Module):
    """Split-attention convolution (``SplAtConv2d``, cardinality 1), radix-major.

    ``conv`` (k x k, ``radix`` groups, no bias) -> ``bn0`` -> ReLU gives ``radix`` splits of
    ``channels`` channels each (split r = channels [r*channels, (r+1)*channels)). Their sum is
    averaged over H, W -> ``fc1`` (1x1 with bias) -> ``bn1`` -> ReLU -> ``fc2`` (1x1 with bias,
    radix-major outputs) -> softmax over the radix (rSoftMax) -> weights of the splits, summed.
    The attention path is computed on (B, 1, 1, C) maps; its ``bn1`` in training mode takes
    statistics over the batch only.

    Input (B, H, W, in_channels) -> output (B, H', W', channels).
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, radix: int = 2,
                 reduction_factor: int = 4, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        if radix < 2:
            raise ValueError(f"SplAtConv2d supports radix >= 2 (all ResNeSts), got {radix}")
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        self.radix = radix
        self.channels = channels
        self.dtype = dtype
        self.conv = layers.Conv2d(in_channels, channels * radix, kernel_size, stride=stride,
                                  padding=padding, dilation=dilation, groups=radix,
                                  dtype=dtype, rngs=rngs)
        self.bn0 = layers.BatchNorm(channels * radix, dtype=dtype)
        self.fc1 = layers.Conv2d(channels, inter_channels, 1, use_bias=True, dtype=dtype,
                                 rngs=rngs)
        self.bn1 = layers.BatchNorm(inter_channels, dtype=dtype)
        self.fc2 = layers.Conv2d(inter_channels, channels * radix, 1, use_bias=True,
                                 dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        x = jax.nn.relu(self.bn0(self.conv(x)))
        b, h, w, _ = x.shape
        splits = x.reshape(b, h, w, self.radix, self.channels)
        gap = jnp.mean(jnp.sum(splits, axis=3).astype(jnp.float32), axis=(1, 2), keepdims=True)
        gap = jax.nn.relu(self.bn1(self.fc1(gap.astype(self.dtype))))
        # rSoftMax: softmax over the radix of the radix-major (B, radix, channels) logits.
        logits = self.fc2(gap).astype(jnp.float32).reshape(b, 1, 1, self.radix, self.channels)
        atten = jax.nn.softmax(logits, axis=3).astype(self.dtype)
        return jnp.sum(splits * atten, axis=3)


class Bottleneck(nnx.Module):
    """ResNeSt bottleneck: 1x1 -> split-attention 3x3 -> [avd pool] -> 1x1, + shortcut, ReLU.

    Input (B, H, W, inplanes) -> (B, H/stride, W/stride, 4 * planes).

    Args:
      avd: put the stride in an ``AvgPool2d(3, stride, padding=1)`` after the split conv
        (which then runs at stride 1), in blocks with stride > 1 or ``is_first``.
      downsample: the shortcut (``layers.Sequential`` of AvgPool2d, 1x1 conv, BN) or None.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: layers.Sequential | None = None, radix: int = 2,
                 avd: bool = False, is_first: bool = False, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        group_width = planes  # bottleneck width 64, cardinality 1 (all ResNeSts here)
        self.conv1 = layers.Conv2d(inplanes, group_width, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(group_width, dtype=dtype)
        if avd and (stride > 1 or is_first):
            self.avd_layer = layers.AvgPool2d(3, stride, padding=1)
            stride = 1
        else:
            self.avd_layer = None
        self.conv2 = SplAtConv2d(group_width, group_width, 3, stride=stride, padding=dilation,
                                 dilation=dilation, radix=radix, dtype=dtype, rngs=rngs)
        self.conv3 = layers.Conv2d(group_width, planes * 4, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(planes * 4, dtype=dtype)
        self.downsample = downsample

    def __call__(self, x: Array) -> Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + shortcut)


def _make_layer(inplanes: int, planes: int, num_blocks: int, *, stride: int, dilation: int,
                is_first: bool = True, radix: int, dtype: DType, rngs: nnx.Rngs) -> nnx.List:
    """One stage: ``num_blocks`` bottlenecks, the first with the stride and the shortcut.

    The first block runs at dilation 1 also in a dilation-2 stage (the reference's layout) and
    has the avd pool when ``stride > 1`` or ``is_first`` (every stage but layer1).
    """
    out_planes = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = layers.Sequential([
            # avg_down: the stride moves into a ceil-mode average pool (identity at stride 1).
            layers.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
            layers.Conv2d(inplanes, out_planes, 1, dtype=dtype, rngs=rngs),
            layers.BatchNorm(out_planes, dtype=dtype),
        ])
    blocks = [Bottleneck(inplanes, planes, stride=stride, dilation=1, downsample=downsample,
                         avd=True, is_first=is_first, radix=radix, dtype=dtype, rngs=rngs)]
    for _ in range(1, num_blocks):
        blocks.append(Bottleneck(out_planes, planes, dilation=dilation, avd=True, radix=radix,
                                 dtype=dtype, rngs=rngs))
    return nnx.List(blocks)


class ResNeSt(layers.FourStageBackbone):
    """ResNeSt backbone: deep stem -> max-pool -> layer1..layer4.

    (B, H, W, 3) -> (B, H/16, W/16, 2048) with ``last_stride`` 1, (B, H/32, W/32, 2048)
    with 2 (sizes rounded as PyTorch does: floor for convs, ceil for the shortcut pools).

    Attributes:
      conv1: deep stem, ``Sequential`` [conv 3x3/2, BN, ReLU, conv 3x3, BN, ReLU, conv 3x3].
      bn1: BN after the stem. layer1..layer4: ``nnx.List`` of ``Bottleneck``.
      num_features: channels of the output map (2048).
    """

    def __init__(self, blocks: tuple[int, int, int, int], *, stem_width: int,
                 last_stride: int = 1, radix: int = 2, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.dtype = dtype
        w = stem_width
        self.conv1 = layers.deep_stem((w, w, 2 * w), dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(2 * w, dtype=dtype)
        common = dict(radix=radix, dtype=dtype, rngs=rngs)
        self.layer1 = _make_layer(2 * w, 64, blocks[0], stride=1, dilation=1, is_first=False,
                                  **common)
        self.layer2 = _make_layer(256, 128, blocks[1], stride=2, dilation=1, **common)
        self.layer3 = _make_layer(512, 256, blocks[2], stride=2, dilation=1, **common)
        if last_stride == 1:
            self.layer4 = _make_layer(1024, 512, blocks[3], stride=1, dilation=2, **common)
        else:
            self.layer4 = _make_layer(1024, 512, blocks[3], stride=2, dilation=1, **common)
        self.num_features = 512 * Bottleneck.expansion


def _resnest(blocks: tuple[int, int, int, int], stem_width: int, *, last_stride: int,
             dtype: DType, rngs: nnx.Rngs) -> ResNeSt:
    return ResNeSt(blocks, stem_width=stem_width, last_stride=last_stride, dtype=dtype,
                   rngs=rngs)


@register_backbone("resnest50")
def resnest50(*, last_stride: int = 1, dtype: DType = jnp.float32,
              rngs: nnx.Rngs) -> ResNeSt:
    """ResNeSt-50 (blocks [3, 4, 6, 3], stem width 32): 25.4M parameters without fc."""
    return _resnest((3, 4, 6, 3), 32, last_stride=last_stride, dtype=dtype, rngs=rngs)


@register_backbone("resnest101")
def resnest101(*, last_stride: int = 1, dtype: DType = jnp.float32,
               rngs: nnx.Rngs) -> ResNeSt:
    """ResNeSt-101 (blocks [3, 4, 23, 3], stem width 64): 46.2M parameters without fc."""
    return _resnest((3, 4, 23, 3), 64, last_stride=last_stride, dtype=dtype, rngs=rngs)


@register_backbone("resnest200")
def resnest200(*, last_stride: int = 1, dtype: DType = jnp.float32,
               rngs: nnx.Rngs) -> ResNeSt:
    """ResNeSt-200 (blocks [3, 24, 36, 3], stem width 64): 68.2M parameters without fc."""
    return _resnest((3, 24, 36, 3), 64, last_stride=last_stride, dtype=dtype, rngs=rngs)


@register_backbone("resnest269")
def resnest269(*, last_stride: int = 1, dtype: DType = jnp.float32,
               rngs: nnx.Rngs) -> ResNeSt:
    """ResNeSt-269 (blocks [3, 30, 48, 8], stem width 64): 108.9M parameters without fc."""
    return _resnest((3, 30, 48, 8), 64, last_stride=last_stride, dtype=dtype, rngs=rngs)
