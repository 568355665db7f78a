"""Optimiser, schedule and loss scaling against PyTorch and direct transcriptions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from lmr_jax.train import optim, precision


def spec_lr(t, *, base, lr_max, epochs, warmup):
    """docs/reference.md (Schedule) / timm CosineLRScheduler, transcribed in plain Python floats."""
    w0, lr_min = 0.01 * base, 0.002 * base
    if t < warmup:
        return w0 + t * (lr_max - w0) / warmup
    if t >= epochs:
        return lr_min
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t / epochs))


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_schedule_matches_formula_per_group(warmup):
    spe, epochs, base = 7, 3, 0.08
    for lr_max in (base, 2 * base):  # weights and biases (bias_lr_factor 2)
        fn = jax.jit(optim.make_schedule(steps_per_epoch=spe, base_lr=base, lr_max=lr_max,
                                         epochs=epochs, warmup_epochs=warmup))
        for step in range(epochs * spe + 2):
            want = spec_lr(step / spe, base=base, lr_max=lr_max, epochs=epochs, warmup=warmup)
            np.testing.assert_allclose(float(fn(step)), want, rtol=1e-7, err_msg=f"step {step}")
    fn = optim.make_schedule(steps_per_epoch=spe, base_lr=base, lr_max=base, epochs=epochs,
                             warmup_epochs=warmup)
    assert float(fn(0)) == pytest.approx(0.01 * base if warmup else base, rel=1e-6)
    if warmup:  # the warmup ends at lr_max, then the (unshifted) cosine takes over
        assert float(fn(spe - 1)) == pytest.approx(0.01 * base + (spe - 1) / spe * 0.99 * base)
        assert float(fn(spe)) < float(fn(spe - 1))


def test_param_labels():
    params = {"conv": {"kernel": 1, "bias": 2}, "bn": {"scale": 3, "bias": 4},
              "neck_bn": {"bias": 5}, "classifier": {"weight": 6}}
    labels = optim.param_labels(params, frozen=("neck_bn/bias",))
    assert labels == {"conv": {"kernel": "weight", "bias": "bias"},
                      "bn": {"scale": "weight", "bias": "bias"},
                      "neck_bn": {"bias": "frozen"}, "classifier": {"weight": "weight"}}


def test_sgd_matches_torch_two_groups():
    """Several steps of torch.optim.SGD (two groups, scheduler set per iteration) vs optax."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    spe, epochs, base, wd, wd_bias = 3, 2, 0.1, 5e-4, 1e-4
    groups = []
    for name, p in net.named_parameters():
        bias = "bias" in name
        groups.append({"params": [p], "lr": base * (2 if bias else 1),
                       "weight_decay": wd_bias if bias else wd, "lr_max": base * (2 if bias else 1)})
    opt = torch.optim.SGD(groups, lr=base, momentum=0.9)

    params = {f"l{i}": {"kernel": net[i].weight.detach().numpy().T.copy(),
                        "bias": net[i].bias.detach().numpy().copy()} for i in (0, 2)}
    params = jax.tree.map(jnp.asarray, params)
    tx = optim.make_optimizer(steps_per_epoch=spe, base_lr=base, epochs=epochs, warmup_epochs=1,
                              weight_decay=wd, weight_decay_bias=wd_bias, bias_lr_factor=2.0)
    state = tx.init(params)

    def jax_loss(p, x, y):
        h = jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] + p["l2"]["bias"] - y) ** 2)

    rng = np.random.default_rng(0)
    for step in range(5):
        for g in opt.param_groups:  # the scheduler sets lr before the step
            g["lr"] = spec_lr(step / spe, base=base, lr_max=g["lr_max"], epochs=epochs, warmup=1)
        x = rng.normal(size=(6, 5)).astype(np.float32)
        y = rng.normal(size=(6, 3)).astype(np.float32)
        opt.zero_grad()
        torch.mean((net(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).backward()
        opt.step()
        grads = jax.grad(jax_loss)(params, x, y)
        updates, state = tx.update(grads, state, params, step=jnp.asarray(step))
        params = optax.apply_updates(params, updates)
    for i in (0, 2):
        np.testing.assert_allclose(np.asarray(params[f"l{i}"]["kernel"]),
                                   net[i].weight.detach().numpy().T, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(params[f"l{i}"]["bias"]),
                                   net[i].bias.detach().numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="iteration number"):
        tx.update(grads, state, params)


def test_loss_scale_matches_torch_grad_scaler():
    scale = torch.tensor([8.0])
    tracker = torch.tensor([0], dtype=torch.int32)
    ls = precision.LossScale.create(8.0, growth_interval=3)
    update = jax.jit(lambda s, f: s.update(f))
    pattern = [True, True, True, True, False, True, True, True, True, True, True, False, False]
    for finite in pattern:
        found_inf = torch.tensor([0.0 if finite else 1.0])
        torch._amp_update_scale_(scale, tracker, found_inf, 2.0, 0.5, 3)
        ls = update(ls, jnp.asarray(finite))
        assert float(ls.scale) == float(scale[0])
        assert int(ls.growth_tracker) == int(tracker[0])
    grads = {"a": jnp.ones(3) * 16.0, "b": jnp.asarray([jnp.inf])}
    assert not bool(precision.all_finite(grads))
    assert bool(precision.all_finite({"a": grads["a"]}))
    np.testing.assert_array_equal(np.asarray(ls.unscale(grads)["a"]), 16.0 / float(ls.scale))


def test_resolve_dtype():
    assert precision.resolve_dtype("auto", "cpu") == jnp.float32
    assert precision.resolve_dtype("auto", "gpu") == jnp.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve_dtype("fp8")
