"""SGD with PyTorch semantics, bias parameter group and the reference's cosine schedule.

PyTorch ``torch.optim.SGD(momentum=0.9)`` with coupled L2 weight decay, per parameter:
``d = g + wd * p``; ``buf = momentum * buf + d`` (``buf = d`` at the first step); ``p -= lr * buf``.
The reference (``solver/make_optimizer.py``) puts every parameter whose name contains
``bias`` in a group with ``lr * bias_lr_factor`` (2 for GLDv2) and ``weight_decay_bias``.

Learning rate (``solver/cosine_lr.py``, a timm ``CosineLRScheduler`` with ``t_in_epochs``,
stepped after every iteration with the fractional epoch): for a group whose maximal rate is
``lr_max`` (base_lr, or base_lr * bias_lr_factor), at fractional epoch ``t = step / steps_per_epoch``

* ``t < warmup``: ``w0 + t * (lr_max - w0) / warmup`` with ``w0 = warmup_factor * base_lr``;
* otherwise: ``lr_min + 0.5 * (lr_max - lr_min) * (1 + cos(pi * t / epochs))`` with
  ``lr_min = min_factor * base_lr``; t is not shifted by the warmup, so the rate drops from
  ``lr_max`` to the cosine's value at ``t = warmup`` when the warmup ends;
* ``t >= epochs``: ``lr_min``.

``w0`` and ``lr_min`` are absolute values shared by all groups (timm's ``warmup_lr_init`` and
``lr_min``); only ``lr_max`` is per group.

The learning rate is a function of the iteration number passed to ``update`` as the extra
argument ``step``, not of an internal counter, so that an iteration whose update is skipped
(float16 overflow) still advances the schedule, as PyTorch's GradScaler + scheduler do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Schedule = Callable[[Array], Array]


def cosine_lr(t: np.ndarray | float, *, base_lr: float, lr_max: float, epochs: float,
              warmup_epochs: float = 0.0, warmup_factor: float = 0.01,
              min_factor: float = 0.002) -> np.ndarray:
    """Learning rate at fractional epoch(s) t, in float64 (see the module docstring).

    Args:
      t: fractional epoch(s), ``step / steps_per_epoch``.
      base_lr: the configuration's base learning rate (defines ``w0`` and ``lr_min``).
      lr_max: this group's peak rate (base_lr or base_lr * bias_lr_factor).
      epochs: cosine period T in epochs.
      warmup_epochs: warmup length in epochs (0: none).
      warmup_factor: ``w0 = warmup_factor * base_lr``.
      min_factor: ``lr_min = min_factor * base_lr``.
    """
    t = np.asarray(t, np.float64)
    w0 = warmup_factor * base_lr
    lr_min = min_factor * base_lr
    lr = lr_min + 0.5 * (lr_max - lr_min) * (1.0 + np.cos(np.pi * t / epochs))
    lr = np.where(t >= epochs, lr_min, lr)
    if warmup_epochs > 0:
        lr = np.where(t < warmup_epochs, w0 + t * ((lr_max - w0) / warmup_epochs), lr)
    return lr


def make_schedule(*, steps_per_epoch: int, base_lr: float, lr_max: float, epochs: float,
                  warmup_epochs: float = 0.0, warmup_factor: float = 0.01,
                  min_factor: float = 0.002) -> Schedule:
    """``fn(step) -> lr`` (float32) of :func:`cosine_lr` with ``t = step / steps_per_epoch``.

    The rates of all ``ceil(epochs * steps_per_epoch) + 1`` steps are computed once in float64
    and rounded to float32 (as PyTorch's float32 kernels round the scheduler's Python float);
    ``fn`` looks the step up, clamping past the end (where the rate is lr_min).
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    n = int(math.ceil(epochs * steps_per_epoch)) + 1
    table = cosine_lr(np.arange(n) / steps_per_epoch, base_lr=base_lr, lr_max=lr_max,
                      epochs=epochs, warmup_epochs=warmup_epochs, warmup_factor=warmup_factor,
                      min_factor=min_factor).astype(np.float32)

    def schedule(step: Array) -> Array:
        return jnp.asarray(table)[jnp.clip(jnp.asarray(step, jnp.int32), 0, n - 1)]

    return schedule


def scale_by_step_schedule(schedule: Schedule) -> optax.GradientTransformationExtraArgs:
    """Multiplies updates by ``-schedule(step)``, ``step`` given to ``update`` as extra arg."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, step=None, **extra_args):
        del params, extra_args
        if step is None:
            raise ValueError("this optimiser needs the iteration number: "
                             "tx.update(grads, opt_state, params, step=step)")
        lr = schedule(step)
        return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def torch_sgd(schedule: Schedule, *, momentum: float,
              weight_decay: float) -> optax.GradientTransformationExtraArgs:
    """PyTorch SGD (dampening 0, no Nesterov) with coupled L2 weight decay."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=False))
    parts.append(scale_by_step_schedule(schedule))
    return optax.chain(*parts)


def param_labels(params: Any, *, frozen: tuple[str, ...] = ()) -> Any:
    """Labels each parameter ``bias`` (any path key contains "bias"), ``frozen`` or ``weight``.

    Args:
      params: a pytree of parameters (e.g. an ``nnx.State`` of ``nnx.Param``).
      frozen: substrings of the '/'-joined path of parameters to keep fixed.
    """

    def label(path, _):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        joined = "/".join(keys)
        if any(f in joined for f in frozen):
            return "frozen"
        return "bias" if any("bias" in k for k in keys) else "weight"

    return jax.tree_util.tree_map_with_path(label, params)


def lr_schedules(*, steps_per_epoch: int, base_lr: float, epochs: float, warmup_epochs: float,
                 bias_lr_factor: float = 2.0, warmup_factor: float = 0.01,
                 min_factor: float = 0.002) -> dict[str, Schedule]:
    """The learning-rate schedules of :func:`make_optimizer`'s groups, ``{"weight", "bias"}``:
    :func:`make_schedule` peaking at ``base_lr`` and at ``base_lr * bias_lr_factor``."""
    common = dict(steps_per_epoch=steps_per_epoch, base_lr=base_lr, epochs=epochs,
                  warmup_epochs=warmup_epochs, warmup_factor=warmup_factor,
                  min_factor=min_factor)
    return {"weight": make_schedule(lr_max=base_lr, **common),
            "bias": make_schedule(lr_max=base_lr * bias_lr_factor, **common)}


def make_optimizer(*, steps_per_epoch: int, base_lr: float, epochs: float,
                   warmup_epochs: float, weight_decay: float, weight_decay_bias: float,
                   bias_lr_factor: float = 2.0, momentum: float = 0.9,
                   warmup_factor: float = 0.01, min_factor: float = 0.002,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformationExtraArgs:
    """The reference optimiser: two PyTorch-SGD groups (weights, biases) on one schedule.

    ``update(grads, opt_state, params, step=step)`` needs the iteration number ``step``
    (0-based, within the stage). Parameters whose path contains one of ``frozen`` get no update.
    """
    schedules = lr_schedules(steps_per_epoch=steps_per_epoch, base_lr=base_lr, epochs=epochs,
                             warmup_epochs=warmup_epochs, bias_lr_factor=bias_lr_factor,
                             warmup_factor=warmup_factor, min_factor=min_factor)
    transforms = {
        "weight": torch_sgd(schedules["weight"], momentum=momentum, weight_decay=weight_decay),
        "bias": torch_sgd(schedules["bias"], momentum=momentum, weight_decay=weight_decay_bias),
        "frozen": optax.set_to_zero(),
    }
    return optax.partition(transforms, lambda p: param_labels(p, frozen=frozen))
