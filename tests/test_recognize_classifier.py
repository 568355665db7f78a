"""Recognition with a softmax classifier (scripts/recognize.py --classifier), alone and combined
with the kNN vote, scored with GAP; and the combination rule against its statement."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from flax import nnx

from lmr_jax import models
from lmr_jax.data.lists import ImageList, LabelTable
from lmr_jax.models import saved_model
from lmr_jax.models.model_config import ModelConfig
from lmr_jax.retrieval import features
from lmr_jax.retrieval.recognition import combine_with_classifier
from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset
from tests.test_baidu_preprocess import baidu_steps

REPO = pathlib.Path(__file__).resolve().parent.parent
LANDMARK_IDS = [1001, 2002, 3003, 4004]


def test_combination_rule():
    knn = np.array([3, 3, -1, 5, 2])
    knn_conf = np.array([0.6, 0.2, 0.0, 0.9, 0.05], np.float32)
    cls = np.array([3, 4, 7, 6, 2])
    cls_conf = np.array([0.3, 0.5, 0.4, 0.1, 0.02], np.float32)
    labels, conf = combine_with_classifier(knn, knn_conf, cls, cls_conf, threshold=0.1)
    # agree: summed; disagree: the more confident; no kNN landmark: the classifier's;
    # 0.07 < threshold: non-landmark
    np.testing.assert_array_equal(labels, [3, 4, 7, 5, -1])
    np.testing.assert_allclose(conf, [0.9, 0.5, 0.4, 0.9, 0.07], rtol=1e-6)
    with pytest.raises(ValueError, match="differ in length"):
        combine_with_classifier(knn[:2], knn_conf[:2], cls, cls_conf)


def classifier_top1(model, path: str) -> tuple[int, float]:
    img = cv2.imread(path)
    h, w = img.shape[:2]
    short = min(h, w)
    rh, rw = round(h * 224 / short) // 32 * 32, round(w * 224 / short) // 32 * 32
    top, left = (rh - 224) // 2, (rw - 224) // 2
    x = baidu_steps(img, rh, rw, cv2.INTER_LINEAR)[top:top + 224, left:left + 224]
    p = np.asarray(model.probabilities(x[None].astype(np.float32)))[0]
    return int(np.argmax(p)), float(np.max(p))


def recognize(cwd, *args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "recognize.py"), *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_csv(path) -> dict[str, str]:
    lines = pathlib.Path(path).read_text().strip().splitlines()[1:]
    return dict(line.split(",", 1) for line in lines)


def test_recognize_with_the_classifier_alone_and_combined(tmp_path):
    root = tmp_path / "synthetic"
    make_dataset(root, SyntheticConfig(num_landmarks=4, size=64, seed=3, corrupt=False))
    paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))[:6]
    queries = ImageList.from_files(paths)
    queries.save(tmp_path / "queries.npz")
    config = ModelConfig(arch="resnet_tiny", last_stride=2, head="baidu_softmax_v2",
                         num_classes=4)
    model = models.create(config, rngs=nnx.Rngs(7))
    model.eval()
    saved_model.save_model(tmp_path / "cls", model, config=config)
    table = LabelTable(landmark_ids=LANDMARK_IDS, countries=[""] * 4)
    table.save(tmp_path / "labels.csv")
    top1 = [classifier_top1(model, p) for p in paths]
    # Ground truth: the classifier's landmark for the first four queries, another landmark for
    # the last two; GAP = mean over the 6 of precision at the correct ones.
    truth = [LANDMARK_IDS[c] for c, _ in top1[:4]] + [
        LANDMARK_IDS[(c + 1) % 4] for c, _ in top1[4:]]
    sol = tmp_path / "solution.csv"
    sol.write_text("id,landmarks,Usage\n" + "".join(
        f"{q},{t},Public\n" for q, t in zip(queries.ids, truth, strict=True)))
    common = ["--classifier", str(tmp_path / "cls"), "--classifier_labels",
              str(tmp_path / "labels.csv"), "--query_list", str(tmp_path / "queries.npz"),
              "--solution", str(sol)]
    alone = recognize(tmp_path, *common, "--output", "alone.csv")
    rows = read_csv(tmp_path / "alone.csv")
    for q, (c, p) in zip(queries.ids, top1, strict=True):
        lid, conf = rows[q].split()
        assert int(lid) == LANDMARK_IDS[c] and float(conf) == pytest.approx(p, abs=1e-5)
    order = np.argsort([-p for _, p in top1], kind="stable")
    hits = np.array([i < 4 for i in order], float)
    want_gap = float(np.sum(hits * np.cumsum(hits) / np.arange(1, 7)) / 6)
    assert alone["method"] == "classifier"
    assert alone["gap"] == pytest.approx(want_gap)
    # kNN: each query's one reference neighbour (k 1) at similarity 0.8 is the true landmark;
    # combined, the first four agree with the classifier (0.8 + p), the last two take 0.8.
    refs = ImageList(ids=[f"r{i}" for i in range(4)], labels=[0, 1, 2, 3],
                     noisy=np.zeros(4, bool), countries=[""] * 4, continents=["OTHER"] * 4,
                     num_classes=4, name="refs")
    (tmp_path / "lists").mkdir()
    refs.save(tmp_path / "lists" / "refs.npz")
    table.save(tmp_path / "lists" / "labels.csv")
    label_of = {lid: i for i, lid in enumerate(LANDMARK_IDS)}
    # unit query features: 0.8 along the true landmark's reference, 0.6 along an extra axis
    qf = np.stack([0.8 * np.eye(4)[label_of[t]] for t in truth])
    qf = np.concatenate([qf, np.full((6, 1), 0.6)], axis=1).astype(np.float32)
    refs_feats = np.concatenate([np.eye(4), np.zeros((4, 1))], axis=1).astype(np.float32)
    features.save_features(tmp_path / "ref_feats", refs.ids, refs_feats, "float32")
    features.save_features(tmp_path / "q_feats", queries.ids, qf, "float32")
    both = recognize(tmp_path, *common, "--queries", "q_feats", "--refs", "ref_feats",
                     "--ref_list", "lists/refs.npz", "--k", "1", "--output", "both.csv")
    rows = read_csv(tmp_path / "both.csv")
    for i, (q, t) in enumerate(zip(queries.ids, truth, strict=True)):
        lid, conf = rows[q].split()
        assert int(lid) == t
        want = 0.8 + top1[i][1] if i < 4 else max(0.8, top1[i][1])
        assert float(conf) == pytest.approx(want, abs=1e-4)
    assert both["method"] == "knn+classifier" and both["gap"] == pytest.approx(1.0)
