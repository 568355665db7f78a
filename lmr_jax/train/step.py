"""The pure, jitted training step, data-parallel over a device mesh.

Batch arrays are sharded along the mesh axis ``data``, the state is replicated. Two
BatchNorm modes:

* ``sync`` (default): the step is one ``jax.jit`` over global arrays, so BatchNorm statistics
  are those of the whole global batch (synchronised BN).
* ``per_device``: the forward/backward pass runs under ``jax.shard_map``, so each device
  normalises with its own batch's statistics, like the reference's 8-GPU DDP run. Gradients
  are summed over devices; the running statistics are averaged over devices.

The loss is the mean cross-entropy over the valid (label >= 0) rows of the global batch. A step
whose loss, gradients or updated parameters are not finite leaves parameters and optimiser
state unchanged: with
float16 loss scaling it counts as skipped (``skipped`` + 1, the scale halves); otherwise
``metrics["finite"]`` is False and the trainer stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmr_jax.train.losses import LossFn, LossOutput
from lmr_jax.train.precision import all_finite
from lmr_jax.train.state import TrainState

Array = jax.Array
StepFn = Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict[str, Array]]]
BN_MODES = ("sync", "per_device")


def _forward_sums(graphdef: nnx.GraphDef, params: Any, rest: Any, images: Array,
                  labels: Array, loss_fn: LossFn) -> tuple[LossOutput, Any]:
    # copy=True: fresh Variables at this trace level (``rest`` is not differentiated, so it
    # arrives from the enclosing trace and could not be updated in place otherwise).
    module = nnx.merge(graphdef, params, rest, copy=True)
    out = loss_fn(module(images), labels)
    return out, nnx.state(module, nnx.Not(nnx.Param))


def _grads(graphdef, loss_fn, params, rest, images, labels, loss_scale, count):
    """Gradient of ``loss_sum / count`` (times the loss scale), and the sums and new rest."""
    def objective(p, r):
        out, new_rest = _forward_sums(graphdef, p, r, images, labels, loss_fn)
        obj = out.loss_sum / jnp.maximum(count, 1.0)
        if loss_scale is not None:
            obj = loss_scale.scale_loss(obj)
        return obj, (out, new_rest)

    (_, (out, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(params, rest)
    return grads, out, new_rest


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn,
                    tx: optax.GradientTransformationExtraArgs, mesh: Mesh, *,
                    state_sharding: Any, compute_dtype: Any = jnp.float32,
                    bn_mode: str = "sync", donate: bool = True) -> StepFn:
    """Builds ``step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

    Args:
      graphdef: static structure of the ``TrainModule`` (split in train mode).
      loss_fn: ``fn(cosine, labels) -> LossOutput`` from :data:`lmr_jax.train.losses.LOSSES`.
      tx: optimiser from :func:`lmr_jax.train.optim.make_optimizer` (takes ``step=``).
      mesh: a mesh with axis ``data``.
      state_sharding: the ``TrainState`` pytree of shardings (replicated).
      compute_dtype: dtype the images are cast to (the model computes in its own dtype).
      bn_mode: ``sync`` or ``per_device``.
      donate: donate the input state's buffers.

    The batch is ``{"image": (B, H, W, 3), "label": (B,) int32}`` sharded along ``data``.
    Metrics (replicated scalars): ``loss`` (mean CE), ``accuracy``, ``count`` (valid rows),
    ``finite`` (bool), ``loss_scale`` (1 without scaling), ``skipped`` (total so far).
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; expected one of {BN_MODES}")
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    def compute(state: TrainState, images: Array, labels: Array):
        count = jnp.sum(labels >= 0).astype(jnp.float32)
        if bn_mode == "sync":
            return _grads(graphdef, loss_fn, state.params, state.rest, images, labels,
                          state.loss_scale, count)

        def local(params, rest, loss_scale, count, x, y):
            g, out, new_rest = _grads(graphdef, loss_fn, params, rest, x, y, loss_scale, count)
            g = jax.lax.psum(g, "data")
            out = jax.lax.psum(out, "data")
            new_rest = jax.lax.pmean(new_rest, "data")
            return g, out, new_rest

        return jax.shard_map(
            local, mesh=mesh,
            in_specs=(P(), P(), P(), P(), P("data"), P("data")),
            out_specs=(P(), P(), P()), check_vma=False,
        )(state.params, state.rest, state.loss_scale, count, images, labels)

    def step(state: TrainState, batch: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
        images = batch["image"].astype(compute_dtype)
        labels = batch["label"].astype(jnp.int32)
        grads, out, new_rest = compute(state, images, labels)
        if state.loss_scale is not None:
            grads = state.loss_scale.unscale(grads)
        loss = out.loss_sum / jnp.maximum(out.count, 1.0)
        updates, new_opt = tx.update(grads, state.opt_state, state.params, step=state.step)
        new_params = optax.apply_updates(state.params, updates)
        finite = all_finite(grads) & jnp.isfinite(loss) & all_finite(new_params)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(new_params, state.params),
            rest=keep_if_finite(new_rest, state.rest),
            opt_state=keep_if_finite(new_opt, state.opt_state),
            skipped=state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32),
            loss_scale=(None if state.loss_scale is None
                        else state.loss_scale.update(finite)),
        )
        metrics = {
            "loss": loss,
            "accuracy": out.correct / jnp.maximum(out.count, 1.0),
            "count": out.count,
            "finite": finite,
            "loss_scale": (jnp.asarray(1.0, jnp.float32) if state.loss_scale is None
                           else state.loss_scale.scale),
            "skipped": new_state.skipped,
        }
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated),
                   donate_argnums=(0,) if donate else ())
