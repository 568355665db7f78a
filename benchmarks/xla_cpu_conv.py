"""Single convolutions and matrix products of the ResNet blocks, XLA:CPU against PyTorch (oneDNN).

Isolates the ops where the lmr_jax CPU training step loses time to PyTorch (docs/benchmarks.md,
Training): each case is one layer's forward, weight gradient or input gradient at the shape it
has in ResNet-50 / SE-ResNet-101-IBN-a, timed alone (median and minimum of ``--steps`` calls
after ``--warmup``, milliseconds; on a machine shared with other jobs the minimum is the steadier
figure). The JAX side is ``lax.conv_general_dilated`` (NHWC, HWIO) for the
convolutions and a flat ``jnp.dot`` for the 1x1 ones, as ``lmr_jax.models.layers.Conv2d`` computes
them; the PyTorch side is ``torch.nn.functional.conv2d`` and its ``convolution_backward`` on NCHW
(the layout of ``benchmarks/torch_side.py`` on CPU) and on channels_last tensors. One side per
process, one JSON object per case::

    python -m benchmarks.xla_cpu_conv --side jax
    XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.xla_cpu_conv --side jax
    python -m benchmarks.xla_cpu_conv --side torch
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from absl import app, flags

from benchmarks.timing import call_seconds

_SIDE = flags.DEFINE_enum("side", "jax", ["jax", "torch"], "Which implementation to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch of every case.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per case (median).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls first.")
_CASES = flags.DEFINE_list("cases", [], "Case names to run (default: all).")
_PASSES = flags.DEFINE_list("passes", ["fwd", "wgrad", "dgrad"], "Of fwd, wgrad, dgrad.")


class Case(NamedTuple):
    """One layer: (hw x hw x cin) -> cout, k x k kernel, stride, groups."""
    name: str
    hw: int
    cin: int
    cout: int
    k: int
    stride: int = 1
    groups: int = 1


# Shapes at 224 px input (layer4 at output stride 16, as the retrieval models run it).
CASES = (
    Case("stem7x7_s2", 224, 3, 64, 7, 2),
    Case("l1_3x3", 56, 64, 64, 3),
    Case("l1_1x1_expand", 56, 64, 256, 1),
    Case("l1_1x1_reduce", 56, 256, 64, 1),
    Case("l3_3x3", 14, 256, 256, 3),
    Case("l4_3x3", 14, 512, 512, 3),
    Case("l3_1x1_expand", 14, 256, 1024, 1),
    Case("l1_3x3_g32", 56, 128, 128, 3, groups=32),  # ResNeXt-101 32x4d layer1
    Case("l3_3x3_g32", 14, 512, 512, 3, groups=32),
)


def case_inputs(case: Case, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Random input (B, hw, hw, cin) and kernel (k, k, cin // groups, cout), float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, case.hw, case.hw, case.cin), np.float32)
    w = rng.standard_normal((case.k, case.k, case.cin // case.groups, case.cout), np.float32)
    return x, 0.05 * w


def jax_case(case: Case, x: np.ndarray, w: np.ndarray, which: str) -> Callable[[], Any]:
    """A closure computing one pass of ``case`` in JAX, jitted, blocking on its result.

    Returns the output (B, hw', hw', cout) for ``fwd``, the kernel gradient (k, k, cin //
    groups, cout) for ``wgrad``, the input gradient (B, hw, hw, cin) for ``dgrad``; the
    output's cotangent is all ones.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    p = case.k // 2

    def layer(x, w):
        if case.k == 1 and case.groups == 1:
            if case.stride > 1:
                x = x[:, ::case.stride, ::case.stride, :]
            b, h, ww, c = x.shape
            return jnp.dot(x.reshape(b * h * ww, c), w[0, 0]).reshape(b, h, ww, -1)
        return lax.conv_general_dilated(x, w, (case.stride, case.stride), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=case.groups)

    x, w = jnp.asarray(x), jnp.asarray(w)
    ct = jnp.ones(jax.eval_shape(layer, x, w).shape, x.dtype)
    if which == "fwd":
        fn, args = jax.jit(layer), (x, w)
    elif which == "wgrad":
        fn, args = jax.jit(lambda x, w, ct: jax.vjp(lambda w: layer(x, w), w)[1](ct)[0]), (x, w, ct)
    elif which == "dgrad":
        fn, args = jax.jit(lambda x, w, ct: jax.vjp(lambda x: layer(x, w), x)[1](ct)[0]), (x, w, ct)
    else:
        raise ValueError(f"pass must be fwd, wgrad or dgrad, not {which!r}")
    return lambda: jax.block_until_ready(fn(*args))


def torch_case(case: Case, x: np.ndarray, w: np.ndarray, which: str, *,
               channels_last: bool) -> Callable[[], Any]:
    """The same pass in PyTorch on NCHW (or channels_last) tensors: the output (B, cout, hw',
    hw'), the kernel gradient (cout, cin // groups, k, k) or the input gradient (B, cin, hw,
    hw)."""
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    w = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=fmt)
    p = case.k // 2
    with torch.no_grad():
        ct = torch.ones_like(F.conv2d(x, w, stride=case.stride, padding=p, groups=case.groups))
    masks = {"wgrad": [False, True, False], "dgrad": [True, False, False]}
    if which not in ("fwd", *masks):
        raise ValueError(f"pass must be fwd, wgrad or dgrad, not {which!r}")

    @torch.no_grad()
    def run():
        if which == "fwd":
            return F.conv2d(x, w, stride=case.stride, padding=p, groups=case.groups)
        grads = torch.ops.aten.convolution_backward(
            ct, x, w, None, [case.stride] * 2, [p] * 2, [1, 1], False, [0, 0], case.groups,
            masks[which])
        return grads[1] if which == "wgrad" else grads[0]

    return run


def _milliseconds(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, float]:
    """(median, minimum) wall-clock milliseconds of ``fn()``, which blocks until done."""
    times = 1e3 * np.asarray(call_seconds(fn, steps=steps, warmup=warmup))
    return float(np.median(times)), float(np.min(times))


def measure(case: Case, which: str) -> dict[str, Any]:
    """Milliseconds of one pass of ``case`` on the side chosen by ``--side``."""
    steps, warmup, batch = _STEPS.value, _WARMUP.value, _BATCH.value
    out: dict[str, Any] = {"case": case.name, "pass": which, "batch": batch,
                           "shape": f"{case.hw}x{case.hw}x{case.cin}->{case.cout} k{case.k} "
                                    f"s{case.stride} g{case.groups}"}
    x, w = case_inputs(case, batch)
    if _SIDE.value == "jax":
        out["jax_ms"], out["jax_min_ms"] = _milliseconds(jax_case(case, x, w, which), steps,
                                                         warmup)
    else:
        import torch

        for cl in (False, True):
            name = "torch_nhwc" if cl else "torch_nchw"
            out[f"{name}_ms"], out[f"{name}_min_ms"] = _milliseconds(
                torch_case(case, x, w, which, channels_last=cl), steps, warmup)
        out["torch_threads"] = torch.get_num_threads()
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: list[str]) -> None:
    del argv
    for case in CASES:
        if _CASES.value and case.name not in _CASES.value:
            continue
        for which in _PASSES.value:
            print(json.dumps(measure(case, which)), flush=True)


if __name__ == "__main__":
    app.run(main)
