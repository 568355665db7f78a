"""The heads of Baidu's Google Landmark 2019 models, on any lmr_jax backbone.

* ``BaiduRetrievalModel`` (res152_arcmargin, res200_arcmargin, se_x152_arcmargin,
  inceptionv4_arcmargin, ...): global average pool -> ``fc`` (Linear with bias, to 512). No BN
  and no activation; the raw fc output is the graph's ``embedding`` endpoint, ``embed``
  L2-normalises it for cosine search.
* ``BaiduClassifierModel`` (res152_softmax_v1: global average pool -> Linear 2048 -> 256 ->
  Linear 256 -> C; res152_softmax_v2: global average pool -> Linear 2048 -> C): ``__call__``
  gives logits, ``probabilities`` the softmax the released graph outputs.

Linear kernels are (in, out), the layout Paddle stores fc weights in.

Registered heads (:data:`lmr_jax.models.heads.HEADS`, chosen by ``ModelConfig.head``):
``baidu_embedding`` (takes ``embed_dim``), ``baidu_softmax_v1`` and ``baidu_softmax_v2`` (take
``num_classes``). Baidu built its backbones with ``last_stride=2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmr_jax.models import layers
from lmr_jax.models.heads import HEADS, l2_normalize

Array = jax.Array
DType = Any

SOFTMAX_V1_HIDDEN = (256,)  # res152_softmax_v1: fc 2048 -> 256 -> C
SOFTMAX_V2_HIDDEN = ()  # res152_softmax_v2: fc 2048 -> C


def global_average_pool(x: Array) -> Array:
    """(B, H, W, C) -> (B, C) float32 mean over H, W."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class BaiduRetrievalModel(nnx.Module):
    """``base`` -> global average pool -> ``fc`` (Linear with bias).

    Args:
      backbone: a module with ``num_features`` mapping (B, H, W, 3) -> (B, h, w, C).
      embed_dim: embedding size (512 in every Baidu retrieval model).
      dtype: computation dtype of ``fc``; pooling and the output are float32.
    """

    def __init__(self, backbone: nnx.Module, *, embed_dim: int = 512,
                 dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.base = backbone
        self.fc = layers.Linear(backbone.num_features, embed_dim, dtype=dtype, rngs=rngs)
        self.embed_dim = embed_dim

    def features(self, x: Array) -> Array:
        """The backbone feature map: (B, H, W, 3) -> (B, h, w, num_features)."""
        return self.base(x)

    def __call__(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, embed_dim) float32 raw embedding (not normalised)."""
        return self.fc(global_average_pool(self.base(x))).astype(jnp.float32)

    def embed(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, embed_dim) float32 L2-normalised embeddings (for retrieval)."""
        return l2_normalize(self(x))


class BaiduClassifierModel(nnx.Module):
    """``base`` -> global average pool -> ``classifier`` (Linears with bias, no activation).

    Args:
      backbone: a module with ``num_features``.
      num_classes: C (read from the checkpoint's last fc; Baidu's code does not fix it).
      hidden: widths of the Linears before the last one: ``SOFTMAX_V1_HIDDEN`` (256,) or
        ``SOFTMAX_V2_HIDDEN`` ().
      dtype: computation dtype of the Linears; the outputs are float32.
    """

    def __init__(self, backbone: nnx.Module, num_classes: int, *,
                 hidden: Sequence[int] = SOFTMAX_V2_HIDDEN, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.base = backbone
        widths = [backbone.num_features, *hidden, num_classes]
        self.classifier = layers.Sequential([
            layers.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.num_classes = num_classes

    def __call__(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, num_classes) float32 logits."""
        return self.classifier(global_average_pool(self.base(x))).astype(jnp.float32)

    def probabilities(self, x: Array) -> Array:
        """(B, H, W, 3) -> (B, num_classes) float32 softmax probabilities."""
        return jax.nn.softmax(self(x), axis=-1)


@HEADS.register("baidu_embedding")
def baidu_embedding(backbone: nnx.Module, *, embed_dim: int = 512, dtype: DType = jnp.float32,
                    rngs: nnx.Rngs) -> BaiduRetrievalModel:
    """The Baidu retrieval head: global average pool -> Linear with bias to ``embed_dim``."""
    return BaiduRetrievalModel(backbone, embed_dim=embed_dim, dtype=dtype, rngs=rngs)


def _classifier(head: str, backbone: nnx.Module, num_classes: int, hidden: Sequence[int],
                dtype: DType, rngs: nnx.Rngs) -> BaiduClassifierModel:
    if num_classes < 1:
        raise ValueError(f"head {head!r} needs the model setting num_classes (the class count "
                         f"C, >= 1), got {num_classes}")
    return BaiduClassifierModel(backbone, num_classes, hidden=hidden, dtype=dtype, rngs=rngs)


@HEADS.register("baidu_softmax_v1")
def baidu_softmax_v1(backbone: nnx.Module, *, num_classes: int = 0, dtype: DType = jnp.float32,
                     rngs: nnx.Rngs) -> BaiduClassifierModel:
    """res152_softmax_v1: global average pool -> Linear to 256 -> Linear to ``num_classes``."""
    return _classifier("baidu_softmax_v1", backbone, num_classes, SOFTMAX_V1_HIDDEN, dtype, rngs)


@HEADS.register("baidu_softmax_v2")
def baidu_softmax_v2(backbone: nnx.Module, *, num_classes: int = 0, dtype: DType = jnp.float32,
                     rngs: nnx.Rngs) -> BaiduClassifierModel:
    """res152_softmax_v2: global average pool -> Linear to ``num_classes``."""
    return _classifier("baidu_softmax_v2", backbone, num_classes, SOFTMAX_V2_HIDDEN, dtype, rngs)
