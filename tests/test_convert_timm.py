"""timm checkpoints: timm models built with random weights (pretrained=False) are the reference.

Each convertible timm model's state_dict is converted with the timm name and the features of
the lmr_jax backbone are compared with timm's ``forward_features`` (last_stride 2, as timm).
The deep ResNeSts (200e/269e) are checked on their key sets and shapes (meta device, no
memory); their blocks are the ones resnest50d/101e check numerically.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmr_jax.convert.convert import backbone_key_shapes, convert_state_dict
from lmr_jax.convert.mapping import CheckpointMismatchError
from lmr_jax.convert.timm_names import TIMM_MISMATCHES, TIMM_TO_LMR, TimmModelError, timm_arch
from lmr_jax.models.saved_model import load_model
from tests.torch_reference import common, timm_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def _timm_state(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k not in ("fc.weight", "fc.bias")}


@pytest.mark.parametrize("timm_name", sorted(TIMM_TO_LMR))
def test_key_sets_and_shapes_equal_timm(timm_name):
    ref = timm_models.create(timm_name, meta=True)
    assert _timm_state(ref) == backbone_key_shapes(timm_arch(timm_name), last_stride=2)


@pytest.mark.parametrize("timm_name,size", [("resnet50", 32), ("resnest50d", 32),
                                            ("resnest101e", 32)])
def test_features_match_timm(timm_name, size):
    ref = common.randomize_(timm_models.create(timm_name), seed=11).eval()
    x = common.structured_inputs(2, size, seed=4)
    converted = convert_state_dict(timm_arch(timm_name), common.numpy_state(ref),
                                   model_kwargs={"last_stride": 2})
    assert converted.info["dropped_keys"] == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        want = common.nchw_to_nhwc(ref.forward_features(common.nhwc_to_nchw(x)))
    ours = np.asarray(converted.model.base(x))
    assert ours.shape == want.shape
    rel, rel_max = common.rel_err(ours, want)
    assert rel < TOL and rel_max < TOL, (rel, rel_max)


@pytest.mark.parametrize("timm_name", ["resnet50d", "seresnext101_32x4d"])
def test_timm_variants_without_an_lmr_model_are_named(timm_name):
    with pytest.raises(TimmModelError, match=f"timm {timm_name} has .*would need"):
        timm_arch(timm_name)
    # The same from the keys alone, whatever --arch was asked for.
    ref = timm_models.create(timm_name, meta=True)
    state = {k: np.broadcast_to(np.float32(0), s) for k, s in _timm_state(ref).items()}
    with pytest.raises(CheckpointMismatchError, match="its keys are a timm .*would need"):
        convert_state_dict("resnet50", state)


def test_every_named_mismatch_is_a_timm_model():
    timm_models.create("resnet50", meta=True)  # imports timm
    import timm

    assert not (set(TIMM_MISMATCHES) | set(TIMM_TO_LMR)) - set(timm.list_models())
    with pytest.raises(TimmModelError, match="not one lmr_jax has"):
        timm_arch("vit_base_patch16_224")
    assert timm_arch("resnest50d.in1k") == "resnest50"


def test_cli_converts_a_timm_safetensors_file(tmp_path):
    """--format timm --arch resnet50: the timm name resolves to resnet50_torchvision."""
    from safetensors.torch import save_file

    ref = common.randomize_(timm_models.create("resnet50"), seed=12).eval()
    ckpt = os.path.join(tmp_path, "model.safetensors")
    save_file(ref.state_dict(), ckpt)
    out_dir = os.path.join(tmp_path, "converted")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "convert_weights.py"), "--format",
           "timm", "--arch", "resnet50", "--checkpoint", ckpt, "--output", out_dir,
           "--last-stride", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    assert "(timm resnet50 -> resnet50_torchvision)" in proc.stdout
    model, _, meta = load_model(out_dir)
    assert meta["arch"] == "resnet50_torchvision" and meta["timm_model"] == "resnet50"
    x = common.structured_inputs(1, 32, seed=5)
    with torch.no_grad():
        want = common.nchw_to_nhwc(ref.forward_features(common.nhwc_to_nchw(x)))
    rel, rel_max = common.rel_err(np.asarray(model.base(x)), want)
    assert rel < TOL and rel_max < TOL, (rel, rel_max)
    # A timm variant lmr_jax lacks: refused before reading the file, with the reason.
    proc = subprocess.run([*cmd[:5], "resnet50d", *cmd[6:], "--overwrite"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2 and "ResNet-D" in proc.stderr
