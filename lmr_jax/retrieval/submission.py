"""Kaggle CSV input/output for retrieval and recognition.

Retrieval submission: header ``id,images``; one row per query; ``images`` = up to 100 index
ids separated by spaces. Retrieval solution (GLDv2 ``retrieval_solution_v2.1.csv``): header
``id,images,Usage`` with Usage Public, Private or Ignored (Ignored rows are non-landmark queries
with images ``None``). Recognition submission: ``id,landmarks`` with ``"<landmark> <score>"``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

USAGES = ("Public", "Private", "Ignored")


class SubmissionError(ValueError):
    """A malformed submission or solution file; the message names file and line."""


@dataclasses.dataclass
class RetrievalSolution:
    """Ground truth of a retrieval task.

    public / private: query id -> list of ground-truth index ids; ignored: query ids whose
    predictions are dropped before scoring (non-landmark queries).
    """

    public: dict[str, list[str]]
    private: dict[str, list[str]]
    ignored: set[str]

    @property
    def all(self) -> dict[str, list[str]]:
        return {**self.public, **self.private}


def _open_csv(path: str | os.PathLike):
    if not os.path.exists(path):
        raise SubmissionError(f"{path}: no such file")
    return open(path, newline="", encoding="utf-8-sig")  # tolerate a byte-order mark


def _csv_rows(path: str | os.PathLike, header: Sequence[str], *,
              exact_columns: bool = True) -> Iterator[tuple[int, list[str]]]:
    """The rows of a Kaggle CSV after its header, with their 1-based line numbers.

    The header must start with ``header``; empty rows are skipped; with ``exact_columns`` every
    row must have ``len(header)`` columns. Errors name ``path:line``.
    """
    names = ",".join(header)
    with _open_csv(path) as f:
        reader = csv.reader(f)
        got = next(reader, None)
        if got is None or [h.strip() for h in got[:len(header)]] != list(header):
            raise SubmissionError(f"{path}:1: expected header '{names}', got {got}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if exact_columns and len(row) != len(header):
                raise SubmissionError(f"{path}:{line}: expected {len(header)} columns "
                                      f"'{names}', got {len(row)}")
            yield line, row


def _solution_rows(path: str | os.PathLike, column: str,
                   parse: Callable[[str, str, str, int], Any]
                   ) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """(public, private, ignored) of a GLDv2 solution file ``id,<column>,Usage``.

    ``parse(qid, value, usage, line)`` turns a Public/Private row's ``column`` into its ground
    truth; Ignored rows only have their id kept. Errors name ``path:line``.
    """
    public: dict[str, Any] = {}
    private: dict[str, Any] = {}
    ignored: set[str] = set()
    for line, row in _csv_rows(path, ("id", column, "Usage")):
        qid, value, usage = (c.strip() for c in row)
        if usage == "Ignored":
            ignored.add(qid)
            continue
        if usage not in ("Public", "Private"):
            raise SubmissionError(f"{path}:{line}: Usage must be one of {USAGES}, got {usage!r}")
        (public if usage == "Public" else private)[qid] = parse(qid, value, usage, line)
    if not public and not private:
        raise SubmissionError(f"{path}: no Public or Private query")
    return public, private, ignored


def read_retrieval_solution(path: str | os.PathLike) -> RetrievalSolution:
    """Read ``id,images,Usage`` (GLDv2 retrieval solution) into a :class:`RetrievalSolution`."""

    def ground_truth(qid: str, images: str, usage: str, line: int) -> list[str]:
        gt = images.split()
        if not gt or gt == ["None"]:
            raise SubmissionError(f"{path}:{line}: {usage} query {qid} has no ground truth")
        return gt

    return RetrievalSolution(*_solution_rows(path, "images", ground_truth))


def read_retrieval_submission(path: str | os.PathLike, solution: RetrievalSolution | None = None,
                              max_predictions: int = 100) -> dict[str, list[str]]:
    """Read a retrieval submission ``id,images``.

    As the official GLDv2 / Kaggle reader: rows of queries Ignored by ``solution`` are dropped;
    a query id unknown to ``solution`` or a repeated query id is an error; a row whose
    ``images`` field is empty is valid and predicts nothing (the query then scores 0); rows
    with more than ``max_predictions`` ids are cut with a warning.

    Returns:
      query id -> list of predicted index ids (in file order; empty for an empty row).
    """
    known = solution.all if solution is not None else None
    preds: dict[str, list[str]] = {}
    cut = 0
    for line, row in _csv_rows(path, ("id", "images")):
        qid, images = row[0].strip(), row[1].split()
        if not qid:
            raise SubmissionError(f"{path}:{line}: empty query id")
        if solution is not None and qid in solution.ignored:
            continue
        if known is not None and qid not in known:
            raise SubmissionError(f"{path}:{line}: query id {qid!r} is not in the solution")
        if qid in preds:
            raise SubmissionError(f"{path}:{line}: query {qid} is listed twice")
        if len(images) > max_predictions:
            cut += 1
            images = images[:max_predictions]
        preds[qid] = images
    if cut:
        log.warning("%s: %d rows had more than %d ids; cut to the first %d", path, cut,
                    max_predictions, max_predictions)
    return preds


def write_retrieval_submission(path: str | os.PathLike, query_ids: Sequence[str],
                               index_ids: Sequence[str] | np.ndarray, topk: np.ndarray,
                               max_predictions: int = 100) -> None:
    """Write ``id,images`` with the ranked index ids of every query.

    Args:
      query_ids: (Q,) ids, one row each, in this order.
      index_ids: (N,) index ids.
      topk: (Q, K) int indices into ``index_ids`` in ranked order; negative entries (no result)
        are skipped; only the first ``max_predictions`` are written.
    """
    index_ids = np.asarray(index_ids)
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[0] != len(query_ids):
        raise ValueError(f"topk must be (num_queries={len(query_ids)}, K), got {topk.shape}")
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "images"])
        for qid, row in zip(query_ids, topk, strict=True):
            row = row[row >= 0][:max_predictions]
            w.writerow([qid, " ".join(index_ids[row].tolist())])
    os.replace(tmp, path)


def write_recognition_submission(path: str | os.PathLike,
                                 predictions: Iterable[tuple[str, int | None, float]]) -> None:
    """Write ``id,landmarks`` rows ``"<landmark> <confidence>"`` (empty when no landmark)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "landmarks"])
        for qid, label, conf in predictions:
            w.writerow([qid, "" if label is None else f"{int(label)} {float(conf):.6f}"])
    os.replace(tmp, path)


def read_recognition_submission(path: str | os.PathLike) -> dict[str, tuple[int, float]]:
    """Read ``id,landmarks``; rows with an empty prediction are left out."""
    out: dict[str, tuple[int, float]] = {}
    for line, row in _csv_rows(path, ("id", "landmarks")):
        parts = row[1].split()
        if not parts:
            continue
        if len(parts) != 2:
            raise SubmissionError(f"{path}:{line}: expected '<landmark> <score>', got {row[1]!r}")
        try:
            out[row[0].strip()] = (int(parts[0]), float(parts[1]))
        except ValueError as e:
            raise SubmissionError(f"{path}:{line}: {e}") from None
    return out


def score_retrieval_submission(submission: str | os.PathLike, solution: str | os.PathLike,
                               max_predictions: int = 100) -> dict[str, float]:
    """Score a submission file against a solution file: metrics for all, Public and Private.

    Returns a flat dict with ``map@100`` (all scored queries), ``map@100_public``,
    ``map@100_private``, precisions, positions and query counts.
    """
    from lmr_jax.retrieval import metrics

    sol = read_retrieval_solution(solution)
    preds = read_retrieval_submission(submission, sol, max_predictions)
    out: dict[str, float] = {}
    out.update(metrics.retrieval_metrics(preds, sol.all, max_predictions))
    if sol.public:
        out.update(metrics.retrieval_metrics(preds, sol.public, max_predictions, prefix="_public"))
    if sol.private:
        out.update(metrics.retrieval_metrics(preds, sol.private, max_predictions, prefix="_private"))
    out["num_predicted_queries"] = len(preds)
    out["num_ignored_queries"] = len(sol.ignored)
    return out


@dataclasses.dataclass
class RecognitionSolution:
    """Ground truth of the recognition task, in GLDv2 landmark ids.

    public / private: query id -> ground-truth landmark ids (empty: a non-landmark query,
    scored: a prediction on it counts as wrong); ignored: query ids left out of scoring.
    """

    public: dict[str, list[int]]
    private: dict[str, list[int]]
    ignored: set[str]

    @property
    def all(self) -> dict[str, list[int]]:
        return {**self.public, **self.private}


def read_recognition_solution(path: str | os.PathLike) -> RecognitionSolution:
    """Read ``id,landmarks,Usage`` (GLDv2 ``recognition_solution_v2.1.csv``).

    landmarks: space-separated landmark ids, empty (or ``None``) for a non-landmark query;
    Usage: Public, Private or Ignored.
    """

    def ground_truth(qid: str, landmarks: str, usage: str, line: int) -> list[int]:
        try:
            return [int(p) for p in landmarks.split() if p != "None"]
        except ValueError as e:
            raise SubmissionError(f"{path}:{line}: {e}") from None

    return RecognitionSolution(*_solution_rows(path, "landmarks", ground_truth))


def score_recognition_submission(submission: str | os.PathLike,
                                 solution: str | os.PathLike) -> dict[str, float | None]:
    """GAP of a recognition submission for all scored queries, Public and Private.

    As the official reader: predictions on Ignored queries are dropped, a query id that the
    solution does not list is an error. A subset without any landmark query has GAP None.

    Returns:
      ``{"gap", "gap_public", "gap_private", "num_predicted_queries"}``.
    """
    from lmr_jax.retrieval import metrics

    sol = read_recognition_solution(solution)
    preds = read_recognition_submission(submission)
    known = sol.all
    unknown = sorted(q for q in preds if q not in known and q not in sol.ignored)
    if unknown:
        raise SubmissionError(f"{submission}: {len(unknown)} query ids are not in the solution "
                              f"{solution}, e.g. {unknown[:3]}")
    out: dict[str, float | None] = {}
    for key, gt in (("gap", known), ("gap_public", sol.public), ("gap_private", sol.private)):
        has_landmark = any(len(v) for v in gt.values())
        out[key] = (metrics.global_average_precision(
            {q: p for q, p in preds.items() if q in gt}, gt) if has_landmark else None)
    out["num_predicted_queries"] = sum(1 for q in preds if q in known)
    return out


def read_revisited_gnd(path: str | os.PathLike) -> dict:
    """Read a Revisited Oxford/Paris ground truth (``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``).

    Returns the benchmark's dict: ``imlist`` (database image names), ``qimlist`` (query names)
    and ``gnd`` (per query ``easy``, ``hard``, ``junk`` database indices, ``bbx``). The file is
    a pickle, as the benchmark distributes it: only load files from a source you trust.
    """
    import pickle

    if not os.path.exists(path):
        raise SubmissionError(f"{path}: no such file")
    with open(path, "rb") as f:
        cfg = pickle.load(f)
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise SubmissionError(f"{path}: not a revisited ground truth (needs imlist, qimlist, gnd)")
    return cfg
