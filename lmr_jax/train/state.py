"""Training state: the model + classifier as pytrees, optimiser state, counters, loss scale.

The NNX module is split once, outside ``jax.jit``, into a static ``GraphDef`` and pytrees:
``params`` (``nnx.Param``, trained) and ``rest`` (batch statistics, frozen parameters, anything
else; updated by the forward pass but not by the optimiser). The jitted step is a pure function
of :class:`TrainState`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from lmr_jax.train.precision import LossScale

Array = jax.Array


class TrainModule(nnx.Module):
    """The retrieval model and its training classifier, trained together.

    ``model(x)`` maps (B, H, W, 3) images to (B, D) embeddings; ``classifier(emb)`` maps them to
    (B, C) cosine similarities. Parameter paths start with ``model/`` or ``classifier/``.
    Without a classifier (None) the loss takes the model's output itself (N-pairs on
    embeddings, a linear softmax on a classifier head's logits).
    """

    def __init__(self, model: nnx.Module, classifier: nnx.Module | None):
        self.model = model
        self.classifier = classifier

    def __call__(self, x: Array) -> Array:
        out = self.model(x)
        return out if self.classifier is None else self.classifier(out)


@struct.dataclass
class TrainState:
    """Everything the jitted step reads and writes.

    Attributes:
      step: () int32 iteration within the current stage (drives the learning rate).
      params: trained parameters (``nnx.State`` of ``nnx.Param``, float32 master weights).
      rest: the module's other variables (BatchNorm running statistics, frozen parameters).
      opt_state: optax state of ``params``.
      skipped: () int32 number of iterations whose update was skipped (float16 overflow).
      loss_scale: dynamic loss scale (float16 only), else None.
    """

    step: Array
    params: Any
    rest: Any
    opt_state: Any
    skipped: Array
    loss_scale: LossScale | None = None


def split_module(module: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, params, rest) of a module, params being its ``nnx.Param`` variables."""
    return nnx.split(module, nnx.Param, ...)


def create_train_state(module: nnx.Module, tx: optax.GradientTransformation, *,
                       loss_scale: LossScale | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``module`` (already in train mode) and initialises the optimiser state."""
    graphdef, params, rest = split_module(module)
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, rest=rest,
                       opt_state=tx.init(params), skipped=jnp.asarray(0, jnp.int32),
                       loss_scale=loss_scale)
    return graphdef, state


def grow_rows(old: np.ndarray, new: np.ndarray, *, num_subcenters: int = 1) -> np.ndarray:
    """Classifier weight for more classes: the first classes keep their rows, the rest ``new``.

    Args:
      old: (C_old * k, D) trained weight, rows ordered class-major (class c, sub-centre j at
        row ``c * k + j``).
      new: (C_new * k, D) freshly initialised weight, C_new >= C_old.
      num_subcenters: k.

    Returns:
      (C_new * k, D) float32 with ``[:C_old * k]`` from ``old``, the rest from ``new``.
    """
    old, new = np.asarray(old), np.asarray(new)
    if old.shape[1] != new.shape[1] or old.shape[0] > new.shape[0]:
        raise ValueError(f"cannot grow a classifier of shape {old.shape} into {new.shape}")
    if old.shape[0] % num_subcenters or new.shape[0] % num_subcenters:
        raise ValueError(f"classifier rows {old.shape[0]}, {new.shape[0]} are not multiples of "
                         f"num_subcenters={num_subcenters}")
    out = np.array(new, dtype=np.float32, copy=True)
    out[: old.shape[0]] = old
    return out
