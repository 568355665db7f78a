"""Flax NNX models: backbones with PyTorch numerics, retrieval head and classifiers."""

from lmr_jax.models.registry import create, create_backbone, list_models, register_backbone

__all__ = ["create", "create_backbone", "list_models", "register_backbone"]
