"""Registry of backbones by name, and ``create`` for whole retrieval models.

Backbone modules register a builder with ``@register_backbone(name)``; a builder takes
``last_stride``, ``dtype`` and ``rngs`` and returns an NNX backbone with ``num_features``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.registry import Registry

_BUILTIN_MODULES = ("lmr_jax.models.resnet", "lmr_jax.models.resnest", "lmr_jax.models.resnet_vd",
                    "lmr_jax.models.inception_v4")
BACKBONES: Registry[Callable[..., nnx.Module]] = Registry("backbone", _BUILTIN_MODULES)
register_backbone = BACKBONES.register


def zero_initialised(build: Callable[[], nnx.Module]) -> nnx.Module:
    """``build()`` with every variable zero instead of its initial value.

    For modules whose every entry is then loaded from a checkpoint: it skips the random
    initialisation (seconds on CPU for a deep model, compiled per weight shape).
    """
    graphdef, state = nnx.split(nnx.eval_shape(build))
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state)
    return nnx.merge(graphdef, state)


def list_models() -> list[str]:
    """Names accepted by ``create``."""
    return BACKBONES.names()


def create_backbone(name: str, *, last_stride: int = 1, dtype: Any = jnp.float32,
                    rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the backbone ``name`` alone (output: (B, H/16, W/16, C) for last_stride 1)."""
    return BACKBONES.build(name, last_stride=last_stride, dtype=dtype,
                           rngs=rngs if rngs is not None else nnx.Rngs(0))


def create(name: str, *, last_stride: int = 1, embed_dim: int = 512, pooling: str = "gem",
           gem_p: float = 3.0, learnable_p: bool = False, dtype: Any = jnp.float32,
           rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds a whole retrieval model: backbone -> pooling -> Linear (no bias) -> BN neck.

    Args:
      name: a registered backbone (see ``list_models()``).
      last_stride: stride of the last stage (1: output stride 16, as the reference uses).
      embed_dim: embedding size (512 in the reference).
      pooling: ``"gem"`` or ``"avgmax"`` (average + max pooling, summed).
      gem_p: the GeM exponent; learnable_p makes it a trained parameter.
      dtype: computation dtype (parameters stay float32).
      rngs: parameter initialisation RNG.
    Returns:
      ``lmr_jax.models.heads.RetrievalModel``: (B, H, W, 3) -> (B, embed_dim) embeddings
      (not L2-normalised).
    """
    from lmr_jax.models import heads

    rngs = rngs if rngs is not None else nnx.Rngs(0)
    backbone = create_backbone(name, last_stride=last_stride, dtype=dtype, rngs=rngs)
    return heads.RetrievalModel(backbone, embed_dim=embed_dim, pooling=pooling, gem_p=gem_p,
                                learnable_p=learnable_p, dtype=dtype, rngs=rngs)
