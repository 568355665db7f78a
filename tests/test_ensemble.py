"""Ensembles through the evaluation command against a slow transcription of the reference fusion.

The reference re-ranks an ensemble model by model: each model's similarity matrix gets the
Landmark-Country bonus computed from that model's own query, index and reference features.
``before_merge`` (its submission setting) sums the re-ranked matrices with the model weights;
``after_merge`` sums the weighted plain similarities and then adds every model's bonus.
Written here per query with loops (the per-model re-ranking is the slow transcription of
test_rerank), then compared with the top-100 lists of the submissions scripts/eval.py writes.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.retrieval import features
from tests.test_rerank import slow_landmark_country

REPO = Path(__file__).resolve().parents[1]
NUM_Q, NUM_X, NUM_R = 3, 130, 70


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Three models of different widths on the same images, with weights."""
    root = tmp_path_factory.mktemp("ensemble")
    rng = np.random.default_rng(11)
    q_ids = [f"q{i:04d}" for i in range(NUM_Q)]
    x_ids = [f"x{i:04d}" for i in range(NUM_X)]
    r_ids = [f"r{i:04d}" for i in range(NUM_R)]
    lms = rng.integers(0, 6, NUM_R)
    cts = rng.choice(np.array(["FR", "DE", "JP", ""]), NUM_R)
    # Features share a landmark structure so that the tags differ between models but matter.
    centres = rng.standard_normal((6, 16))
    x_lm = rng.integers(0, 6, NUM_X)
    models = []
    for m, dim in enumerate((16, 24, 12)):
        proj = rng.standard_normal((16, dim))
        feats = {}
        for role, n, lab in (("query", NUM_Q, rng.integers(0, 6, NUM_Q)), ("index", NUM_X, x_lm),
                             ("ref", NUM_R, lms)):
            feats[role] = _unit(centres[lab] @ proj + 1.2 * rng.standard_normal((n, dim)))
        for role, ids in (("query", q_ids), ("index", x_ids), ("ref", r_ids)):
            features.save_features(root / f"m{m}" / role, ids, feats[role], "float32")
        models.append(feats)
    gt = [[x_ids[j] for j in rng.choice(NUM_X, 3, replace=False)] for _ in range(NUM_Q)]
    ValidationSet.from_ground_truth(q_ids, ["Public", "Private", "Public"], gt,
                                    x_ids).save(root / "validation.npz")
    ImageList(ids=r_ids, labels=lms, noisy=np.zeros(NUM_R, bool), countries=cts,
              continents=np.full(NUM_R, "Europe"), num_classes=6, name="full"
              ).save(root / "full.npz")
    return root, models, lms, cts, x_ids


def _config(root: Path, weights, ensemble_mode: str, workdir: Path) -> Path:
    lines = [f"""
import importlib.util
spec = importlib.util.spec_from_file_location("base", {str(REPO / 'configs/eval/gldv2_val.py')!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)

def get_config():
    c = base.get_config()
    c.workdir = {str(workdir)!r}
    c.validation = {str(root / 'validation.npz')!r}
    c.reference.list = {str(root / 'full.npz')!r}
    c.rerank = ("off", "landmark_country")
    c.rerank_options.landmark_country.ensemble = {ensemble_mode!r}
    c.picture.num_queries = 0
    models = []"""]
    for m, w in enumerate(weights):
        lines.append(f"""    mc = base.model("m{m}", weight={w})
    mc.query_features = {str(root / f'm{m}' / 'query')!r}
    mc.index_features = {str(root / f'm{m}' / 'index')!r}
    mc.ref_features = {str(root / f'm{m}' / 'ref')!r}
    models.append(mc)""")
    lines.append("    c.models = models\n    return c\n")
    path = workdir.parent / f"{workdir.name}_cfg.py"
    path.write_text("\n".join(lines))
    return path


def _read_top(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "images"]
    return {r[0]: r[1].split() for r in rows[1:]}


def slow_fusion(models, weights, lms, cts, mode):
    """The reference's ensemble re-ranking, query by query, float64."""
    reranked = [slow_landmark_country(m["query"], m["index"], m["ref"], lms, cts)
                for m in models]
    out = np.zeros((NUM_Q, NUM_X))
    for qi in range(NUM_Q):
        for i in range(NUM_X):
            total = 0.0
            for m, w, rr in zip(models, weights, reranked, strict=True):
                plain = float(np.dot(m["query"][qi].astype(np.float64),
                                     m["index"][i].astype(np.float64)))
                if mode == "before_merge":
                    total += w * rr[qi, i]
                else:  # weighted plain similarity, then the model's own bonus unweighted
                    total += w * plain + (rr[qi, i] - plain)
            out[qi, i] = total
    return out


def slow_plain(models, weights):
    out = np.zeros((NUM_Q, NUM_X))
    for qi in range(NUM_Q):
        for i in range(NUM_X):
            out[qi, i] = sum(w * float(np.dot(m["query"][qi].astype(np.float64),
                                              m["index"][i].astype(np.float64)))
                             for m, w in zip(models, weights, strict=True))
    return out


def _ranked(scores, x_ids):
    return [[x_ids[j] for j in sorted(range(NUM_X), key=lambda j, r=row: (-r[j], j))[:100]]
            for row in scores]


@pytest.mark.parametrize("mode,weights,num_models", [("before_merge", (0.5, 0.3, 0.2), 3),
                                                     ("after_merge", (0.7, 1.3), 2)])
def test_ensemble_top100_equals_reference_fusion(ensemble, tmp_path, mode, weights,
                                                 num_models):
    root, models, lms, cts, x_ids = ensemble
    models = models[:num_models]
    work = tmp_path / "work"
    cfg = _config(root, weights, mode, work)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), f"--config={cfg}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    q_ids = [f"q{i:04d}" for i in range(NUM_Q)]
    lc = _read_top(work / "submission_landmark_country.csv")
    want = _ranked(slow_fusion(models, weights, lms, cts, mode), x_ids)
    assert [lc[q] for q in q_ids] == want
    plain = _ranked(slow_plain(models, weights), x_ids)
    assert [_read_top(work / "submission_off.csv")[q] for q in q_ids] == plain
    assert want != plain  # the bonus changed the ranking


def test_modes_differ_and_unknown_mode_is_refused(ensemble):
    from lmr_jax.retrieval import rerank

    _, models, lms, cts, _ = ensemble
    feats = [rerank.ModelFeatures(m["query"], m["index"], m["ref"]) for m in models[:2]]
    refs = rerank.References(lms, cts)
    tops = {mode: rerank.RERANKERS.build("landmark_country", ensemble=mode)(
        feats, [0.2, 0.8], top_k=100, references=refs)[1] for mode in ("before_merge",
                                                                       "after_merge")}
    assert not np.array_equal(tops["before_merge"], tops["after_merge"])
    with pytest.raises(ValueError, match="ensemble must be one of"):
        rerank.RERANKERS.build("landmark_country", ensemble="average")
    with pytest.raises(ValueError, match="does not take"):
        rerank.RERANKERS.build("landmark_country", alpah=2.0)
    with pytest.raises(ValueError, match="needs the reference set"):
        rerank.RERANKERS.build("landmark_country")(feats, [1, 1], top_k=5)
