"""Retrieval head (pooling -> Linear -> BN neck) and the cosine classifier.

``RetrievalModel`` is the reference's whole model without its classifier: attributes ``base``,
``fcneck`` and ``fcneck_bn`` carry the reference key names (``base.*``, ``fcneck.weight``,
``fcneck_bn.*``). The classifier (``classifier.weight`` in reference checkpoints) is a separate
``CosineClassifier`` so the embedding model can be used and saved without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmr_jax.models import layers
from lmr_jax.registry import Registry

Array = jax.Array
DType = Any

# Global poolings (B, H, W, C) -> (B, C) float32 by name; a factory takes the model settings it
# names (``gem_p``, ``learnable_p``, ...) as keyword arguments.
POOLINGS: Registry[Callable[..., nnx.Module]] = Registry("pooling")
# Heads by name: ``head(backbone, *, <settings it names>, dtype, rngs)`` -> the whole retrieval
# model (backbone + head; (B, H, W, 3) -> (B, embed_dim)). The settings come from
# :class:`lmr_jax.models.model_config.ModelConfig`; a new head is one registered class here or
# in a module of ``lmr_jax.models`` listed here, plus its new settings (if any) in ModelConfig.
HEADS: Registry[Callable[..., nnx.Module]] = Registry("head", ("lmr_jax.models.baidu_heads",))


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """``torch.nn.functional.normalize``: x / max(||x||_2, eps) over the last axis.

    Written as x * rsqrt(max(||x||^2, eps^2)) so the gradient stays finite at x = 0.
    """
    sum_sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sum_sq, eps * eps))


def _xavier_uniform(rngs: nnx.Rngs, shape: tuple[int, int]) -> Array:
    """``torch.nn.init.xavier_uniform_`` for a 2-D weight: U(+-sqrt(6 / (fan_in + fan_out)))."""
    return layers.uniform_init(rngs, shape, float(np.sqrt(6.0 / (shape[0] + shape[1]))))


class GeM(nnx.Module):
    """Generalised-mean pooling: (mean_hw clamp(x, min=eps) ** p) ** (1 / p), in float32.

    (B, H, W, C) -> (B, C) float32. With ``learnable`` the exponent is an ``nnx.Param`` ``p``
    (shape ()); otherwise a fixed Python float, as in the reference (no state entry).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        self.eps = eps
        self.learnable = learnable
        self.p = nnx.Param(jnp.asarray(p, jnp.float32)) if learnable else float(p)

    def __call__(self, x: Array) -> Array:
        p = self.p[...] if self.learnable else self.p
        x = jnp.maximum(x.astype(jnp.float32), self.eps)
        return jnp.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


class AvgMaxPool(nnx.Module):
    """Average pooling plus max pooling over H, W, summed: (B, H, W, C) -> (B, C) float32."""

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        return jnp.mean(x, axis=(1, 2)) + jnp.max(x, axis=(1, 2))


@POOLINGS.register("gem")
def gem(*, gem_p: float = 3.0, learnable_p: bool = False) -> GeM:
    """:class:`GeM` with exponent ``gem_p`` (a trained parameter with ``learnable_p``)."""
    return GeM(gem_p, learnable=learnable_p)


@POOLINGS.register("avgmax")
def avgmax() -> AvgMaxPool:
    """:class:`AvgMaxPool`."""
    return AvgMaxPool()


@HEADS.register("bn_neck")
class RetrievalModel(nnx.Module):
    """Backbone -> pooling -> ``fcneck`` (Linear, no bias) -> ``fcneck_bn`` (BatchNorm1d).

    The ``bn_neck`` head (the reference's).

    ``__call__`` returns the neck BN output, not L2-normalised (as the reference model does);
    ``embed`` L2-normalises it for retrieval. ``train()``/``eval()`` switch every BatchNorm
    between batch statistics and running statistics.

    Args:
      backbone: a module with ``num_features`` mapping (B, H, W, 3) -> (B, h, w, num_features).
      embed_dim: embedding size (512 in the reference).
      pooling: a registered pooling (:data:`POOLINGS`: ``"gem"`` or ``"avgmax"``).
      gem_p: initial/fixed GeM exponent (3.0); ``learnable_p`` makes it a trained ``Param``.
      dtype: computation dtype of the neck Linear; pooling and the output are float32.
      rngs: initialisation RNG (``fcneck`` kernel: xavier-uniform; the BN neck: weight 1,
        bias 0 and frozen).
    """

    def __init__(self, backbone: nnx.Module, *, embed_dim: int = 512, pooling: str = "gem",
                 gem_p: float = 3.0, learnable_p: bool = False, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        self.base = backbone
        self.pool = POOLINGS.build_offered(pooling, context={"gem_p": gem_p,
                                                             "learnable_p": learnable_p})
        in_features = backbone.num_features
        self.fcneck = layers.Linear(in_features, embed_dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.fcneck.kernel[...] = _xavier_uniform(rngs, (embed_dim, in_features)).T
        self.fcneck_bn = layers.BatchNorm(embed_dim, frozen_bias=True, dtype=dtype)
        self.embed_dim = embed_dim

    def features(self, x: Array) -> Array:
        """The backbone feature map: (B, H, W, 3) -> (B, H/16, W/16, num_features)."""
        return self.base(x)

    def __call__(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, embed_dim) float32 neck output (not normalised)."""
        pooled = self.pool(self.base(x))
        return self.fcneck_bn(self.fcneck(pooled)).astype(jnp.float32)

    def embed(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, embed_dim) float32 L2-normalised embeddings (for retrieval)."""
        return l2_normalize(self(x))


class CosineClassifier(nnx.Module, layers.TorchMapped):
    """Cosine similarities to class centres (the ArcFace/CosFace/sub-centre ArcFace logits base).

    ``weight``: Param (num_classes * num_subcenters, embed_dim), PyTorch layout, xavier-uniform
    init like the reference ArcFace weight; row ``c * num_subcenters + k`` is sub-centre k of
    class c. ``__call__(emb)``: (B, embed_dim) -> (B, num_classes) float32, the cosine between
    L2-normalised embeddings and L2-normalised rows (eps 1e-12), max over each class's
    sub-centres. ``dtype`` is the matmul dtype.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_subcenters: int = 1, *,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs):
        if num_classes < 1 or num_subcenters < 1:
            raise ValueError(f"num_classes={num_classes} and num_subcenters={num_subcenters} "
                             "must be >= 1")
        self.num_classes = num_classes
        self.num_subcenters = num_subcenters
        self.dtype = dtype
        self.weight = nnx.Param(_xavier_uniform(rngs, (num_classes * num_subcenters, embed_dim)))

    def torch_params(self) -> Iterator[layers.TorchParam]:
        yield layers.TorchParam("weight", "weight")

    def __call__(self, emb: Array) -> Array:
        x = l2_normalize(emb.astype(jnp.float32)).astype(self.dtype)
        w = l2_normalize(self.weight[...]).astype(self.dtype)
        cos = jnp.dot(x, w.T, preferred_element_type=jnp.float32)
        if self.num_subcenters > 1:
            cos = jnp.max(cos.reshape(cos.shape[0], self.num_classes, self.num_subcenters), axis=-1)
        return cos
