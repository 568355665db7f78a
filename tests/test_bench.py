"""Smoke tests of the throughput benchmark (lmr_jax.bench): both sides run and report sane
figures. Speed itself is measured by scripts/bench.py, never asserted here."""

import sys
from pathlib import Path

import pytest

from lmr_jax import bench

sys.path.insert(0, str(Path(__file__).parent))


@pytest.mark.parametrize("mode", ["train", "embed"])
def test_jax_throughput_runs_the_step(mode):
    r = bench.jax_throughput("resnet_tiny", mode=mode, batch=2, size=32, dtype="float32",
                             num_classes=5, steps=2, warmup=0)
    assert r["img_s"] > 0 and r["step_s"] > 0 and r["peak_gb"] > 0
    assert r["img_s"] == pytest.approx(2 / r["step_s"])


def test_torch_throughput_trains_the_reference_model():
    import torch
    from torch_reference import common
    from torch_reference import resnet as torch_resnet

    model = common.RetrievalHead(torch_resnet.resnet50())
    before = [p.detach().clone() for p in model.parameters()]
    r = bench.torch_throughput(model, mode="train", batch=2, size=32, dtype="float32",
                               channels_last=False, num_classes=5, steps=1, warmup=0)
    assert r["img_s"] > 0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed > len(before) // 2  # the SGD step really updated the model
