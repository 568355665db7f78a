"""SIGKILL of scripts/extract.py while it writes feature shards: the finished shards survive
unchanged and the re-run ends equal to an uninterrupted run. (SIGKILL during training, which
checkpoints every step there, so that kills land during saves too:
tests/test_train.py::test_resume_after_sigkill_is_bitwise_identical; during store preparation:
tests/test_data_store.py::test_killed_preparation_resumes.)"""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmr_jax.retrieval import features

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow_fault
def test_sigkill_during_feature_shard_writing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
        (images / f"img{i:02d}.png").write_bytes(buf.getvalue())

    def cmd(out):
        return [sys.executable, str(REPO / "scripts/extract.py"), "--arch", "resnet_tiny",
                "--folder", str(images), "--out", str(out), "--size=16", "--batch_size=1",
                "--shard_size=2", "--read_threads=1"]

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not features.shard_done(out, 1):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not features.is_done(out), "extraction ended before it was killed"
    written = {p.name: (p.stat().st_mtime_ns, p.read_bytes())
               for p in (out / "shards").glob("*.npz") if ".tmp" not in p.name}
    assert len(written) >= 2
    for r in (subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=300),
              subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True,
                             timeout=300)):
        assert r.returncode == 0, r.stderr[-2000:]
    for name, (mtime, data) in written.items():
        p = out / "shards" / name
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data
    a, b = features.load_features(tmp_path / "full"), features.load_features(out)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.feats, b.feats)
