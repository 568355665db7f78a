"""Recognition voting against a dictionary transcription, and GAP of its output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmr_jax.data.lists import ImageList
from lmr_jax.retrieval import features, metrics, recognition, submission


def slow_vote(sims, labels, threshold):
    out = []
    for s_row, l_row in zip(sims, labels, strict=True):
        score = {}
        for s, lab in zip(s_row, l_row, strict=True):
            score[lab] = score.get(lab, 0.0) + s
        best = max(score, key=lambda lab: (score[lab], -list(l_row).index(lab)))
        conf = score[best] / len(s_row)
        out.append((-1 if conf < threshold or best < 0 else best, conf))
    return out


def test_vote_hand_case():
    sims = np.array([[0.9, 0.5, 0.45], [0.8, 0.7, 0.1], [0.3, 0.2, 0.1]])
    labels = np.array([[1, 2, 2], [4, 5, 6], [-1, -1, 3]])
    pred, conf = recognition.vote(sims, labels, threshold=0.2)
    # q0: label 2 wins with 0.95 > 0.9; q1: tie-free, 4 wins; q2: non-landmark refs win.
    np.testing.assert_array_equal(pred, [2, 4, -1])
    np.testing.assert_allclose(conf, [0.95 / 3, 0.8 / 3, 0.5 / 3], rtol=1e-6)


def test_vote_random_matches_slow():
    rng = np.random.default_rng(0)
    sims = -np.sort(-rng.random((50, 5)), axis=1).astype(np.float32)
    labels = rng.integers(-1, 4, size=(50, 5))
    pred, conf = recognition.vote(sims, labels, threshold=0.3)
    ref = slow_vote(sims, labels, 0.3)
    np.testing.assert_array_equal(pred, [p for p, _ in ref])
    np.testing.assert_allclose(conf, [c for _, c in ref], rtol=1e-5)


def test_recognize_end_to_end_gap():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((6, 32))
    ref_labels = np.repeat(np.arange(6), 10)
    refs = centers[ref_labels] + 0.3 * rng.standard_normal((60, 32))
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    q_labels = np.array([0, 1, 2, 3, 4, 5])
    q = centers[q_labels] + 0.3 * rng.standard_normal((6, 32))
    q = np.concatenate([q, rng.standard_normal((2, 32))])  # two non-landmark queries
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pred, conf = recognition.recognize(q, refs.astype(np.float32), ref_labels, k=5,
                                       threshold=0.5)
    np.testing.assert_array_equal(pred[:6], q_labels)
    np.testing.assert_array_equal(pred[6:], [-1, -1])
    sol = {f"q{i}": ([int(q_labels[i])] if i < 6 else []) for i in range(8)}
    preds = {f"q{i}": (int(p), float(c)) for i, (p, c) in enumerate(zip(pred, conf, strict=True))
             if p >= 0}
    assert metrics.global_average_precision(preds, sol) == pytest.approx(1.0)


def test_recognize_script(tmp_path):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((3, 16))
    ref_labels = np.repeat(np.arange(3), 4)
    refs = centers[ref_labels] + 0.1 * rng.standard_normal((12, 16))
    q = centers[[2, 0, 1]] + 0.1 * rng.standard_normal((3, 16))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    ref_ids = [f"r{i:02d}" for i in range(12)]
    # Reference features stored in another order than the list: matched by id.
    features.save_features(tmp_path / "refs", ref_ids[::-1], unit(refs)[::-1], "float32")
    features.save_features(tmp_path / "q", ["qa", "qb", "qc"], unit(q), "float32")
    ImageList(ids=ref_ids, labels=ref_labels, noisy=np.zeros(12, bool), countries=np.full(12, ""),
              continents=np.full(12, "OTHER"), num_classes=3, name="refs").save(tmp_path / "r.npz")
    (tmp_path / "sol.csv").write_text("id,landmarks,Usage\nqa,2,Public\nqb,1,Private\nqc,1,Public\n")
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, str(repo / "scripts" / "recognize.py"), f"--queries={tmp_path / 'q'}",
         f"--refs={tmp_path / 'refs'}", f"--ref_list={tmp_path / 'r.npz'}", "--k=3",
         f"--output={tmp_path / 'out.csv'}", f"--solution={tmp_path / 'sol.csv'}"],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # qa -> 2 correct, qb -> 0 wrong, qc -> 1 correct; the GAP printed is that of the file.
    preds = submission.read_recognition_submission(tmp_path / "out.csv")
    assert {k: v[0] for k, v in preds.items()} == {"qa": 2, "qb": 0, "qc": 1}
    sol = submission.read_recognition_solution(tmp_path / "sol.csv")
    assert out["gap"] == pytest.approx(metrics.global_average_precision(preds, sol))
    assert 0.0 < out["gap"] < 1.0
