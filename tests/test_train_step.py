"""The jitted train step and the trainer's failure handling, on a tiny real model (resnet_tiny).

* one step equals a direct computation: jax.grad of the plainly written loss, then PyTorch's SGD
  update rule (coupled decay, momentum buffer, bias group at 2x lr) written out in numpy;
* a non-finite batch changes nothing and is reported; float16 overflow is skipped and counted;
* per-device BatchNorm on 4 devices equals 4 separate 1-device computations combined by hand;
* a diverging run stops with an error naming the step, and its last checkpoint restores.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from lmr_jax import models
from lmr_jax.models import heads
from lmr_jax.train import distributed, losses, optim, precision, trainer
from lmr_jax.train.state import TrainModule, create_train_state, grow_rows
from lmr_jax.train.step import make_train_step
from lmr_jax.train.train_checkpoints import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, EMBED, SIZE, BATCH = 5, 32, 32, 8


def tiny_module(dtype=jnp.float32):
    module = TrainModule(models.create("resnet_tiny", embed_dim=EMBED, dtype=dtype,
                                       rngs=nnx.Rngs(0)),
                         heads.CosineClassifier(EMBED, NUM_CLASSES, rngs=nnx.Rngs(1)))
    module.train()
    return module


def batch(seed, nan=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    if nan:
        x[0, 0, 0, 0] = np.nan
    return {"image": x, "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}


def make(module, tx, loss_scale=None):
    mesh = distributed.make_mesh(jax.devices()[:1])
    graphdef, state = create_train_state(module, tx, loss_scale=loss_scale)
    state = distributed.replicate(state, mesh)
    step = make_train_step(graphdef, losses.LOSSES.build("arcface", scale=30.0, margin=0.3), tx,
                           mesh, state_sharding=jax.tree.map(lambda a: a.sharding, state),
                           donate=False)
    return mesh, step, state


def same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


TX_ARGS = dict(steps_per_epoch=10, base_lr=0.05, epochs=2, warmup_epochs=1, weight_decay=5e-4,
               weight_decay_bias=1e-4, bias_lr_factor=2.0)


def test_step_matches_direct_computation():
    module = tiny_module()
    tx = optim.make_optimizer(**TX_ARGS)
    mesh, step, state = make(module, tx)
    b = batch(0)
    # Direct computation on an independent copy of the same module.
    ref = tiny_module()
    graphdef, params, rest = nnx.split(ref, nnx.Param, ...)

    def plain_loss(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        logits = losses.arcface_logits(m(jnp.asarray(b["image"])), jnp.asarray(b["label"]),
                                       scale=30.0, margin=0.3)
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits),
                                             jnp.asarray(b["label"])[:, None], 1))

    grads = jax.jit(jax.grad(plain_loss))(params)
    ref(jnp.asarray(b["image"]))  # train-mode forward: updates the running statistics
    w0 = 0.01 * 0.05  # step 0 of the warmup: lr = warmup_factor * base_lr for both groups

    new_state, metrics = step(state, distributed.global_batch(b, mesh))
    got = dict(jax.tree_util.tree_flatten_with_path(new_state.params)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        p0 = np.asarray(dict(jax.tree_util.tree_flatten_with_path(params)[0])[path])
        bias = "bias" in jax.tree_util.keystr(path)
        wd = 1e-4 if bias else 5e-4
        want = p0 - w0 * (np.asarray(g) + wd * p0)  # first momentum buffer = d_p
        np.testing.assert_allclose(np.asarray(got[path]), want, rtol=1e-5, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    stats = nnx.state(ref, nnx.BatchStat)
    for path, v in jax.tree_util.tree_flatten_with_path(stats)[0]:
        full = dict(jax.tree_util.tree_flatten_with_path(new_state.rest)[0])
        np.testing.assert_allclose(np.asarray(full[path]), np.asarray(v), rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1 and bool(metrics["finite"])
    assert float(metrics["count"]) == BATCH
    np.testing.assert_allclose(float(metrics["loss"]), float(jax.jit(plain_loss)(params)),
                               rtol=1e-5)


def test_non_finite_batch_is_not_applied():
    tx = optim.make_optimizer(**TX_ARGS)
    mesh, step, state = make(tiny_module(), tx)
    new_state, metrics = step(state, distributed.global_batch(batch(1, nan=True), mesh))
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 1 and int(new_state.skipped) == 1
    assert same((state.params, state.rest, state.opt_state),
                (new_state.params, new_state.rest, new_state.opt_state))


def test_float16_overflow_is_skipped_and_counted():
    tx = optim.make_optimizer(**TX_ARGS)
    mesh, step, state = make(tiny_module(jnp.float16), tx,
                             loss_scale=precision.LossScale.create(2.0**60))
    s1, m1 = step(state, distributed.global_batch(batch(2), mesh))
    assert not bool(m1["finite"]) and int(s1.skipped) == 1
    assert float(s1.loss_scale.scale) == 2.0**59
    assert same(state.params, s1.params)
    s2, m2 = step(s1.replace(loss_scale=precision.LossScale.create(2.0**10)),
                  distributed.global_batch(batch(2), mesh))
    assert bool(m2["finite"]) and int(s2.skipped) == 1 and int(s2.step) == 2
    assert np.isfinite(float(m2["loss"]))
    assert not same(s1.params, s2.params)


PER_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from lmr_jax import models
    from lmr_jax.models import heads
    from lmr_jax.train import distributed, losses, optim
    from lmr_jax.train.state import TrainModule, create_train_state
    from lmr_jax.train.step import make_train_step

    def module():
        m = TrainModule(models.create("resnet_tiny", embed_dim=16, rngs=nnx.Rngs(0)),
                        heads.CosineClassifier(16, 4, rngs=nnx.Rngs(1)))
        m.train()
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1, -1, 2, 0, 3, 3, 2, 1, 0, 1, 2, 3], np.int32)  # one ignored
    loss_fn = losses.LOSSES.build("arcface")
    tx = optim.make_optimizer(steps_per_epoch=4, base_lr=0.1, epochs=1, warmup_epochs=0,
                              weight_decay=0.0, weight_decay_bias=0.0)
    mesh = distributed.make_mesh()
    graphdef, state = create_train_state(module(), tx)
    state = distributed.replicate(state, mesh)
    step = make_train_step(graphdef, loss_fn, tx, mesh, bn_mode="per_device",
                           state_sharding=jax.tree.map(lambda a: a.sharding, state))
    new, metrics = step(state, distributed.global_batch({"image": x, "label": y}, mesh))

    # By hand: each device's 4 rows through its own 1-device forward/backward.
    count = float((y >= 0).sum())
    gd, params, rest = nnx.split(module(), nnx.Param, ...)

    @jax.jit
    def loss_and_grad(p, xs, ys):
        def f(p):
            m = nnx.merge(gd, p, rest, copy=True)
            return loss_fn(m(xs), ys).loss_sum / count, nnx.state(m, nnx.BatchStat)
        return jax.value_and_grad(f, has_aux=True)(p)

    g_total, stats, loss_total = None, [], 0.0
    for d in range(4):
        (loss, stat), g = loss_and_grad(params, x[4 * d:4 * d + 4], y[4 * d:4 * d + 4])
        loss_total += float(loss)
        g_total = g if g_total is None else jax.tree.map(jnp.add, g_total, g)
        stats.append(stat)
    def sgd(path, p, g):  # first step, no decay: p - lr * g; biases get 2x lr
        return p - (0.2 if "bias" in jax.tree_util.keystr(path) else 0.1) * g

    want = jax.tree_util.tree_map_with_path(sgd, params, g_total)
    mean_stats = jax.tree.map(lambda *s: sum(s) / 4, *stats)
    # error relative to the size of each parameter's update
    err_p = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) /
                      (np.max(np.abs(np.asarray(b) - np.asarray(p0))) + 1e-12))
                for a, b, p0 in zip(jax.tree.leaves(new.params), jax.tree.leaves(want),
                                    jax.tree.leaves(params)))
    full = dict(jax.tree_util.tree_flatten_with_path(new.rest)[0])
    err_s = max(float(np.max(np.abs(np.asarray(full[p]) - np.asarray(v)) /
                          (1 + np.abs(np.asarray(v)))))
                for p, v in jax.tree_util.tree_flatten_with_path(mean_stats)[0])
    print("RESULT", err_p, err_s, abs(float(metrics["loss"]) - loss_total), len(jax.devices()))
""")


def test_per_device_batchnorm_equals_separate_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PER_DEVICE_SCRIPT], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT")][0]
    err_params, err_stats, err_loss, n_dev = (float(v) for v in line.split()[1:])
    assert n_dev == 4
    # float noise: ~2e-5 of the update, ~1e-7 of the statistics; a wrong reduction gives O(1)
    assert err_params < 1e-3 and err_stats < 1e-5 and err_loss < 1e-4, line


def test_grow_rows_keeps_first_classes():
    old = np.arange(12, dtype=np.float32).reshape(6, 2)  # 3 classes x 2 sub-centres
    new = -np.ones((10, 2), np.float32)
    out = grow_rows(old, new, num_subcenters=2)
    np.testing.assert_array_equal(out[:6], old)
    np.testing.assert_array_equal(out[6:], new[6:])
    with pytest.raises(ValueError, match="cannot grow"):
        grow_rows(new, old)


def test_divergence_stops_with_the_step_and_keeps_a_usable_checkpoint(tmp_path):
    from tests.test_train import CONFIG, make_dataset

    make_dataset(str(tmp_path / "data"))
    (tmp_path / "cfg.py").write_text(CONFIG.format(data_dir=str(tmp_path / "data")))
    spec = importlib.util.spec_from_file_location("cfg", tmp_path / "cfg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.stages = "1"
    config.stage1.base_lr = 1e20  # weights ~1e20 after one update: float32 overflows next
    config.stage1.warmup_epochs = 0.0
    with pytest.raises(trainer.TrainingDiverged, match=r"not finite at step \d+") as err:
        trainer.train(config, str(tmp_path / "run"))
    bad = int(str(err.value).split("at step ")[1].split()[0])
    ckpt = Checkpointer(tmp_path / "run" / "stage1" / "checkpoints")
    last = ckpt.latest_step()
    assert bad >= 1 and last == bad, (bad, last)  # everything before the bad step was saved
    restored = ckpt._manager.restore(last, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    assert restored["meta"]["step"] == last
    leaves = jax.tree.leaves(restored["state"])
    assert leaves and all(np.isfinite(np.asarray(v)).all() for v in leaves)
    ckpt.close()
