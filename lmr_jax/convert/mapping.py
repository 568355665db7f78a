"""Mapping between PyTorch state_dict keys and the NNX state of lmr_jax models.

lmr_jax layers carry PyTorch's attribute names, and each parametrised layer declares its
PyTorch entries (``TorchMapped.torch_params``). Walking a model therefore gives the exact key set
its PyTorch counterpart has, and a checkpoint is loaded by name with strict checking: missing,
unexpected and mis-shaped keys are all reported together, nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmr_jax.models.layers import TorchMapped, TorchParam


@dataclasses.dataclass(frozen=True)
class KeyTarget:
    """Where one PyTorch key goes: the owning layer, its path and the entry's mapping."""

    path: tuple
    layer: TorchMapped
    param: TorchParam

    def variable(self) -> nnx.Variable | None:
        return None if self.param.attr is None else getattr(self.layer, self.param.attr)


def torch_key_map(module: nnx.Module, prefix: str = "") -> dict[str, KeyTarget]:
    """All PyTorch state_dict keys of ``module`` (sorted by NNX path), each with its target.

    Args:
      module: an lmr_jax model (or any module built from ``lmr_jax.models.layers``).
      prefix: prepended to every key (``"base."`` for a backbone inside a whole model).
    Returns:
      key -> KeyTarget; keys are ``"<prefix><dotted path>.<torch name>"``.
    """
    keys: dict[str, KeyTarget] = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, TorchMapped):
            dotted = ".".join(str(p) for p in path)
            for param in node.torch_params():
                key = f"{prefix}{dotted}.{param.torch_name}" if dotted else f"{prefix}{param.torch_name}"
                keys[key] = KeyTarget(path, node, param)
    return keys


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]], context: str = ""):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint does not match the model{(' ' + context) if context else ''}:"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): " + _preview(missing))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): " + _preview(unexpected))
        if mismatched:
            lines.append(f"  {len(mismatched)} key(s) with the wrong shape: " + _preview(
                [f"{k} (checkpoint {tuple(c)}, model {tuple(m)})" for k, c, m in mismatched]))
        super().__init__("\n".join(lines))


def _preview(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in patterns)


def load_torch_state(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                     prefix: str = "", drop: Iterable[str] = (),
                     allow_missing: Iterable[str] = (), context: str = "") -> list[str]:
    """Copies a PyTorch state_dict (numpy arrays) into ``module``, strictly.

    Args:
      module: the NNX model to fill in place.
      state_dict: PyTorch key -> numpy array (PyTorch layouts).
      prefix: key prefix of the module's entries in ``state_dict``.
      drop: glob patterns of checkpoint keys that are accepted and ignored (e.g. ``fc.*``).
      allow_missing: glob patterns of model keys the checkpoint may lack (they keep their
        initial values).
      context: words added to the error message (e.g. the architecture name).
    Returns:
      The checkpoint keys that were dropped.
    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
    """
    targets = torch_key_map(module, prefix)
    allow_missing = tuple(allow_missing)
    missing = [k for k, t in targets.items()
               if k not in state_dict and not t.param.optional and not _matches(k, allow_missing)]
    dropped = [k for k in state_dict if k not in targets and _matches(k, drop)]
    unexpected = [k for k in state_dict if k not in targets and k not in dropped]
    mismatched = []
    for key, target in targets.items():
        var = target.variable()
        if key not in state_dict or var is None:
            continue
        want = target.param.to_torch(np.empty(var.shape, np.uint8)).shape
        got = tuple(np.shape(state_dict[key]))
        if got != tuple(want):
            mismatched.append((key, got, tuple(want)))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
    for key, target in targets.items():
        var = target.variable()
        if key in state_dict and var is not None:
            value = target.param.to_nnx(np.asarray(state_dict[key]))
            var[...] = jnp.asarray(value, dtype=var[...].dtype)
    return dropped


def export_torch_state(module: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse of ``load_torch_state``: the module's state as a PyTorch-layout state_dict.

    ``num_batches_tracked`` entries are written as int64 zeros.
    """
    out: dict[str, np.ndarray] = {}
    for key, target in torch_key_map(module, prefix).items():
        var = target.variable()
        if var is None:
            out[key] = np.zeros((), np.int64)
        else:
            out[key] = np.ascontiguousarray(target.param.to_torch(np.asarray(var[...])))
    return out
