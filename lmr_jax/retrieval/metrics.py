"""Retrieval and recognition metrics.

* GLDv2 / Kaggle retrieval metrics (docs/retrieval.md): mAP@100, mean precision@k and the mean
  position of the first correct result, with the conventions of the official GLDv2 scorer:
  a duplicated prediction uses up its rank but can only count once, a query of the solution
  without a prediction scores 0 (position ``max_predictions + 1``), and a prediction for a
  query outside the solution is an error.
* Global Average Precision (GAP) of the 2019 recognition task.
* Revisited Oxford / Paris mAP and mP@k for the Easy / Medium / Hard protocols.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _check_keys(predictions: Mapping[str, Sequence[str]], solution: Mapping[str, Sequence[str]]):
    for key in predictions:
        if key not in solution:
            raise ValueError(f"query {key!r} of the predictions is not part of the solution")


def average_precision(prediction: Sequence[str], ground_truth: Sequence[str] | set[str],
                      max_predictions: int = 100) -> float:
    """AP@max_predictions of one ranked list of ids (duplicates use up their rank).

    Returns sum over ranks i <= max_predictions holding a not-yet-seen correct id of
    (correct so far / i), divided by min(|ground_truth|, max_predictions).
    """
    gt = set(ground_truth)
    if not gt:
        raise ValueError("average_precision needs a non-empty ground truth")
    seen: set[str] = set()
    correct = 0
    ap = 0.0
    for rank, item in enumerate(prediction[:max_predictions], start=1):
        if item in seen:
            continue
        seen.add(item)
        if item in gt:
            correct += 1
            ap += correct / rank
    return ap / min(len(gt), max_predictions)


def mean_average_precision(predictions: Mapping[str, Sequence[str]],
                           solution: Mapping[str, Sequence[str]],
                           max_predictions: int = 100) -> float:
    """Kaggle/GLDv2 mAP@max_predictions: mean AP over every query of ``solution``.

    Args:
      predictions: query id -> ranked index ids; queries missing here score 0.
      solution: query id -> ground-truth index ids (non-empty); defines the denominator.
    Raises:
      ValueError: a query of ``predictions`` is not in ``solution``.
    """
    _check_keys(predictions, solution)
    if not solution:
        raise ValueError("empty solution: no query to score")
    total = sum(average_precision(pred, solution[key], max_predictions)
                for key, pred in predictions.items())
    return total / len(solution)


def mean_precisions(predictions: Mapping[str, Sequence[str]],
                    solution: Mapping[str, Sequence[str]],
                    max_predictions: int = 100) -> np.ndarray:
    """Mean precision@k for k = 1..max_predictions, shape (max_predictions,) float64.

    Duplicates are counted once; a missing query has precision 0 at every k.
    """
    _check_keys(predictions, solution)
    prec = np.zeros((len(solution), max_predictions))
    for row, (key, pred) in enumerate(predictions.items()):
        gt = set(solution[key])
        seen: set[str] = set()
        hits = np.zeros(max_predictions)
        for i, item in enumerate(pred[:max_predictions]):
            if item not in seen:
                seen.add(item)
                hits[i] = item in gt
        prec[row] = np.cumsum(hits) / np.arange(1, max_predictions + 1)
    return prec.mean(axis=0)


def mean_median_position(predictions: Mapping[str, Sequence[str]],
                         solution: Mapping[str, Sequence[str]],
                         max_predictions: int = 100) -> tuple[float, float]:
    """Mean and median 1-based position of the first correct id (max_predictions+1 if none)."""
    _check_keys(predictions, solution)
    positions = np.full(len(solution), max_predictions + 1, dtype=np.float64)
    for row, (key, pred) in enumerate(predictions.items()):
        gt = set(solution[key])
        for i, item in enumerate(pred[:max_predictions]):
            if item in gt:
                positions[row] = i + 1
                break
    return float(positions.mean()), float(np.median(positions))


def retrieval_metrics(predictions: Mapping[str, Sequence[str]],
                      solution: Mapping[str, Sequence[str]],
                      max_predictions: int = 100, prefix: str = "",
                      precision_ks: Sequence[int] = (1, 5, 10, 100)) -> dict[str, float]:
    """All retrieval metrics of one split as a flat dict (keys get ``prefix``-free names + suffix).

    Keys: ``map@100{prefix}``, ``precision@k{prefix}`` for each k, ``mean_position{prefix}``,
    ``median_position{prefix}``, ``num_queries{prefix}``.
    """
    preds = {k: v for k, v in predictions.items() if k in solution}
    precs = mean_precisions(preds, solution, max_predictions)
    mean_pos, median_pos = mean_median_position(preds, solution, max_predictions)
    out = {f"map@{max_predictions}{prefix}": mean_average_precision(preds, solution, max_predictions)}
    for k in precision_ks:
        if k <= max_predictions:
            out[f"precision@{k}{prefix}"] = float(precs[k - 1])
    out[f"mean_position{prefix}"] = mean_pos
    out[f"median_position{prefix}"] = median_pos
    out[f"num_queries{prefix}"] = len(solution)
    return out


def global_average_precision(predictions: Mapping[str, tuple[int, float]],
                             solution: Mapping[str, Sequence[int]]) -> float:
    """Recognition GAP (Kaggle convention).

    Args:
      predictions: query id -> (landmark id, confidence); queries without a prediction are
        simply absent. Every key must be in ``solution``.
      solution: query id -> ground-truth landmark ids (empty for a non-landmark query).
    Returns:
      sum over predictions sorted by confidence (descending; ties by query id then class,
      ascending) of precision-so-far at each correct one, divided by the number of queries
      with a landmark. Predictions on non-landmark queries count as wrong.
    """
    _check_keys(predictions, solution)
    num_positives = sum(1 for v in solution.values() if len(v) > 0)
    if num_positives == 0:
        raise ValueError("GAP needs at least one query with a landmark in the solution")
    order = sorted(predictions.items(), key=lambda kv: (kv[0], kv[1][0]))
    order = sorted(order, key=lambda kv: kv[1][1], reverse=True)
    correct = 0
    gap = 0.0
    for n, (key, (label, _)) in enumerate(order, start=1):
        if label in solution[key]:
            correct += 1
            gap += correct / n
    return gap / num_positives


def _revisited_ap(positions: np.ndarray, num_positives: int) -> float:
    """AP of the revisited-Oxford benchmark from 0-based positions of the positives.

    Each positive at position p (the j-th positive, 0-based) adds the mean of the precision
    just before it (j / p, 1 when p = 0) and at it ((j + 1) / (p + 1)) times 1/num_positives.
    """
    positions = np.sort(positions).astype(np.float64)
    j = np.arange(len(positions), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec0 = np.where(positions == 0, 1.0, j / np.maximum(positions, 1))
    prec1 = (j + 1) / (positions + 1)
    return float(np.sum((prec0 + prec1) / 2.0) / num_positives)


def revisited_map(ranks: np.ndarray, positives: Sequence[Sequence[int]],
                  junk: Sequence[Sequence[int]], kappas: Sequence[int] = (1, 5, 10)
                  ) -> tuple[float, np.ndarray]:
    """mAP and mean precision@kappa with junk images removed from each ranking.

    Args:
      ranks: (num_queries, num_db) int, each row the database indices in ranked order.
      positives: per query the database indices counted as correct.
      junk: per query the database indices removed from the ranking.
      kappas: ranks for the precision.
    Returns:
      (mAP over queries with at least one positive, mP@kappa array (len(kappas),)).
    """
    ranks = np.asarray(ranks)
    aps, prs = [], []
    for q in range(ranks.shape[0]):
        pos_set = np.asarray(positives[q], dtype=np.int64)
        if pos_set.size == 0:
            continue
        row = ranks[q]
        is_junk = np.isin(row, np.asarray(junk[q], dtype=np.int64))
        kept = row[~is_junk]
        pos = np.nonzero(np.isin(kept, pos_set))[0]
        aps.append(_revisited_ap(pos, pos_set.size))
        pr = []
        for kappa in kappas:
            kq = min(int(pos.max()) + 1, kappa) if pos.size else kappa
            pr.append(np.sum(pos + 1 <= kq) / kq)
        prs.append(pr)
    if not aps:
        raise ValueError("no query has a positive")
    return float(np.mean(aps)), np.mean(np.asarray(prs, dtype=np.float64), axis=0)


def revisited_protocols(ranks: np.ndarray, gnd: Sequence[Mapping[str, Sequence[int]]],
                        kappas: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Easy / Medium / Hard mAP (and mP@kappa) of ROxford5k / RParis6k.

    Args:
      ranks: (num_queries, num_db) ranked database indices per query.
      gnd: per query a mapping with keys ``easy``, ``hard``, ``junk`` (database indices), as
        in the benchmark's ``gnd_*.pkl`` files.
    Returns:
      {"map_easy", "map_medium", "map_hard", "mp@K_easy", ...} with mAP in [0, 1].
    """
    proto = {
        "easy": (lambda g: g["easy"], lambda g: list(g["junk"]) + list(g["hard"])),
        "medium": (lambda g: list(g["easy"]) + list(g["hard"]), lambda g: g["junk"]),
        "hard": (lambda g: g["hard"], lambda g: list(g["junk"]) + list(g["easy"])),
    }
    out: dict[str, float] = {}
    for name, (pos_fn, junk_fn) in proto.items():
        m, mp = revisited_map(ranks, [pos_fn(g) for g in gnd], [junk_fn(g) for g in gnd], kappas)
        out[f"map_{name}"] = m
        for kappa, p in zip(kappas, mp, strict=True):
            out[f"mp@{kappa}_{name}"] = float(p)
    return out


def revisited_from_features(query_feats: np.ndarray, db_feats: np.ndarray,
                            gnd: Sequence[Mapping[str, Sequence[int]]],
                            kappas: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Easy / Medium / Hard mAP of L2-normalised features ranked by inner product.

    Args:
      query_feats: (Q, D) in the order of the benchmark's ``qimlist``.
      db_feats: (N, D) in the order of its ``imlist``.
      gnd: the benchmark's per-query ground truth.
    """
    sims = np.asarray(query_feats, np.float32) @ np.asarray(db_feats, np.float32).T
    return revisited_protocols(np.argsort(-sims, axis=1, kind="stable"), gnd, kappas)
