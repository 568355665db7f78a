"""timm models built with random weights (``pretrained=False``), the reference of the timm tests.

PyPI's torchvision wheels are linked against the CUDA build of PyTorch: with the CPU build
the tests use, torchvision's compiled operators do not load, and torchvision 0.28 then fails at
import time registering fake kernels for its ``nms``/``qnms`` operators. Declaring those two
operator schemas (no kernels) beforehand lets the import go through; the timm models used
here never call them. Nothing is done when torchvision's operators load.
"""

from __future__ import annotations

import importlib.util

import torch

_TORCHVISION_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_schemas = None


def _declare_missing_torchvision_ops() -> None:
    global _schemas
    if _schemas is not None or hasattr(torch.ops.torchvision, "nms"):
        return
    spec = importlib.util.find_spec("torchvision")
    try:
        torch.ops.load_library(spec.submodule_search_locations[0] + "/_C.so")
        return
    except (OSError, RuntimeError):
        pass
    _schemas = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OPS:
        _schemas.define(schema)


def create(name: str, seed: int | None = None, meta: bool = False) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=False)`` in eval mode.

    Args:
      name: the timm model name.
      seed: the torch RNG seed of the random weights (timm's own initialisation).
      meta: build on the meta device (shapes only, no memory): for key sets of deep models.
    """
    _declare_missing_torchvision_ops()
    import timm

    if seed is not None:
        torch.manual_seed(seed)
    if meta:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False).eval()
    return timm.create_model(name, pretrained=False).eval()
