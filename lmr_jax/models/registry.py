"""Registry of backbones by name, and ``create`` for whole retrieval models (backbone + head,
from a :class:`~lmr_jax.models.model_config.ModelConfig`).

Backbone modules register a builder with ``@register_backbone(name)``; a builder takes
``last_stride``, ``dtype`` and ``rngs`` and returns an NNX backbone with ``num_features``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.models.model_config import ModelConfig
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


def create(model: str | ModelConfig, *, dtype: Any = jnp.float32,
           rngs: nnx.Rngs | None = None, **settings: Any) -> nnx.Module:
    """Builds a whole retrieval model: backbone -> head (by default pooling -> Linear (no bias)
    -> BN neck).

    Args:
      model: a :class:`~lmr_jax.models.model_config.ModelConfig`, or a registered backbone name
        (see ``list_models()``) whose other settings are ``settings``.
      dtype: computation dtype (parameters stay float32).
      rngs: parameter initialisation RNG.
      **settings: ModelConfig fields (``last_stride``, ``head``, ``embed_dim``, ``pooling``,
        ``gem_p``, ``learnable_p``, ``num_classes``) overriding those of ``model``.
    Returns:
      The head's model (``lmr_jax.models.heads.RetrievalModel`` for ``bn_neck``):
      (B, H, W, 3) -> (B, embed_dim) embeddings (not L2-normalised).
    Raises:
      ValueError: an unknown setting, backbone or head, or a setting the head does not take
        that differs from its default.
    """
    from lmr_jax.models import heads

    if isinstance(model, str):
        config = ModelConfig.from_dict({"arch": model, **settings})
    else:
        config = ModelConfig.from_dict({**model.to_dict(), **settings})
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    unused = sorted(set(config.non_default_head_settings())
                    - set(heads.HEADS.accepted_kwargs(config.head)))
    if unused:
        raise ValueError(f"head {config.head!r} does not take the model settings {unused}")
    backbone = create_backbone(config.arch, last_stride=config.last_stride, dtype=dtype,
                               rngs=rngs)
    return heads.HEADS.build_offered(config.head, backbone, context=config.head_settings(),
                                     dtype=dtype, rngs=rngs)
