"""The one embedding path: preprocessed images -> L2-normalised global descriptors.

Used by offline extraction (:mod:`lmr_jax.retrieval.extract`) and by the periodic validation
during training (:mod:`lmr_jax.train.evaluation`), so both see exactly the same features.

The images arrive decoded, resized to ``S x S`` and normalised by
:class:`lmr_jax.data.augment.EvalPreprocess`. Then, as the GLR2021 reference's inference does:

* single scale (``scales == (1.0,)``): the network runs on the ``S x S`` batch as it is;
* multi-scale (e.g. ``(0.707, 1.0, 1.414)``): for each scale ``s`` the normalised batch is
  resized bilinearly with half-pixel centres and no antialiasing (what
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` computes) to
  ``int(((S * s) // 16) * 16)`` pixels per side (:func:`view_size`: floored to a multiple of
  16, the network's output stride, so every view runs), and the network runs on each view.

The raw (not normalised) embeddings of the views are summed, divided by the number of views
and L2-normalised once.

``flip=True`` also embeds the horizontal mirror of every view (an lmr-jax extra that the
reference does not do; off by default): the mirrored views join the same sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

REFERENCE_SCALES = (0.707, 1.0, 1.414)
SIZE_MULTIPLE = 16  # the network's output stride with last_stride=1

EmbedFn = Callable[[Any], jax.Array]


def view_size(size: int, scale: float) -> int:
    """Side in pixels of the ``scale`` view of an ``size x size`` input: floor to a multiple of 16.

    ``int(((size * scale) // 16) * 16)``, computed in floating point as the reference does.
    """
    side = int(((size * float(scale)) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if side < SIZE_MULTIPLE:
        raise ValueError(f"scale {scale} of a {size} px input gives a {side} px view: too small")
    return side


def embed_views(model: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                scales: Sequence[float] = (1.0,), flip: bool = False) -> jax.Array:
    """(B, S, S, 3) normalised images -> (B, D) float32 L2-normalised embeddings (traceable).

    Args:
      model: the retrieval network, (B, H, W, 3) -> (B, D) raw embeddings, any H = W that is a
        multiple of 16.
      images: square batch, already normalised.
      scales: ``(1.0,)`` for single scale, else the multi-scale factors (see module docstring).
      flip: also embed each view's horizontal mirror (lmr-jax extra).
    """
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must name at least one scale")
    b, h, w, c = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if scales == (1.0,):
        views = [images]
    else:
        views = []
        for s in scales:
            side = view_size(h, s)
            views.append(images if side == h else jax.image.resize(
                images, (b, side, side, c), "bilinear", antialias=False))
    total = jnp.zeros((), jnp.float32)
    count = 0
    for v in views:
        total = total + model(v).astype(jnp.float32)
        count += 1
        if flip:
            total = total + model(v[:, :, ::-1, :]).astype(jnp.float32)
            count += 1
    mean = total / count
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def make_embed_fn(model: nnx.Module, mesh: Mesh, *, scales: Sequence[float] = (1.0,),
                  flip: bool = False, compute_dtype: Any = jnp.float32) -> EmbedFn:
    """``embed(images (B, S, S, 3)) -> (B, D)`` float32 L2-normalised, jitted over ``mesh``.

    The model runs in evaluation mode (running BatchNorm statistics), its state replicated on
    ``mesh`` (axis ``data``); the batch is split along ``data``: a host ``np.ndarray`` is
    placed there (one process), a global ``jax.Array`` is taken as it is. B must be a
    multiple of the mesh size. Compiled once per input shape.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    scales = tuple(float(s) for s in scales)

    @jax.jit
    def embed(state, images):
        net = nnx.merge(graphdef, state)
        return embed_views(net, images.astype(compute_dtype), scales=scales, flip=flip)

    def run(images: np.ndarray | jax.Array) -> jax.Array:
        if images.shape[0] % mesh.devices.size:
            raise ValueError(f"batch of {images.shape[0]} does not split over "
                             f"{mesh.devices.size} devices")
        if not isinstance(images, jax.Array):
            images = jax.device_put(np.asarray(images), data_sharding)
        return embed(state, images)

    return run
