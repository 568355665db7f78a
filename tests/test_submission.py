"""Submission/solution IO and scoring, including the eval.py scoring mode."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmr_jax.retrieval import submission as sub

REPO = Path(__file__).resolve().parents[1]

SOLUTION = """id,images,Usage
q1,a b,Public
q2,c,Private
q3,None,Ignored
q4,d e f,Private
"""


@pytest.fixture
def solution_path(tmp_path):
    p = tmp_path / "solution.csv"
    p.write_text(SOLUTION)
    return p


def _write(tmp_path, text, name="sub.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_solution(solution_path):
    sol = sub.read_retrieval_solution(solution_path)
    assert sol.public == {"q1": ["a", "b"]}
    assert sol.private == {"q2": ["c"], "q4": ["d", "e", "f"]}
    assert sol.ignored == {"q3"}


def test_score_submission_splits_and_ignored(tmp_path, solution_path):
    p = _write(tmp_path, "id,images\nq1,a x b\nq2,x c\nq3,a b c\n")
    out = sub.score_retrieval_submission(p, solution_path)
    ap1, ap2, ap4 = (1 + 2 / 3) / 2, 1 / 2, 0.0
    assert out["map@100"] == pytest.approx((ap1 + ap2 + ap4) / 3)
    assert out["map@100_public"] == pytest.approx(ap1)
    assert out["map@100_private"] == pytest.approx((ap2 + ap4) / 2)
    assert out["num_predicted_queries"] == 2


def test_empty_images_row_is_valid_and_scores_zero(tmp_path, solution_path):
    """Kaggle accepts a row without ids: that query scores 0 (it predicted nothing)."""
    p = _write(tmp_path, "id,images\nq1,\nq2,c\nq4, \n")
    assert sub.read_retrieval_submission(p, sub.read_retrieval_solution(solution_path)) == {
        "q1": [], "q2": ["c"], "q4": []}
    out = sub.score_retrieval_submission(p, solution_path)
    assert out["map@100"] == pytest.approx((0.0 + 1.0 + 0.0) / 3)
    assert out["map@100_public"] == 0.0
    assert out["map@100_private"] == pytest.approx(0.5)


@pytest.mark.parametrize("text,match", [
    ("q1,a\n", "header"),
    ("id,images\nzz,a\n", "zz.*not in the solution"),
    ("id,images\nq2,c\nzz,\n", "zz.*not in the solution"),  # empty row, unknown id
    ("id,images\nq1,a\nq1,b\n", "twice"),
    ("id,images\nq1,a,b\n", "2 columns"),
])
def test_malformed_submissions(tmp_path, solution_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(sub.SubmissionError, match=match) as e:
        sub.score_retrieval_submission(p, solution_path)
    assert str(p) in str(e.value)


def test_more_than_100_ids_cut_with_warning(tmp_path, solution_path, caplog):
    ids = " ".join([f"x{i}" for i in range(100)] + ["a"])
    p = _write(tmp_path, f"id,images\nq1,{ids}\n")
    with caplog.at_level(logging.WARNING):
        preds = sub.read_retrieval_submission(p, sub.read_retrieval_solution(solution_path))
    assert len(preds["q1"]) == 100 and "a" not in preds["q1"]
    assert "more than 100" in caplog.text


def test_write_read_roundtrip(tmp_path):
    index_ids = np.array(["i0", "i1", "i2", "i3"])
    topk = np.array([[2, 0, -1], [3, 1, 0]])
    p = tmp_path / "s.csv"
    sub.write_retrieval_submission(p, ["qa", "qb"], index_ids, topk)
    assert p.read_text().splitlines() == ["id,images", "qa,i2 i0", "qb,i3 i1 i0"]
    assert sub.read_retrieval_submission(p) == {"qa": ["i2", "i0"], "qb": ["i3", "i1", "i0"]}
    r = tmp_path / "r.csv"
    sub.write_recognition_submission(r, [("qa", 7, 0.5), ("qb", None, 0.0)])
    assert sub.read_recognition_submission(r) == {"qa": (7, 0.5)}


def test_eval_script_scoring_mode(tmp_path, solution_path):
    p = _write(tmp_path, "id,images\nq1,a x b\nq2,x c\nq4,f\n")
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval.py"), "--submission", str(p),
         "--solution", str(solution_path)], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    ap1, ap2, ap4 = (1 + 2 / 3) / 2, 1 / 2, 1 / 3
    assert out["map@100"] == pytest.approx((ap1 + ap2 + ap4) / 3)
    assert out["map@100_public"] == pytest.approx(ap1)
    assert out["map@100_private"] == pytest.approx((ap2 + ap4) / 2)
    bad = _write(tmp_path, "id,images\nzz,a\n", "bad.csv")
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval.py"), "--submission", str(bad),
         "--solution", str(solution_path)], capture_output=True, text=True)
    assert res.returncode != 0 and "zz" in res.stderr and "Traceback" not in res.stderr
