"""scripts/infer.py on images of the synthetic dataset: similarity with a Baidu retrieval model
(Baidu's preprocessing) and an lmr_jax model (its own, from the checkpoint's metadata), and
classify with a Baidu softmax classifier and a label table. The expected numbers are computed
here with the preprocessing transcribed from cv2 calls (tests/test_baidu_preprocess.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from flax import nnx

from lmr_jax import models
from lmr_jax.data.lists import LabelTable
from lmr_jax.models import saved_model
from lmr_jax.models.model_config import ModelConfig
from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset
from tests.test_baidu_preprocess import baidu_steps

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, SyntheticConfig(num_landmarks=4, size=80, seed=2, corrupt=False))
    paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
    assert len(paths) >= 4
    return paths[:4]


def infer(*args: str) -> list[list[str]]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "infer.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line.split("\t") for line in proc.stdout.strip().splitlines()]


def save(path, config: ModelConfig, **meta) -> nnx.Module:
    model = models.create(config, rngs=nnx.Rngs(4))
    model.eval()
    saved_model.save_model(path, model, config=config, metadata=meta)
    return model


def cosines(feats: list[np.ndarray]) -> list[float]:
    first = feats[0] / np.linalg.norm(feats[0])
    return [float(first @ (f / np.linalg.norm(f))) for f in feats[1:]]


def short_side_shape(path: str, size: int) -> tuple[int, int]:
    h, w = cv2.imread(path).shape[:2]
    short = min(h, w)
    return (max(round(h * size / short) // 32 * 32, 32), max(round(w * size / short) // 32 * 32, 32))


def test_similarity_baidu_model(tmp_path, images):
    ckpt = tmp_path / "baidu"
    model = save(ckpt, ModelConfig(arch="resnet_tiny", last_stride=2, head="baidu_embedding",
                                   embed_dim=16))
    out = infer("similarity", "--checkpoint", str(ckpt), "--size", "64", *images)
    feats = []
    for p in images:
        x = baidu_steps(cv2.imread(p), *short_side_shape(p, 64), cv2.INTER_LANCZOS4)
        feats.append(np.asarray(model(x[None].astype(np.float32)))[0].astype(np.float64))
    assert [row[:2] for row in out] == [[images[0], p] for p in images[1:]]
    np.testing.assert_allclose([float(r[2]) for r in out], cosines(feats), atol=2e-6)


def test_similarity_lmr_jax_model_uses_its_training_size(tmp_path, images):
    ckpt = tmp_path / "lmr"
    model = save(ckpt, ModelConfig(arch="resnet_tiny", embed_dim=16), image_size=48)
    out = infer("similarity", "--checkpoint", str(ckpt), *images)
    std = 57.0 / 255.0  # lmr_jax's (the GLR2021 reference's) normalisation
    feats = []
    for p in images:
        rgb = cv2.cvtColor(cv2.resize(cv2.imread(p), (48, 48), interpolation=cv2.INTER_LINEAR),
                           cv2.COLOR_BGR2RGB) / 255.0
        x = ((rgb - np.array([0.485, 0.456, 0.406])) / std).astype(np.float32)
        feats.append(np.asarray(model(x[None]))[0].astype(np.float64))
    np.testing.assert_allclose([float(r[2]) for r in out], cosines(feats), atol=2e-5)


def test_classify_prints_landmark_ids_and_probabilities(tmp_path, images):
    ckpt = tmp_path / "cls"
    model = save(ckpt, ModelConfig(arch="resnet_tiny", last_stride=2, head="baidu_softmax_v1",
                                   num_classes=6))
    table = LabelTable(landmark_ids=[101, 205, 307, 409, 511, 613], countries=[""] * 6)
    table.save(tmp_path / "labels.csv")
    out = infer("classify", "--checkpoint", str(ckpt), "--top_k", "3", "--labels",
                str(tmp_path / "labels.csv"), images[1])
    img = cv2.imread(images[1])
    h, w = img.shape[:2]
    short = min(h, w)
    rh, rw = round(h * 224 / short) // 32 * 32, round(w * 224 / short) // 32 * 32
    full = baidu_steps(img, rh, rw, cv2.INTER_LINEAR)
    top, left = (rh - 224) // 2, (rw - 224) // 2
    x = full[top:top + 224, left:left + 224].astype(np.float32)
    prob = np.asarray(model.probabilities(x[None]))[0]
    order = np.argsort(-prob)[:3]
    assert [int(r[1]) for r in out] == [1, 2, 3]
    assert [int(r[2]) for r in out] == [table.landmark_ids[c] for c in order]
    np.testing.assert_allclose([float(r[3]) for r in out], prob[order], atol=2e-6)


def test_modes_refuse_the_wrong_model(tmp_path, images):
    ckpt = tmp_path / "emb"
    save(ckpt, ModelConfig(arch="resnet_tiny", last_stride=2, head="baidu_embedding",
                           embed_dim=8))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "infer.py"), "classify",
                           "--checkpoint", str(ckpt), images[0]], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "not a softmax classifier" in proc.stderr
