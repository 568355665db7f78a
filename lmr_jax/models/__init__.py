"""Flax NNX models: backbones with PyTorch numerics, retrieval heads and classifiers."""

from lmr_jax.models.model_config import ModelConfig
from lmr_jax.models.registry import create, create_backbone, list_models, register_backbone

__all__ = ["ModelConfig", "create", "create_backbone", "list_models", "register_backbone"]
