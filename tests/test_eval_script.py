"""scripts/eval.py config mode on a small synthetic validation set with known answers."""

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmr_jax.data.lists import ImageList, ValidationSet, gldv2_relpath
from lmr_jax.retrieval import features, submission

REPO = Path(__file__).resolve().parents[1]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcase")
    rng = np.random.default_rng(0)
    d, n_lm = 32, 5
    centers = _unit(rng.standard_normal((n_lm, d)))
    q_lm = np.array([0, 1, 2, 3, 4, 0])
    x_lm = np.repeat(np.arange(n_lm), 6)
    r_lm = np.repeat(np.arange(n_lm), 12)
    q = _unit(centers[q_lm] + 0.2 * rng.standard_normal((6, d)))
    x = _unit(centers[x_lm] + 0.2 * rng.standard_normal((30, d)))
    r = _unit(centers[r_lm] + 0.1 * rng.standard_normal((60, d)))
    q_ids = [f"q{i:03d}ab" for i in range(6)]
    x_ids = [f"x{i:03d}ab" for i in range(30)]
    r_ids = [f"r{i:03d}ab" for i in range(60)]
    gt = [[x_ids[j] for j in range(30) if x_lm[j] == q_lm[i]] for i in range(6)]
    val = ValidationSet.from_ground_truth(q_ids, ["Public"] * 3 + ["Private"] * 3, gt, x_ids)
    val.save(root / "validation.npz")
    countries = np.array(["FR", "DE", "IT", "JP", "US"])[r_lm]
    ref_list = ImageList(ids=r_ids, labels=r_lm, noisy=np.zeros(60, bool), countries=countries,
                         continents=np.full(60, "Europe"), num_classes=n_lm, name="full")
    ref_list.save(root / "full.npz")
    for name, ids, f in (("query", q_ids, q), ("index", x_ids, x), ("ref", r_ids, r)):
        features.save_features(root / "feats" / name, ids, f.astype(np.float32), "float32")
    # Images in GLDv2 layout for the picture.
    for split, ids in (("test", q_ids), ("index", x_ids)):
        for i in ids:
            p = root / "images" / gldv2_relpath(split, i)
            p.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
            p.write_bytes(buf.getvalue())
    cfg = root / "cfg.py"
    cfg.write_text(f"""
import importlib.util
spec = importlib.util.spec_from_file_location("base", {str(REPO / 'configs/eval/gldv2_val.py')!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)

def get_config():
    c = base.get_config()
    c.workdir = {str(root / 'work')!r}
    c.validation = {str(root / 'validation.npz')!r}
    c.images = {str(root / 'images')!r}
    m = base.model("toy", size=32)
    m.query_features = {str(root / 'feats/query')!r}
    m.index_features = {str(root / 'feats/index')!r}
    m.ref_features = {str(root / 'feats/ref')!r}
    c.models = [m]
    c.reference.list = {str(root / 'full.npz')!r}
    c.rerank = ("off", "landmark_country", "kreciprocal")
    c.picture.num_queries = 3
    c.picture.num_results = 4
    return c
""")
    return root, cfg, val, gt


def test_eval_config_mode(setup):
    root, cfg, val, gt = setup
    graphs = root / "graphs"  # the reference graph cache, on: the scores below are unchanged
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), f"--config={cfg}",
                          f"--config.rerank_options.landmark_country.reference_graph_dir={graphs}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    work = root / "work"
    report = json.loads((work / "report.json").read_text())
    assert set(report["methods"]) == {"off", "landmark_country", "kreciprocal"}
    (graph,) = graphs.iterdir()
    assert graph.name.endswith("_exact_k30.npy")
    # The written submissions score (through the CSV path) exactly what the report says.
    sol_path = root / "solution.csv"
    with open(sol_path, "w") as f:
        f.write("id,images,Usage\n")
        for qid, usage, g in zip(val.query_ids, val.usage, gt, strict=True):
            f.write(f"{qid},{' '.join(g)},{usage}\n")
    for method, r in report["methods"].items():
        scored = submission.score_retrieval_submission(r["submission"], sol_path)
        assert scored["map@100"] == pytest.approx(r["metrics"]["map@100"])
        assert scored["map@100_public"] == pytest.approx(r["metrics"]["map@100_public"])
        assert summary[f"map@100_{method}"] == pytest.approx(r["metrics"]["map@100"])
    # Landmark tags from a clean reference set put every ground-truth image first, which the
    # plain search does not.
    assert report["methods"]["off"]["metrics"]["map@100"] < 0.97
    assert report["methods"]["landmark_country"]["metrics"]["map@100"] == pytest.approx(1.0)
    assert summary["map@100"] == pytest.approx(1.0)  # submission method = landmark_country
    lines = (work / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,images" and len(lines) == 7
    assert all(len(line.split(",")[1].split()) == 30 for line in lines[1:])
    md = (work / "report.md").read_text()
    assert "| off |" in md and "landmark_country" in md and "kreciprocal" in md
    png = Image.open(work / "results.png")
    assert png.size[0] > 200 and png.size[1] > 100


def test_eval_extracts_on_the_fly(setup, tmp_path):
    """No feature folders: the queries and index are embedded from a checkpoint and images."""
    from flax import nnx

    from lmr_jax.models import ModelConfig, create
    from lmr_jax.models.saved_model import save_model

    root, _, val, _ = setup
    ckpt = tmp_path / "ckpt"
    save_model(ckpt, create("resnet_tiny", rngs=nnx.Rngs(0)),
               config=ModelConfig(arch="resnet_tiny"))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"""
import importlib.util
spec = importlib.util.spec_from_file_location("base", {str(REPO / 'configs/eval/gldv2_val.py')!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)

def get_config():
    c = base.get_config()
    c.workdir = {str(tmp_path / 'work')!r}
    c.validation = {str(root / 'validation.npz')!r}
    c.images = {str(root / 'images')!r}
    m = base.model("tiny", size=32, checkpoint={str(ckpt)!r})
    m.dtype = "float32"
    m.batch_size = 8
    c.models = [m]
    c.rerank = ("off",)
    c.submission_rerank = "off"
    c.picture.num_queries = 0
    return c
""")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), f"--config={cfg}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for role, n in (("query", 6), ("index", 30)):
        fs = features.load_features(tmp_path / "work" / "features" / "tiny" / role)
        assert len(fs) == n and fs.feats.shape[1] == 512
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.0 < summary["map@100"] <= 1.0 and summary["num_queries"] == 6
    assert len((tmp_path / "work" / "submission.csv").read_text().splitlines()) == 7


def test_eval_revisited_mode(tmp_path):
    db = np.eye(6, dtype=np.float32)
    q = _unit(np.array([[6.0, 5, 4, 3, 2, 1]])).astype(np.float32)  # ranks d0, d1, ..., d5
    order = [3, 0, 5, 1, 4, 2]  # the feature folder lists the database in another order
    features.save_features(tmp_path / "db", [f"d{i}" for i in order], db[order], "float32")
    features.save_features(tmp_path / "q", ["q0"], q, "float32")
    gnd = {"imlist": [f"d{i}" for i in range(6)], "qimlist": ["q0"],
           "gnd": [{"easy": [1], "hard": [4], "junk": [2], "bbx": None}]}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"),
                          f"--revisited_gnd={tmp_path / 'gnd.pkl'}",
                          f"--revisited_queries={tmp_path / 'q'}",
                          f"--revisited_db={tmp_path / 'db'}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # Worked by hand in test_metrics.test_revisited_map_hand_case.
    assert out["map_easy"] == pytest.approx(0.25)
    assert out["map_hard"] == pytest.approx(1 / 6)
    assert out["map_medium"] == pytest.approx(((0 + 0.5) / 2 + (1 / 3 + 0.5) / 2) / 2)
