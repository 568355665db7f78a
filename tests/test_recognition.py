"""Recognition voting against a dictionary transcription, and GAP of its output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmr_jax.data.lists import ImageList, LabelTable
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


def _run_recognize(*flags):
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(repo / "scripts" / "recognize.py"), *flags],
                          capture_output=True, text=True, timeout=300)


def test_recognize_script_writes_landmark_ids(tmp_path):
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
    # Labels 0, 1, 2 are the GLDv2 landmarks 1001, 57, 300.
    LabelTable(np.array([1001, 57, 300]), np.array(["FR", "", "JP"])).save(
        tmp_path / "labels.csv")
    (tmp_path / "sol.csv").write_text(
        "id,landmarks,Usage\nqa,300,Public\nqb,57,Private\nqc,57,Public\nqd,,Private\n")
    flags = [f"--queries={tmp_path / 'q'}", f"--refs={tmp_path / 'refs'}",
             f"--ref_list={tmp_path / 'r.npz'}", "--k=3", f"--output={tmp_path / 'out.csv'}",
             f"--solution={tmp_path / 'sol.csv'}"]
    res = _run_recognize(*flags)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    preds = submission.read_recognition_submission(tmp_path / "out.csv")
    assert {k: v[0] for k, v in preds.items()} == {"qa": 300, "qb": 1001, "qc": 57}
    # By hand: sorted by confidence, correct at the ranks of qa and qc; 3 landmark queries.
    order = sorted(preds, key=lambda k: -preds[k][1])
    hits = [order[i] in ("qa", "qc") for i in range(3)]
    want = sum(sum(hits[:i + 1]) / (i + 1) for i in range(3) if hits[i]) / 3
    assert out["gap"] == pytest.approx(want)
    assert out["gap_public"] == pytest.approx(1.0)  # qa and qc, both right
    assert out["gap_private"] == pytest.approx(0.0)  # qb wrong, qd non-landmark
    # A folder prepared before the table existed: a clear error saying how to regenerate.
    (tmp_path / "labels.csv").unlink()
    res = _run_recognize(*flags)
    assert res.returncode != 0
    assert "labels.csv" in res.stderr and "prepare_gldv2.py again" in res.stderr


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_readme_command_on_synthetic_dataset_perfect_neighbours_gap_one(tmp_path):
    """The README's recognize command on a prepared synthetic GLDv2: features that put every
    landmark query next to its own landmark's train images give GAP 1.0 (as GLDv2 landmark
    ids: lmr-jax's own label numbers would score 0); non-landmark queries (next to nothing)
    score nothing and are predicted non-landmark with a threshold. The ground truth comes
    from the raw CSVs."""
    from lmr_jax.data import store
    from lmr_jax.datasets.gldv2 import prepare as gld_prepare
    from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset

    root = tmp_path / "gldv2"
    make_dataset(root, SyntheticConfig(num_landmarks=24, size=32, seed=5, corrupt=False))
    prepared = tmp_path / "data" / "gldv2_prepared"
    gld_prepare.prepare(root, prepared, store_options=store.StoreOptions(shard_size=256),
                  progress=False)
    # Recognition ground truth from the GLDv2 files alone: query -> its index images' landmark
    # -> that landmark's category -> the train landmark of the same category.
    train_of_cat = {r["category"]: int(r["landmark_id"])
                    for r in _csv(root / "train/train_label_to_category.csv")}
    cat_of_index = {r["landmark_id"]: r["category"]
                    for r in _csv(root / "index/index_label_to_category.csv")}
    index_lm = {r["id"]: r["landmark_id"] for r in _csv(root / "index/index_image_to_landmark.csv")}
    rows = []
    for r in _csv(root / "test/retrieval_solution_v2.1.csv"):
        if r["Usage"] == "Ignored":
            rows.append((r["id"], [], "Private"))
        else:
            lms = sorted({train_of_cat[cat_of_index[index_lm[g]]] for g in r["images"].split()
                          if cat_of_index.get(index_lm[g]) in train_of_cat})
            rows.append((r["id"], lms, r["Usage"]))
    rows = [r for r in rows if len(r[1]) <= 1]
    assert any(not lms for _, lms, _ in rows) and sum(1 for _, lms, _ in rows if lms) >= 5
    sol = tmp_path / "recognition_solution_v2.1.csv"
    sol.write_text("id,landmarks,Usage\n" + "".join(
        f"{q},{' '.join(map(str, lms))},{u}\n" for q, lms, u in rows))
    # Features: one direction per train landmark_id (from train.csv); non-landmark queries
    # orthogonal to all of them.
    train = _csv(root / "train/train.csv")
    lids = sorted({int(r["landmark_id"]) for r in train})
    dim = len(lids) + len(rows)
    axis = {lid: i for i, lid in enumerate(lids)}

    def onehot(i):
        v = np.zeros(dim, np.float32)
        v[i] = 1.0
        return v

    all_ids = set(ImageList.load(prepared / "lists" / "all.npz").ids.tolist())
    refs = [(r["id"], onehot(axis[int(r["landmark_id"])])) for r in train if r["id"] in all_ids]
    features.save_features(tmp_path / "features" / "refs", [i for i, _ in refs],
                           np.stack([f for _, f in refs]), "float32")
    qfeats = [onehot(axis[lms[0]]) if lms else onehot(len(lids) + n)
              for n, (_, lms, _) in enumerate(rows)]
    features.save_features(tmp_path / "features" / "test", [q for q, _, _ in rows],
                           np.stack(qfeats), "float32")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ("python scripts/recognize.py --queries features/test --refs features/refs \\\n"
            "    --ref_list data/gldv2_prepared/lists/all.npz --output recognition.csv \\\n"
            "    --solution /data/gldv2/test/recognition_solution_v2.1.csv") in readme
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "scripts" / "recognize.py"), "--queries",
               "features/test", "--refs", "features/refs", "--ref_list",
               "data/gldv2_prepared/lists/all.npz", "--output", "recognition.csv",
               "--solution", str(sol)]
    res = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["gap"] == pytest.approx(1.0)
    assert out["gap_public"] == pytest.approx(1.0) and out["gap_private"] == pytest.approx(1.0)
    # With a confidence threshold the non-landmark queries are predicted as such.
    res = subprocess.run(command + ["--threshold=0.1"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["gap"] == pytest.approx(1.0)
    assert out["num_predicted_landmarks"] == sum(1 for _, lms, _ in rows if lms)
