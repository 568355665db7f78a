"""Approximate inner-product search with an inverted file, run as one matrix product per list.

The database (R, D) is split into ``nlist`` lists by spherical k-means (:func:`spherical_kmeans`
on a sample, then every row assigned to its most similar centroid by exact chunked search). A query
probes the ``nprobe`` lists whose centroids are most similar to it and is compared with the
members of those lists only, so the fine search costs about ``nprobe / nlist`` of the exact
one. At ``nprobe == nlist`` every query sees every row and the result is the exact top-k.

faiss has the same index (``IndexIVFFlat``), but it scans each query's lists one query at a
time with vector instructions, about 8 GFLOP/s on the 2-core development machine of
2026-12-02 against 100-160 GFLOP/s for a matrix product (docs/benchmarks.md). Here the loop
runs over the lists instead: all the queries that probe list c are gathered and compared with
its members in one matrix product (numpy/BLAS, then the exact top-k of
:func:`search.topk_from_scores`), so the arithmetic runs at GEMM speed.

Cost (Nq queries, D dims): training ``niter * train_rows * nlist * 2D`` FLOP, assignment
``R * nlist * 2D``, coarse search ``Nq * nlist * 2D``, fine search about
``Nq * R * nprobe / nlist * 2D``. The sum is smallest near ``nlist = sqrt(Nq * nprobe)``,
independent of R, but lists of fewer than a few hundred rows make the per-list products too
small to run at GEMM speed, so :func:`default_nlist` also keeps lists at >= 512 rows. Memory: the database is read list by list (a
float16 memory map is fine); the candidates of a block of queries take
``block_queries * nprobe * k * 12`` bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from lmr_jax.retrieval import search

log = logging.getLogger(__name__)

CANDIDATE_BYTES = 1 << 29  # bound on the candidate buffers of one query block


@dataclasses.dataclass(frozen=True)
class InvertedFile:
    """Lists of a database: centroids (nlist, D) float32 unit rows, and the database rows of
    list c, ``members[offsets[c]:offsets[c + 1]]`` (int64, ascending)."""

    centroids: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @property
    def nlist(self) -> int:
        return self.centroids.shape[0]

    def list_rows(self, c: int) -> np.ndarray:
        """Database rows of list ``c`` (ascending)."""
        return self.members[self.offsets[c]:self.offsets[c + 1]]


MIN_LIST_ROWS = 512  # smaller lists make products too small for BLAS to run at full speed


def default_nlist(num_queries: int, num_database: int, nprobe: int) -> int:
    """sqrt(num_queries * nprobe) (module docstring), at least ``nprobe`` and at most one
    list per MIN_LIST_ROWS database rows."""
    best = int(round(math.sqrt(max(1, num_queries) * nprobe)))
    return max(1, min(max(best, nprobe), num_database // MIN_LIST_ROWS or 1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(points: np.ndarray, num_centroids: int, *, niter: int = 5,
                     seed: int = 0) -> np.ndarray:
    """Lloyd's k-means on the unit sphere: (num_centroids, D) float32 unit centroids.

    Starts from distinct random points; each iteration assigns every point to its most
    similar centroid (the exact search, :func:`search.topk_inner_product`) and moves
    each centroid to the normalised mean of its points (a centroid with none stays). faiss's
    ``Kmeans`` does the same but ran 5x slower on the loaded development machine of
    2026-12-02, at its BLAS's 10-18 GFLOP/s.
    """
    x = np.ascontiguousarray(points, np.float32)
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), num_centroids, replace=False)].copy()
    for _ in range(niter):
        _, nearest = search.topk_inner_product(x, centroids, 1)
        order = np.argsort(nearest[:, 0], kind="stable")
        counts = np.bincount(nearest[:, 0], minlength=num_centroids)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[filled])[:-1]])
        centroids[filled] = _unit(np.add.reduceat(x[order], starts, axis=0))
    return centroids


def build_inverted_file(database: np.ndarray, nlist: int, *, niter: int = 5,
                        points_per_list: int = 20, seed: int = 0,
                        chunk_size: int = search.DEFAULT_CHUNK) -> InvertedFile:
    """Spherical k-means lists of ``database`` (R, D) (L2-normalised rows; memmap allowed).

    Args:
      nlist: number of lists (<= R).
      niter, points_per_list: k-means iterations, and the training sample size per list (a
        random sample of ``nlist * points_per_list`` rows, all rows if R is smaller).
      seed: seed of the sample and of the k-means start.
    """
    n = database.shape[0]
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in [1, {n}] (the database rows), got {nlist}")
    rng = np.random.default_rng(seed)
    sample = min(n, nlist * points_per_list)
    rows = np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)
    centroids = spherical_kmeans(database[rows], nlist, niter=niter, seed=seed)
    assign = np.empty(n, np.int64)
    for start in range(0, n, chunk_size):
        chunk = np.ascontiguousarray(database[start:start + chunk_size], np.float32)
        _, best = search.topk_inner_product(chunk, centroids, 1)
        assign[start:start + len(chunk)] = best[:, 0]
    members = np.argsort(assign, kind="stable")
    offsets = np.zeros(nlist + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(assign, minlength=nlist))
    return InvertedFile(centroids, offsets, members)


def ivf_topk(queries: np.ndarray, database: np.ndarray, ivf: InvertedFile, k: int, *,
             nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k by inner product: each query against the ``nprobe`` lists nearest it.

    Args:
      queries: (Q, D) float; database: (R, D), the array ``ivf`` was built on.
      k: results per query; missing entries (fewer than k rows probed) have index -1 and
        score -inf.
      nprobe: lists probed per query (``nprobe >= ivf.nlist`` is the exact search).
    Returns:
      scores (Q, k) float32 descending, indices (Q, k) int64 into ``database``.
    """
    q = np.ascontiguousarray(queries, np.float32)
    if q.ndim != 2 or q.shape[1] != database.shape[1]:
        raise ValueError(f"queries {q.shape} and database {database.shape} must be (Q, D), (R, D)")
    nprobe = min(nprobe, ivf.nlist)
    nq = q.shape[0]
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    block = max(1, CANDIDATE_BYTES // (nprobe * k * 12))
    for b0 in range(0, nq, block):
        qb = q[b0:b0 + block]
        _, probe = search.topk_inner_product(qb, ivf.centroids, nprobe)
        cand_s = np.full((len(qb), nprobe, k), -np.inf, np.float32)
        cand_i = np.full((len(qb), nprobe, k), -1, np.int64)
        pairs = np.argsort(probe.ravel(), kind="stable")
        starts = np.searchsorted(probe.ravel()[pairs], np.arange(ivf.nlist + 1))
        for c in range(ivf.nlist):
            rows = ivf.list_rows(c)
            pair = pairs[starts[c]:starts[c + 1]]
            if not len(rows) or not len(pair):
                continue
            qi, slot = pair // nprobe, pair % nprobe
            scores = qb[qi] @ np.asarray(database[rows], np.float32).T
            kc = min(k, len(rows))
            top_s, cols = search.topk_from_scores(scores, kc)
            cand_s[qi, slot, :kc] = top_s
            cand_i[qi, slot, :kc] = rows[cols]
        best_s, sel = search.topk_from_scores(cand_s.reshape(len(qb), -1), k)
        out_s[b0:b0 + len(qb), :sel.shape[1]] = best_s
        out_i[b0:b0 + len(qb), :sel.shape[1]] = np.take_along_axis(
            cand_i.reshape(len(qb), -1), sel, 1)
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


@dataclasses.dataclass(frozen=True)
class IVFSearch:
    """Approximate top-k over one database, its inverted file built once on first use.

    ``nlist`` None picks :func:`default_nlist` for ``expected_queries`` queries.
    """

    database: np.ndarray
    nprobe: int = 32
    nlist: int | None = None
    expected_queries: int = 10_000
    seed: int = 0
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_lists(self) -> int:
        """``nlist``, or the :func:`default_nlist` it stands for."""
        return self.nlist or default_nlist(self.expected_queries, self.database.shape[0],
                                           self.nprobe)

    @property
    def cache_key(self) -> str:
        """Names the search in cached results (:mod:`reference_graph`): lists, probes, seed."""
        return f"ivf{self.num_lists}-probe{min(self.nprobe, self.num_lists)}-seed{self.seed}"

    def inverted_file(self) -> InvertedFile:
        if "ivf" not in self._cache:
            nlist = self.num_lists
            t0 = time.perf_counter()
            self._cache["ivf"] = build_inverted_file(self.database, nlist, seed=self.seed)
            log.info("inverted file: %d lists over %d rows: %.1f s", nlist,
                     self.database.shape[0], time.perf_counter() - t0)
        return self._cache["ivf"]

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), indices (Q, k)) as :func:`ivf_topk`."""
        return ivf_topk(queries, self.database, self.inverted_file(), k, nprobe=self.nprobe)
