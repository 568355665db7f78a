"""Mixed precision: computation dtypes and dynamic loss scaling for float16.

Parameters are always stored in float32 (master weights); the model computes in
``compute_dtype``. ``bfloat16`` needs no loss scaling. ``float16`` uses dynamic loss scaling
with PyTorch ``torch.amp.GradScaler``'s rule: the loss is multiplied by ``scale`` before
differentiation and the gradients divided by it; a step whose gradients are not all finite is
skipped and halves the scale; after ``growth_interval`` consecutive finite steps the scale
doubles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """Maps ``float32|bfloat16|float16|auto`` to a dtype; ``auto`` is float32 on CPU and
    bfloat16 on GPU/TPU (``platform`` defaults to ``jax.default_backend()``)."""
    if name == "auto":
        platform = platform or jax.default_backend()
        return jnp.float32 if platform == "cpu" else jnp.bfloat16
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; expected auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@struct.dataclass
class LossScale:
    """Dynamic loss-scale state (a pytree of two scalars).

    Attributes:
      scale: () float32 current loss scale.
      growth_tracker: () int32 consecutive finite steps since the last change.
      growth_factor, backoff_factor, growth_interval: GradScaler's constants (static).
    """

    scale: Array
    growth_tracker: Array
    growth_factor: float = struct.field(pytree_node=False, default=2.0)
    backoff_factor: float = struct.field(pytree_node=False, default=0.5)
    growth_interval: int = struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, init_scale: float = 2.0**16, growth_factor: float = 2.0,
               backoff_factor: float = 0.5, growth_interval: int = 2000) -> LossScale:
        return cls(jnp.asarray(init_scale, jnp.float32), jnp.asarray(0, jnp.int32),
                   growth_factor, backoff_factor, growth_interval)

    def scale_loss(self, loss: Array) -> Array:
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, grads):
        inv = 1.0 / self.scale
        return jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), grads)

    def update(self, grads_finite: Array) -> LossScale:
        """The state after a step whose (unscaled) gradients were all finite or not."""
        tracker = jnp.where(grads_finite, self.growth_tracker + 1, 0)
        grow = tracker >= self.growth_interval
        grown = self.scale * self.growth_factor
        scale = jnp.where(grads_finite,
                          jnp.where(grow & jnp.isfinite(grown), grown, self.scale),
                          self.scale * self.backoff_factor)
        return self.replace(scale=scale.astype(jnp.float32),
                            growth_tracker=jnp.where(grow, 0, tracker).astype(jnp.int32))


def all_finite(tree) -> Array:
    """() bool: whether every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)
