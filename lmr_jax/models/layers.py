"""Layers with PyTorch numerics, NHWC layout and PyTorch-named parameters.

Every layer here reproduces the corresponding ``torch.nn`` layer exactly (explicit symmetric
padding, -inf max-pool padding, ceil-mode average pooling, running-variance update with the
unbiased batch variance, BN eps 1e-5 and momentum 0.1 in PyTorch's convention) so that
converted PyTorch checkpoints give the same outputs.

Attribute names follow the PyTorch modules, so a PyTorch ``state_dict`` key maps to an NNX state
path by name: ``layer1.0.downsample.1.weight`` is ``('layer1', 0, 'downsample', 1, 'kernel')``.
Each parametrised layer declares that mapping in ``torch_params()``; ``lmr_jax.convert`` walks a
model and uses it. Parameters are stored in float32; ``dtype`` is the computation dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

Array = jax.Array
DType = Any


class FrozenParam(nnx.Variable):
    """A parameter that is loaded and saved but never trained (e.g. the neck BN bias)."""


# PyTorch -> NNX axis order per layout: conv OIHW -> HWIO, linear (out, in) -> (in, out).
_TORCH_TO_NNX_AXES = {"conv": (2, 3, 1, 0), "linear": (1, 0)}


class TorchParam:
    """How one PyTorch state_dict entry maps to an NNX variable of a layer.

    Attributes:
      torch_name: the last component of the PyTorch key (``weight``, ``running_mean``, ...).
      attr: the NNX attribute holding it, or None for entries that are accepted and dropped
        (``num_batches_tracked``).
      layout: ``conv`` (OIHW -> HWIO), ``linear`` (out,in -> in,out) or ``same``.
      optional: whether a checkpoint may lack the entry (old checkpoints have no
        ``num_batches_tracked``).
    """

    def __init__(self, torch_name: str, attr: str | None, layout: str = "same",
                 optional: bool = False):
        self.torch_name = torch_name
        self.attr = attr
        self.layout = layout
        self.optional = optional

    def to_nnx(self, value: np.ndarray) -> np.ndarray:
        """Converts a PyTorch array to the NNX layout."""
        axes = _TORCH_TO_NNX_AXES.get(self.layout)
        return value if axes is None else np.transpose(value, axes)

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        """Converts an NNX array back to the PyTorch layout."""
        axes = _TORCH_TO_NNX_AXES.get(self.layout)
        return value if axes is None else np.transpose(value, np.argsort(axes))


class TorchMapped:
    """Mixin for layers whose parameters correspond to PyTorch state_dict entries."""

    def torch_params(self) -> Iterator[TorchParam]:
        raise NotImplementedError


INIT_BLOCK = 1 << 16  # random numbers per compiled draw of the initialisers


def _num_blocks(size: int) -> int:
    """Blocks of INIT_BLOCK drawn for ``size`` numbers (at least one, so that an empty shape
    gets an empty array like ``jax.random``'s)."""
    return max(1, -(-size // INIT_BLOCK))


@functools.partial(jax.jit, static_argnames="kind")
def _init_block(key: Array, kind: str) -> Array:
    """(INIT_BLOCK,) float32 standard normal or U[0, 1) numbers."""
    if kind == "normal":
        return jax.random.normal(key, (INIT_BLOCK,), jnp.float32)
    return jax.random.uniform(key, (INIT_BLOCK,), jnp.float32)


def _random(key: Array, shape: tuple[int, ...], kind: str, scale: float,
            offset: float = 0.0) -> Array:
    """float32 ``scale * r + offset`` with r standard normal or U[0, 1) of ``shape``.

    The numbers are drawn in blocks of INIT_BLOCK, block i from ``fold_in(key, i)``, and cut to
    size: one compiled program serves every shape. ``jax.random.normal(key, shape)`` compiles
    once per shape, which was 15 of the 16.6 s that building resnet152_vd took on the CPU. A
    concrete key's blocks are assembled on the host; a traced one (``nnx.jit``) gives the same
    numbers up to float32 rounding (XLA compiles the draw inside the caller's program).
    """
    if isinstance(key, jax.core.Tracer):
        return _traced_random(key, tuple(shape), kind, float(scale), float(offset))
    size = math.prod(shape)
    flat = np.concatenate([np.asarray(_init_block(jax.random.fold_in(key, i), kind))
                           for i in range(_num_blocks(size))])
    return jax.device_put(flat[:size].reshape(shape) * np.float32(scale) + np.float32(offset))


@functools.partial(jax.jit, static_argnames=("shape", "kind", "scale", "offset"))
def _traced_random(key: Array, shape: tuple[int, ...], kind: str, scale: float,
                   offset: float) -> Array:
    """:func:`_random` inside a trace: one operation of the caller's program, so that tracing
    a deep model stays cheap (``nnx.eval_shape`` walks its trace at every Rngs draw)."""
    size = math.prod(shape)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(_num_blocks(size)))
    flat = jax.vmap(functools.partial(_init_block, kind=kind))(keys).reshape(-1)
    return flat[:size].reshape(shape) * np.float32(scale) + np.float32(offset)


def normal_init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> Array:
    """float32 N(0, std^2) of ``shape`` from ``rngs.params()`` (see :func:`_random`)."""
    return _random(rngs.params(), shape, "normal", std)


def uniform_init(rngs: nnx.Rngs, shape: tuple[int, ...], bound: float) -> Array:
    """float32 U(-bound, bound) of ``shape`` from ``rngs.params()`` (see :func:`_random`)."""
    return _random(rngs.params(), shape, "uniform", 2.0 * bound, -bound)


def _torch_uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> Array:
    """PyTorch's default weight init for Conv/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform_init(rngs, shape, 1.0 / np.sqrt(fan_in))


class Conv2d(nnx.Module, TorchMapped):
    """``torch.nn.Conv2d`` on NHWC inputs.

    kernel: (kh, kw, in_channels // groups, out_channels). Input (B, H, W, in_channels) ->
    output (B, H', W', out_channels) with H' = floor((H + 2p - d(k-1) - 1) / s) + 1.
    ``kernel_size`` and ``padding`` are an int or an (h, w) pair, as in PyTorch (padding
    symmetric per axis).
    Ungrouped 1x1 convolutions are computed as one flat matrix product (with stride by
    slicing): the same arithmetic, but XLA:CPU computes their weight gradient several times
    faster than a convolution's (docs/benchmarks.md, Training).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 *, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1,
                 groups: int = 1, use_bias: bool = False, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.dilation = dilation
        self.groups = groups
        self.dtype = dtype
        fan_in = in_channels // groups * kh * kw
        # Kaiming-normal (fan_out), as torchvision and the reference code initialise convs.
        fan_out = out_channels * kh * kw
        shape = (kh, kw, in_channels // groups, out_channels)
        self.kernel = nnx.Param(normal_init(rngs, shape, np.sqrt(2.0 / fan_out)))
        self.bias = nnx.Param(_torch_uniform(rngs, (out_channels,), fan_in)) if use_bias else None

    def torch_params(self) -> Iterator[TorchParam]:
        yield TorchParam("weight", "kernel", "conv")
        if self.bias is not None:
            yield TorchParam("bias", "bias")

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        kh, kw = kernel.shape[:2]
        if kh == 1 and kw == 1 and self.groups == 1 and self.padding == (0, 0):
            if self.stride > 1:
                x = x[:, ::self.stride, ::self.stride, :]
            # A flat (B*H*W, C) x (C, O) product: no layout copies in the weight gradient.
            b, h, w, c = x.shape
            y = jnp.dot(x.reshape(b * h * w, c), kernel[0, 0]).reshape(b, h, w, -1)
        else:
            ph, pw = self.padding
            y = lax.conv_general_dilated(
                x, kernel, window_strides=(self.stride, self.stride),
                padding=((ph, ph), (pw, pw)), rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Linear(nnx.Module, TorchMapped):
    """``torch.nn.Linear``: (..., in_features) -> (..., out_features); kernel (in, out)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = nnx.Param(_torch_uniform(rngs, (in_features, out_features), in_features))
        self.bias = (nnx.Param(_torch_uniform(rngs, (out_features,), in_features))
                     if use_bias else None)

    def torch_params(self) -> Iterator[TorchParam]:
        yield TorchParam("weight", "kernel", "linear")
        if self.bias is not None:
            yield TorchParam("bias", "bias")

    def __call__(self, x: Array) -> Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class BatchNorm(nnx.Module, TorchMapped):
    """``torch.nn.BatchNorm1d/2d`` over the last axis of (B, C) or (B, H, W, C) inputs.

    Training mode normalises with the biased batch variance and updates the running
    variance with the unbiased one, ``running = (1 - momentum) * running + momentum * batch``
    (PyTorch's convention, momentum 0.1). Statistics are computed in float32. Under ``jax.jit``
    with a batch sharded over devices, the statistics are those of the global batch
    (synchronised BN); inside ``jax.shard_map`` pass ``axis_name`` for per-group statistics
    or leave it None for per-device statistics.

    Args:
      frozen_bias: store the bias as a ``FrozenParam`` (loaded, never trained), as the
        reference code does for the neck BN.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 frozen_bias: bool = False, axis_name: str | None = None,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic init, like PyTorch
        self.eps = eps
        self.momentum = momentum
        self.axis_name = axis_name
        self.dtype = dtype
        self.use_running_average = False
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        bias_type = FrozenParam if frozen_bias else nnx.Param
        self.bias = bias_type(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def torch_params(self) -> Iterator[TorchParam]:
        yield TorchParam("weight", "scale")
        yield TorchParam("bias", "bias")
        yield TorchParam("running_mean", "mean")
        yield TorchParam("running_var", "var")
        yield TorchParam("num_batches_tracked", None, optional=True)

    def __call__(self, x: Array) -> Array:
        axes = tuple(range(x.ndim - 1))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            # Two passes (mean, then mean squared deviation), as PyTorch computes it: the
            # one-pass E[x^2] - E[x]^2 loses float32 digits when |mean| >> std (the neck BN).
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axes)
            count = np.prod([x.shape[a] for a in axes])
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
                count = count * lax.psum(1, self.axis_name)
            unbiased = var * (count / jnp.maximum(count - 1, 1))
            m = self.momentum
            # set_value, not [...] =: flax's item assignment asks the traced value for its
            # sharding, and JAX's error for that walks the whole trace so far (quadratic in
            # depth: 15 s of tracing resnet152_vd's train step).
            self.mean.set_value((1 - m) * self.mean[...] + m * lax.stop_gradient(mean))
            self.var.set_value((1 - m) * self.var[...] + m * lax.stop_gradient(unbiased))
        scale = self.scale[...] * lax.rsqrt(var + self.eps)
        shift = self.bias[...] - mean * scale
        return (x * scale.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


class InstanceNorm(nnx.Module, TorchMapped):
    """``torch.nn.InstanceNorm2d(affine=True, track_running_stats=False)`` on NHWC.

    Normalises each sample and channel over H, W with the biased variance, in training and in
    evaluation alike (no running statistics).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        del rngs
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def torch_params(self) -> Iterator[TorchParam]:
        yield TorchParam("weight", "scale")
        yield TorchParam("bias", "bias")

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
        y = (xf - mean) * lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class IBN(nnx.Module):
    """IBN-a normalisation: InstanceNorm on the first ``int(C/2)`` channels, BN on the rest."""

    def __init__(self, num_features: int, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.half = int(num_features / 2)
        self.IN = InstanceNorm(self.half, dtype=dtype, rngs=rngs)
        self.BN = BatchNorm(num_features - self.half, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate([self.IN(x[..., :self.half]), self.BN(x[..., self.half:])], axis=-1)


def max_pool2d(x: Array, kernel_size: int, stride: int, padding: int) -> Array:
    """``torch.nn.MaxPool2d`` (floor mode, implicit -inf padding) on NHWC."""
    p = padding
    # A Python scalar init value: JAX then recognises the max monoid (reduce_window_max), which
    # is differentiable under jit; a jnp.array init is a tracer there and cannot be linearised.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, kernel_size, kernel_size, 1),
        (1, stride, stride, 1), ((0, 0), (p, p), (p, p), (0, 0)))


def _pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size, including its rule for ceil mode."""
    if ceil_mode:
        out = -(-(size + 2 * p - k) // s) + 1
        if (out - 1) * s >= size + p:  # the last window must start inside input or left pad
            out -= 1
        return out
    return (size + 2 * p - k) // s + 1


def avg_pool2d(x: Array, kernel_size: int, stride: int, padding: int = 0, *,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Array:
    """``torch.nn.AvgPool2d`` on NHWC, with PyTorch's ceil_mode and count_include_pad.

    With count_include_pad the divisor counts the zero padding but not the extra cells that
    ceil mode adds past it; without, it counts input pixels only.
    """
    k, s, p = kernel_size, stride, padding
    _, h, w, _ = x.shape
    out_h = _pool_output_size(h, k, s, p, ceil_mode)
    out_w = _pool_output_size(w, k, s, p, ceil_mode)
    extra_h = max((out_h - 1) * s + k - (h + 2 * p), 0)
    extra_w = max((out_w - 1) * s + k - (w + 2 * p), 0)
    window, strides = (1, k, k, 1), (1, s, s, 1)
    pads = ((0, 0), (p, p + extra_h), (p, p + extra_w), (0, 0))
    summed = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)  # scalar: see max_pool2d
    if count_include_pad:
        ones = np.pad(np.ones((h, w), np.float32), p, constant_values=1.0)
        ones = np.pad(ones, ((0, extra_h), (0, extra_w)))
    else:
        ones = np.pad(np.ones((h, w), np.float32), ((p, p + extra_h), (p, p + extra_w)))
    counts = _window_sums(ones, k, s)
    return summed / jnp.asarray(counts[None, :, :, None], x.dtype)


def _window_sums(a: np.ndarray, k: int, s: int) -> np.ndarray:
    """Sums of k x k windows of a 2-D array with stride s (no padding), in numpy."""
    out_h = (a.shape[0] - k) // s + 1
    out_w = (a.shape[1] - k) // s + 1
    c = np.pad(np.cumsum(np.cumsum(a, 0), 1), ((1, 0), (1, 0)))
    r = np.arange(out_h) * s
    q = np.arange(out_w) * s
    return (c[r[:, None] + k, q[None, :] + k] - c[r[:, None], q[None, :] + k]
            - c[r[:, None] + k, q[None, :]] + c[r[:, None], q[None, :]])


class AvgPool2d(nnx.Module):
    """``torch.nn.AvgPool2d`` as a parameterless module (keeps PyTorch Sequential indices)."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, *,
                 ceil_mode: bool = False, count_include_pad: bool = True):
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def __call__(self, x: Array) -> Array:
        if self.kernel_size == 1 and self.stride == 1 and self.padding == 0:
            return x
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                          ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad)


class ReLU(nnx.Module):
    """``torch.nn.ReLU`` as a parameterless module (keeps PyTorch Sequential indices)."""

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(x)


class Sequential(nnx.List):
    """``torch.nn.Sequential``: an indexable list of modules applied in order.

    State paths use the list positions, as PyTorch keys do (``downsample.1.weight``).
    """

    def __call__(self, x: Array) -> Array:
        for layer in self:
            x = layer(x)
        return x


def deep_stem(widths: Sequence[int], *, dtype: DType = jnp.float32,
              rngs: nnx.Rngs) -> Sequential:
    """The "deep" stem of ResNet-D / ResNeSt: conv 3x3/2 -> BN -> ReLU -> conv 3x3 -> BN -> ReLU
    -> conv 3x3, with ``widths`` (w1, w2, w3) output channels (PyTorch Sequential indices
    0, 1, 3, 4, 6). The caller adds the last BN (``bn1``), ReLU and max pool.
    (B, H, W, 3) -> (B, ceil(H / 2), ceil(W / 2), w3).
    """
    w1, w2, w3 = widths
    return Sequential([
        Conv2d(3, w1, 3, stride=2, padding=1, dtype=dtype, rngs=rngs),
        BatchNorm(w1, dtype=dtype),
        ReLU(),
        Conv2d(w1, w2, 3, padding=1, dtype=dtype, rngs=rngs),
        BatchNorm(w2, dtype=dtype),
        ReLU(),
        Conv2d(w2, w3, 3, padding=1, dtype=dtype, rngs=rngs),
    ])


class FourStageBackbone(nnx.Module):
    """A ResNet-style backbone: ``stem`` then ``layer1``..``layer4`` (nnx.Lists of blocks).

    Subclasses build ``conv1`` (a conv or a :func:`deep_stem`), ``bn1``, ``dtype`` and the four
    stages; the output is the last stage's map.
    """

    def stem(self, x: Array) -> Array:
        """conv1 -> bn1 -> ReLU -> max-pool 3x3/2/1: (B, H, W, 3) -> (B, ~H/4, ~W/4, C)."""
        x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        return max_pool2d(x, 3, 2, 1)

    def stage_outputs(self, x: Array) -> list[Array]:
        """Outputs of the stem and of layer1..layer4 (five NHWC maps, in the compute dtype)."""
        outs = [self.stem(x)]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = outs[-1]
            for block in stage:
                h = block(h)
            outs.append(h)
        return outs

    def __call__(self, x: Array) -> Array:
        """(B, H, W, 3) normalised images -> (B, H/16, W/16, num_features) (last_stride 1)."""
        return self.stage_outputs(x)[-1]
