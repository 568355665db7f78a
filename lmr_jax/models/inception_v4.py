"""Inception-v4 as Baidu built it for Google Landmark 2019 (inceptionv4_arcmargin), NHWC.

Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning", with Paddle's padding rules:

* every conv is conv (no bias) -> BN (eps 1e-5) -> ReLU;
* square kernels are unpadded ("valid") unless a padding of 1 is stated; the (1, 7), (7, 1),
  (1, 3) and (3, 1) convs are padded to keep the size ((0, 3), (3, 0), (0, 1), (1, 0));
* max pools 3x3 / 2 are unpadded; the average pools of the Inception blocks are 3x3 / 1 / pad 1
  and exclusive (padded cells are not counted).

Kernel shapes are (kh, kw). Branches are concatenated along channels in Paddle's order (the
pooling branch first), so Paddle weights load without permuting channels.

Stages (``stage_outputs``): ``stem`` (384 channels, about size / 8), ``inception_a`` (4 blocks,
384), ``reduction_a`` (1024, / 16), ``inception_b`` (7 blocks, 1024), ``reduction_b`` (1536,
/ 32) and ``inception_c`` (3 blocks, 1536). Each unpadded 3x3 conv takes 2 off a side, each
unpadded stride-2 op maps n to (n - 3) // 2 + 1: a side of 75 gives 7 after the stem, 3 after
reduction-A and 1 after reduction-B (75 is the smallest input side; 448 gives 53, 26 and 12).

``last_stride``: Baidu's model uses 2 (the default here). With 1, reduction-B keeps the size:
its 3x3 convs and max pool run at stride 1 with padding 1 (same parameters, output stride 16).
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
Size = int | tuple[int, int]


class ConvBNReLU(nnx.Module):
    """``conv`` (no bias) -> ``bn`` -> ReLU: (B, H, W, cin) -> (B, H', W', cout)."""

    def __init__(self, cin: int, cout: int, kernel_size: Size, *, stride: int = 1,
                 padding: Size = 0, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.conv = layers.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding,
                                  dtype=dtype, rngs=rngs)
        self.bn = layers.BatchNorm(cout, dtype=dtype)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _chain(specs: list[tuple], dtype: DType, rngs: nnx.Rngs) -> layers.Sequential:
    """A Sequential of ConvBNReLU from (cin, cout, kernel, stride, padding) tuples."""
    return layers.Sequential([
        ConvBNReLU(cin, cout, k, stride=s, padding=p, dtype=dtype, rngs=rngs)
        for cin, cout, k, s, p in specs])


def _avg_pool_3x3(x: Array) -> Array:
    return layers.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class Stem(nnx.Module):
    """(B, H, W, 3) -> (B, h, w, 384).

    conv 3x3/2 -> 32, 3x3 -> 32, 3x3 p1 -> 64; [max-pool 3/2, ``mixed1`` 3x3/2 -> 96];
    [``branch_a`` 1x1 64 -> 3x3 96, ``branch_b`` 1x1 64 -> (7,1) 64 -> (1,7) 64 -> 3x3 96];
    [``mixed3`` 3x3/2 -> 192, max-pool 3/2].
    """

    def __init__(self, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.convs = _chain([(3, 32, 3, 2, 0), (32, 32, 3, 1, 0), (32, 64, 3, 1, 1)], dtype, rngs)
        self.mixed1 = ConvBNReLU(64, 96, 3, stride=2, dtype=dtype, rngs=rngs)
        self.branch_a = _chain([(160, 64, 1, 1, 0), (64, 96, 3, 1, 0)], dtype, rngs)
        self.branch_b = _chain([(160, 64, 1, 1, 0), (64, 64, (7, 1), 1, (3, 0)),
                                (64, 64, (1, 7), 1, (0, 3)), (64, 96, 3, 1, 0)], dtype, rngs)
        self.mixed3 = ConvBNReLU(192, 192, 3, stride=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        x = self.convs(x)
        x = jnp.concatenate([layers.max_pool2d(x, 3, 2, 0), self.mixed1(x)], axis=-1)
        x = jnp.concatenate([self.branch_a(x), self.branch_b(x)], axis=-1)
        return jnp.concatenate([self.mixed3(x), layers.max_pool2d(x, 3, 2, 0)], axis=-1)


class InceptionA(nnx.Module):
    """(B, h, w, 384) -> (B, h, w, 384): [avg-pool -> 1x1 96, 1x1 96, 1x1 64 -> 3x3 96,
    1x1 64 -> 3x3 96 -> 3x3 96] (3x3 convs padded 1)."""

    def __init__(self, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.branch_pool = ConvBNReLU(384, 96, 1, dtype=dtype, rngs=rngs)
        self.branch_1x1 = ConvBNReLU(384, 96, 1, dtype=dtype, rngs=rngs)
        self.branch_3x3 = _chain([(384, 64, 1, 1, 0), (64, 96, 3, 1, 1)], dtype, rngs)
        self.branch_3x3dbl = _chain([(384, 64, 1, 1, 0), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)],
                                    dtype, rngs)

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate([self.branch_pool(_avg_pool_3x3(x)), self.branch_1x1(x),
                                self.branch_3x3(x), self.branch_3x3dbl(x)], axis=-1)


class ReductionA(nnx.Module):
    """(B, h, w, 384) -> (B, (h-3)//2+1, ., 1024): [max-pool 3/2, 3x3/2 384,
    1x1 192 -> 3x3 p1 224 -> 3x3/2 256]."""

    def __init__(self, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.branch_3x3 = ConvBNReLU(384, 384, 3, stride=2, dtype=dtype, rngs=rngs)
        self.branch_3x3dbl = _chain([(384, 192, 1, 1, 0), (192, 224, 3, 1, 1),
                                     (224, 256, 3, 2, 0)], dtype, rngs)

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate([layers.max_pool2d(x, 3, 2, 0), self.branch_3x3(x),
                                self.branch_3x3dbl(x)], axis=-1)


class InceptionB(nnx.Module):
    """(B, h, w, 1024) -> (B, h, w, 1024): [avg-pool -> 1x1 128, 1x1 384,
    1x1 192 -> (1,7) 224 -> (7,1) 256, 1x1 192 -> (1,7) 192 -> (7,1) 224 -> (1,7) 224 ->
    (7,1) 256]."""

    def __init__(self, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch_pool = ConvBNReLU(1024, 128, 1, dtype=dtype, rngs=rngs)
        self.branch_1x1 = ConvBNReLU(1024, 384, 1, dtype=dtype, rngs=rngs)
        self.branch_7x7 = _chain([(1024, 192, 1, 1, 0), (192, 224, h[0], 1, h[1]),
                                  (224, 256, v[0], 1, v[1])], dtype, rngs)
        self.branch_7x7dbl = _chain([(1024, 192, 1, 1, 0), (192, 192, h[0], 1, h[1]),
                                     (192, 224, v[0], 1, v[1]), (224, 224, h[0], 1, h[1]),
                                     (224, 256, v[0], 1, v[1])], dtype, rngs)

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate([self.branch_pool(_avg_pool_3x3(x)), self.branch_1x1(x),
                                self.branch_7x7(x), self.branch_7x7dbl(x)], axis=-1)


class ReductionB(nnx.Module):
    """(B, h, w, 1024) -> (B, (h-3)//2+1, ., 1536): [max-pool 3/2, 1x1 192 -> 3x3/2 192,
    1x1 256 -> (1,7) 256 -> (7,1) 320 -> 3x3/2 320]. With ``stride`` 1 the pool and the 3x3
    convs run at stride 1, padded 1 (size kept)."""

    def __init__(self, *, stride: int = 2, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.stride = stride
        p = 0 if stride == 2 else 1
        self.branch_3x3 = _chain([(1024, 192, 1, 1, 0), (192, 192, 3, stride, p)], dtype, rngs)
        self.branch_7x7x3 = _chain([(1024, 256, 1, 1, 0), (256, 256, (1, 7), 1, (0, 3)),
                                    (256, 320, (7, 1), 1, (3, 0)), (320, 320, 3, stride, p)],
                                   dtype, rngs)

    def __call__(self, x: Array) -> Array:
        pooled = layers.max_pool2d(x, 3, self.stride, 0 if self.stride == 2 else 1)
        return jnp.concatenate([pooled, self.branch_3x3(x), self.branch_7x7x3(x)], axis=-1)


class InceptionC(nnx.Module):
    """(B, h, w, 1536) -> (B, h, w, 1536): [avg-pool -> 1x1 256, 1x1 256,
    1x1 384 -> [(1,3) 256, (3,1) 256], 1x1 384 -> (1,3) 448 -> (3,1) 512 -> [(1,3) 256,
    (3,1) 256]]."""

    def __init__(self, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        def conv(cin: int, cout: int, k: Size, p: Size = 0) -> ConvBNReLU:
            return ConvBNReLU(cin, cout, k, padding=p, dtype=dtype, rngs=rngs)

        self.branch_pool = conv(1536, 256, 1)
        self.branch_1x1 = conv(1536, 256, 1)
        self.branch_3x3_reduce = conv(1536, 384, 1)
        self.branch_3x3_1x3 = conv(384, 256, (1, 3), (0, 1))
        self.branch_3x3_3x1 = conv(384, 256, (3, 1), (1, 0))
        self.branch_3x3dbl = layers.Sequential([
            conv(1536, 384, 1), conv(384, 448, (1, 3), (0, 1)), conv(448, 512, (3, 1), (1, 0))])
        self.branch_3x3dbl_1x3 = conv(512, 256, (1, 3), (0, 1))
        self.branch_3x3dbl_3x1 = conv(512, 256, (3, 1), (1, 0))

    def __call__(self, x: Array) -> Array:
        b3 = self.branch_3x3_reduce(x)
        b4 = self.branch_3x3dbl(x)
        return jnp.concatenate([
            self.branch_pool(_avg_pool_3x3(x)), self.branch_1x1(x),
            self.branch_3x3_1x3(b3), self.branch_3x3_3x1(b3),
            self.branch_3x3dbl_1x3(b4), self.branch_3x3dbl_3x1(b4)], axis=-1)


class InceptionV4(nnx.Module):
    """Inception-v4 backbone without the classifier: (B, H, W, 3) -> (B, h, w, 1536).

    Args:
      last_stride: stride of reduction-B (2 as Baidu built it; 1 keeps the size).
      dtype: computation dtype; parameters are float32.
    Attributes:
      num_features: 1536.
    """

    def __init__(self, *, last_stride: int = 2, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.dtype = dtype
        self.stem = Stem(dtype=dtype, rngs=rngs)
        self.inception_a = layers.Sequential([InceptionA(dtype=dtype, rngs=rngs)
                                              for _ in range(4)])
        self.reduction_a = ReductionA(dtype=dtype, rngs=rngs)
        self.inception_b = layers.Sequential([InceptionB(dtype=dtype, rngs=rngs)
                                              for _ in range(7)])
        self.reduction_b = ReductionB(stride=last_stride, dtype=dtype, rngs=rngs)
        self.inception_c = layers.Sequential([InceptionC(dtype=dtype, rngs=rngs)
                                              for _ in range(3)])
        self.num_features = 1536

    def stage_outputs(self, x: Array) -> list[Array]:
        """Outputs of stem, inception_a, reduction_a, inception_b, reduction_b, inception_c."""
        outs = [self.stem(x.astype(self.dtype))]
        for stage in (self.inception_a, self.reduction_a, self.inception_b, self.reduction_b,
                      self.inception_c):
            outs.append(stage(outs[-1]))
        return outs

    def __call__(self, x: Array) -> Array:
        """(B, H, W, 3) normalised images -> (B, h, w, 1536)."""
        return self.stage_outputs(x)[-1]


@register_backbone("inception_v4")
def inception_v4(*, last_stride: int = 2, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs) -> InceptionV4:
    """Baidu's Inception-v4 (inceptionv4_arcmargin)."""
    return InceptionV4(last_stride=last_stride, dtype=dtype, rngs=rngs)
