"""scripts/convert_weights.py --format paddle on full-size Baidu checkpoints.

The files are written with the record writer of tests/test_convert_paddle.py (checked byte for
byte against Paddle's own files there) under the names and shapes of the real Paddle programs
(tests/data/paddle/full_names.json.gz), with well-conditioned random values. The check output
must equal the reduced-Paddle-verified loader's forward pass and the saved model, loaded by
path, must give it again; a retrieval model's output is the raw (unnormalised) embedding, a
classifier's the class probabilities.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lmr_jax.convert.paddle import load_paddle_model
from lmr_jax.models.saved_model import load_model
from tests.test_convert_paddle import FULL, write_record

REPO = pathlib.Path(__file__).resolve().parent.parent


def convert(*args: str) -> subprocess.CompletedProcess:
    """One run of the script (a subprocess: its absl flags are defined once per process)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "convert_weights.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def is_variance(name: str) -> bool:
    return name.endswith("_variance") or (name.startswith("batch_norm_") and
                                          name.endswith(".w_2"))


def write_checkpoint(key: str, target: pathlib.Path, num_classes: int | None = None) -> None:
    """A one-file-per-variable directory with the full program's names (BN variances > 0)."""
    rng = np.random.default_rng(0)
    target.mkdir()
    for name, shape in FULL[key]:
        if num_classes is not None and name in ("fc_0.w_0", "fc_0.b_0"):
            shape = [*shape[:-1], num_classes]
        value = 0.05 * rng.standard_normal(shape, np.float32)
        if is_variance(name):
            value = 1.0 + np.abs(value)
        (target / name).write_bytes(write_record(value))


@pytest.mark.parametrize("key,num_classes", [("resnet152_vd/numbered/retrieval", None),
                                             ("resnet152_vd/named/softmax_v2", 13)])
def test_convert_paddle_checks_and_saves(tmp_path, key, num_classes):
    src = tmp_path / "release"
    write_checkpoint(key, src, num_classes)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_dir, y_path = tmp_path / "converted", tmp_path / "y.npy"
    proc = convert("--format", "paddle", "--arch", "resnet152_vd", "--checkpoint", str(src),
                   "--output", str(out_dir), "--check-input", str(tmp_path / "x.npy"),
                   "--check-output", str(y_path))
    assert proc.returncode == 0, proc.stderr
    assert key.split("/")[1] + " names" in proc.stdout
    y = np.load(y_path)
    want = load_paddle_model(str(src), "resnet152_vd").model
    nhwc = x.transpose(0, 2, 3, 1)
    if num_classes is None:
        assert y.shape == (2, 512)
        np.testing.assert_allclose(y, np.asarray(want(nhwc)), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.linalg.norm(y, axis=1), 1.0)  # not L2-normalised
    else:
        assert y.shape == (2, num_classes)
        np.testing.assert_allclose(y, np.asarray(want.probabilities(nhwc)), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    model, classifier, meta = load_model(out_dir)
    assert classifier is None and meta["source_format"] == "paddle"
    assert meta["model_kwargs"]["head"] == ("baidu_embedding" if num_classes is None
                                            else "baidu_softmax_v2")
    assert meta["model_kwargs"]["last_stride"] == 2
    assert meta["paddle_layout"] == key.split("/")[1]
    again = model(nhwc) if num_classes is None else model.probabilities(nhwc)
    np.testing.assert_allclose(np.asarray(again), y, rtol=1e-5, atol=1e-7)


def test_convert_paddle_errors(tmp_path):
    proc = convert("--format", "paddle", "--arch", "resnet_tiny", "--checkpoint",
                   str(tmp_path), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--format paddle takes --arch" in proc.stderr
    src = tmp_path / "partial"
    src.mkdir()
    (src / "fc_0.w_0").write_bytes(write_record(np.zeros((2048, 512), np.float32)))
    proc = convert("--format", "paddle", "--arch", "resnet152_vd", "--checkpoint", str(src),
                   "--output", str(tmp_path / "o"))
    assert proc.returncode == 1 and "missing" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
