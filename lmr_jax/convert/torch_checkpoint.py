"""Reading PyTorch checkpoints as flat ``{key: numpy array}`` state_dicts, safely.

Formats: ``torch.save`` files (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ...) read with
``torch.load(..., weights_only=True)`` so that a checkpoint cannot run code, and
``.safetensors`` files read with ``safetensors.numpy`` (no PyTorch needed). A state_dict
wrapped in ``{'state_dict': ...}`` (or ``{'model': ...}``) is unwrapped, and a ``module.``
prefix on every key (``nn.DataParallel``) is stripped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

# Entries that wrap the state_dict in training checkpoints, tried in this order.
WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."


class CheckpointFormatError(ValueError):
    """The file is not a readable plain weights checkpoint."""


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading a PyTorch .pth/.pt/.bin checkpoint needs PyTorch: "
            "pip install torch==2.13.0 (the CPU build is enough), or convert the checkpoint to "
            ".safetensors elsewhere, which is read without PyTorch") from e
    return torch


def _load_torch_file(path: str) -> Any:
    torch = _import_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, OSError):
            raise
        raise CheckpointFormatError(
            f"{path}: not a plain weights checkpoint; torch.load(weights_only=True) refused it "
            f"({type(e).__name__}: {_first_line(e)}). Only tensors, numbers, strings and "
            "containers of them are read; pickled objects (a whole nn.Module, custom classes, "
            "code) are never executed. If you trust the file, load it in PyTorch and save "
            "model.state_dict() (or use safetensors).") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def _tensor_to_numpy(key: str, value: Any, path: str) -> np.ndarray:
    torch = _import_torch()
    if not isinstance(value, torch.Tensor):
        raise CheckpointFormatError(
            f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
            "expected a flat state_dict of tensors")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except KeyError as e:
        raise CheckpointFormatError(
            f"{path}: tensor dtype {e.args[0]} cannot be read into numpy; save the "
            "safetensors file with float32/float16 tensors") from e
    except Exception as e:
        if isinstance(e, OSError):
            raise
        raise CheckpointFormatError(
            f"{path}: not a valid safetensors file ({type(e).__name__}: {_first_line(e)})") from e


def unwrap_state_dict(obj: Any, path: str = "<checkpoint>") -> Mapping[str, Any]:
    """The flat state_dict inside a loaded checkpoint object.

    Accepts a mapping of key -> tensor, or a mapping whose ``state_dict`` (else ``model``)
    entry is one (training checkpoints that also store epoch, optimiser, ...).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"{path}: holds a {type(obj).__name__}, expected a state_dict (a mapping of "
            "parameter names to tensors)")
    for wrapper in WRAPPER_KEYS:
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            return obj[wrapper]
    return obj


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes ``module.`` from the keys when every key has it (``nn.DataParallel`` saves)."""
    if state_dict and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint file into ``{key: numpy array}`` (PyTorch layouts).

    Args:
      path: a ``torch.save`` file (read with ``weights_only=True``) or a ``.safetensors`` file.
    Returns:
      The flat state_dict, unwrapped from ``{'state_dict': ...}`` and without a
      ``module.`` prefix; bfloat16 tensors become float32, other dtypes are kept.
    Raises:
      FileNotFoundError: no such file.
      CheckpointFormatError: the file is not a plain weights checkpoint (e.g. a pickle that
        would run code, a whole pickled model, or non-tensor entries).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        state = _load_safetensors(path)
    else:
        obj = unwrap_state_dict(_load_torch_file(path), path)
        state = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CheckpointFormatError(f"{path}: key {key!r} is not a string")
            state[key] = _tensor_to_numpy(key, value, path)
    if not state:
        raise CheckpointFormatError(f"{path}: the checkpoint holds no tensors")
    return strip_data_parallel_prefix(state)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded as the conversion's source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
