"""Metrics: hand-worked cases and agreement with a direct transcription of the formulas."""

import numpy as np
import pytest

from lmr_jax.retrieval import metrics


def test_ap_hand_cases():
    gt = ["a", "b"]
    assert metrics.average_precision(["a", "x", "b"], gt) == pytest.approx((1 + 2 / 3) / 2)
    # A duplicate uses up its rank but counts once.
    assert metrics.average_precision(["a", "a", "b"], gt) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.average_precision(["a", "a", "a"], gt) == pytest.approx(1 / 2)
    # Fewer predictions than ground truth.
    assert metrics.average_precision(["x", "a"], ["a", "b", "c"]) == pytest.approx(0.5 / 3)
    assert metrics.average_precision([], gt) == 0.0


def test_ap_ground_truth_beyond_rank_100():
    gt = [f"g{i}" for i in range(150)]
    # 100 correct predictions: denominator is min(150, 100) -> AP = 1.
    assert metrics.average_precision(gt[:100], gt) == pytest.approx(1.0)
    # A correct id at rank 101 does not count.
    pred = [f"x{i}" for i in range(100)] + ["g0"]
    assert metrics.average_precision(pred, gt) == 0.0
    # Correct only at rank 100.
    pred = [f"x{i}" for i in range(99)] + ["g0"]
    assert metrics.average_precision(pred, gt) == pytest.approx(1 / 100 / 100)


def test_map_missing_query_and_unknown_query():
    sol = {"q1": ["a"], "q2": ["b"]}
    assert metrics.mean_average_precision({"q1": ["a"]}, sol) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="q3"):
        metrics.mean_average_precision({"q3": ["a"]}, sol)
    prec = metrics.mean_precisions({"q1": ["a", "x"]}, sol, max_predictions=2)
    np.testing.assert_allclose(prec, [0.5, 0.25])
    mean_pos, median_pos = metrics.mean_median_position({"q1": ["x", "a"]}, sol, max_predictions=5)
    assert mean_pos == pytest.approx((2 + 6) / 2) and median_pos == pytest.approx(4)


def _direct_ap(pred, gt, k=100):
    """Transcription of docs/reference.md (Metrics): sum_i<=k [new & correct] * P(i) / min(|GT|, k)."""
    rel = np.zeros(k)
    for i, p in enumerate(pred[:k]):
        rel[i] = (p in gt) and (p not in pred[:i])
    prec = np.cumsum(rel) / np.arange(1, k + 1)
    return float(np.sum(prec * rel) / min(len(gt), k))


def test_map_random_agrees_with_direct_formula():
    rng = np.random.default_rng(0)
    universe = [f"i{j}" for j in range(60)]
    sol, preds = {}, {}
    for q in range(40):
        gt = list(rng.choice(universe, size=rng.integers(1, 20), replace=False))
        sol[f"q{q}"] = gt
        if q % 7 == 3:
            continue  # no prediction for this query
        preds[f"q{q}"] = list(rng.choice(universe, size=rng.integers(1, 40), replace=True))
    k = 25
    direct = sum(_direct_ap(p, set(sol[q]), k) for q, p in preds.items()) / len(sol)
    assert metrics.mean_average_precision(preds, sol, k) == pytest.approx(direct, abs=1e-12)


def test_gap_hand_case():
    sol = {"q1": [5], "q2": [4], "q3": [7, 8], "q4": []}
    preds = {"q1": (5, 0.9), "q2": (3, 0.8), "q3": (8, 0.7), "q4": (1, 0.95)}
    # Sorted: q4 (wrong, non-landmark), q1 ok, q2 wrong, q3 ok -> (1/2 + 2/4) / 3.
    assert metrics.global_average_precision(preds, sol) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert metrics.global_average_precision({}, sol) == 0.0


def test_revisited_map_hand_case():
    # One query, 6 database images; ranking 0..5. Positives: 1 and 4; junk: 2.
    ranks = np.array([[0, 1, 2, 3, 4, 5]])
    m, mp = metrics.revisited_map(ranks, [[1, 4]], [[2]], kappas=(1, 2))
    # Without junk the ranking is 0,1,3,4,5: positives at positions 1 and 3 (0-based).
    # AP = [(0/1 + 1/2)/2 + (1/3 + 2/4)/2] / 2
    assert m == pytest.approx(((0 + 0.5) / 2 + (1 / 3 + 0.5) / 2) / 2)
    np.testing.assert_allclose(mp, [0.0, 0.5])
    gnd = [{"easy": [1], "hard": [4], "junk": [2]}]
    out = metrics.revisited_protocols(ranks, gnd, kappas=(1,))
    # Easy: positive 1, junk {2, 4}: kept 0,1,3,5 -> pos 1 -> AP = (0 + 1/2)/2.
    assert out["map_easy"] == pytest.approx(0.25)
    # Hard: positive 4, junk {2, 1}: kept 0,3,4,5 -> pos 2 -> AP = (0 + 1/3)/2.
    assert out["map_hard"] == pytest.approx(1 / 6)
    assert out["map_medium"] == pytest.approx(m)
