"""The model schema: every setting that defines a retrieval model's architecture.

One :class:`ModelConfig` is what :func:`lmr_jax.models.create` builds, what a model checkpoint
records (:mod:`lmr_jax.models.saved_model`), what a training config's ``model`` sub-dict holds
(:func:`lmr_jax.train.config.base_config`) and what the weight converter writes. Adding a head
option is one new field here (with its default) plus the parameter of the head that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a retrieval model: backbone -> head.

    Attributes:
      arch: a registered backbone (:data:`lmr_jax.models.registry.BACKBONES`).
      last_stride: stride of the backbone's last stage (1: output stride 16, as the reference).
      head: a registered head (:data:`lmr_jax.models.heads.HEADS`); ``bn_neck`` is
        pooling -> Linear (no bias) -> BatchNorm neck.
      embed_dim: embedding size (512 in the reference).
      pooling: the head's global pooling (:data:`lmr_jax.models.heads.POOLINGS`).
      gem_p: the GeM exponent; ``learnable_p`` makes it a trained parameter.
      num_classes: class count C of a classifier head (``baidu_softmax_v1`` / ``_v2``: the
        model outputs (B, C) logits); 0 for the embedding heads, which do not take it.

    The fields after ``head`` are head settings: a head takes those it names, and a setting
    its head does not take must keep its default (:func:`lmr_jax.models.create` checks).
    """

    arch: str
    last_stride: int = 1
    head: str = "bn_neck"
    embed_dim: int = 512
    pooling: str = "gem"
    gem_p: float = 3.0
    learnable_p: bool = False
    num_classes: int = 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "model config"
                  ) -> ModelConfig:
        """A ModelConfig from a mapping of its fields (absent ones take their defaults).

        Raises:
          ValueError: a key that is not a field (named, with the known fields) or no ``arch``.
        """
        values = dict(values)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown model settings {unknown}; known: "
                             f"{', '.join(cls.field_names())}")
        if "arch" not in values:
            raise ValueError(f"{where}: no 'arch' (the backbone name)")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def head_settings(self) -> dict[str, Any]:
        """The settings offered to the head (every field after ``head``)."""
        names = self.field_names()
        return {k: getattr(self, k) for k in names[names.index("head") + 1:]}

    def non_default_head_settings(self) -> dict[str, Any]:
        """The head settings that differ from their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in self.head_settings().items() if v != defaults[k]}
