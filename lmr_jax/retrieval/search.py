"""Exact and approximate inner-product search, exact row top-k, and fusion of several models.

Exact search runs block by block over the database, so a memory-mapped float16 database of
millions of rows is never converted to float32 whole. Two backends compute it:

* "blas" (the default on CPU): each (query block, database block) product is one BLAS call
  (numpy's ``matmul``) and its scores go straight into a running top-k per query row
  (:class:`RowTopK`, faiss's C++ heaps), so the arithmetic runs at the BLAS GEMM rate and
  the selection costs a fraction of it; memory is one (BLAS_QUERY_BLOCK, BLAS_DB_BLOCK)
  score tile plus the heaps.
* "jax" (the default on GPU and TPU): one jitted call per (query block, database chunk) that
  scans the chunk in blocks of JAX_DB_BLOCK rows, a matrix product then an exact two-stage
  top-k (:func:`_grouped_topk`) per block.

"auto" picks "blas" when JAX's default backend is the CPU and "jax" otherwise. Both are exact:
the k best rows by float32 inner product, ties to the lower row. On the 2-core AMD EPYC
development machine (2026-12-07, 200,000 x 512 database) the BLAS search ran at 123-140
GFLOP/s against 58-86 for the jitted one at k = 30 (1.5-2.1x), and level with it at k = 1
(docs/benchmarks.md, Re-ranking).

Approximate options: the inverted file of :mod:`lmr_jax.retrieval.ivf` (the re-ranking's
approximate reference search), and faiss IVF-Flat / HNSW-Flat indexes for very large
databases; use :func:`recall_at_k` against the exact result to report what they lose.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import faiss

DEFAULT_CHUNK = 1 << 18
JAX_DB_BLOCK = 8192  # database rows per product in the jitted search
TOPK_GROUP = 32  # columns per group of the two-stage top-k
BLAS_DB_BLOCK = 8192  # database rows per BLAS product (converted to float32 once each)
BLAS_QUERY_BLOCK = 1024  # query rows per BLAS product: a 32 MB float32 score tile
# Heap slots kept per row beyond k: a row's top-k is settled by the heaps unless more than
# TIE_SLACK + 1 of its values tie with its k-th (then it is sorted stably instead).
TIE_SLACK = 8
# topk_from_scores uses the heaps for rows of at least this many columns per result (below,
# np.partition is faster: 4 ns a score at 512 columns against 10-58 for the heaps, k 11-100).
HEAP_COLUMNS_PER_K = 400
BACKENDS = ("auto", "blas", "jax")


def _faiss():
    """faiss, imported on first use (the JAX backend works without it)."""
    import faiss

    return faiss


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def merge_topk(scores_a: np.ndarray, idx_a: np.ndarray, scores_b: np.ndarray,
               idx_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two candidate lists per row (ties keep ``a`` before ``b``).

    All arrays are (Q, *); missing entries have index -1 and score -inf.
    """
    scores = np.concatenate([scores_a, scores_b], axis=1)
    idx = np.concatenate([idx_a, idx_b], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


class RowTopK:
    """Exact running top-k of every row of a (rows, columns) score matrix that arrives in blocks.

    Each row has a min-heap of k + TIE_SLACK (value, column) slots in faiss's C++ heaps; a
    block's values enter a heap only when larger than its smallest, so a pass costs about one
    comparison per score (3 ms for 1024 x 8192 scores on one core here). The heaps keep the
    right values but settle ties among equal values in any order, so :meth:`result` checks
    each row: when its k-th value is larger than its last slot's, every score of the row
    at or above the k-th value is in the heap and sorting the slots by (value desc, column
    asc) gives the exact top-k with ties to the lower column. The other rows (more than
    TIE_SLACK + 1 values tied with the k-th, or fewer than k finite scores) are recomputed
    whole by the caller and sorted stably.

    Memory: rows * (k + TIE_SLACK) * 12 bytes.
    """

    def __init__(self, rows: int, k: int):
        faiss = _faiss()
        self.k = k
        self.values = np.empty((rows, k + TIE_SLACK), np.float32)
        self.columns = np.empty((rows, k + TIE_SLACK), np.int64)
        self._heaps = faiss.float_minheap_array_t()
        self._heaps.k = k + TIE_SLACK
        self._heaps.nh = rows
        self._heaps.val = faiss.swig_ptr(self.values)
        self._heaps.ids = faiss.swig_ptr(self.columns)
        self._heaps.heapify()

    def add(self, scores: np.ndarray, first_column: int = 0, first_row: int = 0) -> None:
        """Offer ``scores`` (r, c), C-contiguous float32: the columns from ``first_column`` of
        the rows from ``first_row``."""
        if scores.dtype != np.float32 or not scores.flags.c_contiguous:
            raise ValueError("RowTopK.add needs a C-contiguous float32 array")
        r, c = scores.shape
        faiss = _faiss()
        threads = faiss.omp_get_max_threads()
        # One thread: the pass is about 1/15 of the BLAS product that made the scores, and
        # OpenMP threads left spinning after it took the cores from the next product (10 %
        # slower searches on 2 cores). The setting is the calling thread's own.
        faiss.omp_set_num_threads(1)
        try:
            self._heaps.addn(c, faiss.swig_ptr(scores), first_column, first_row, r)
        finally:
            faiss.omp_set_num_threads(threads)

    def result(self, exact_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray]:
        """(values (rows, k) float32 descending, columns (rows, k) int64), ties to the lower
        column; ``exact_rows(rows)`` gives the stable top-k (values, columns) of the rows
        the heaps could not settle (class docstring)."""
        self._heaps.reorder()
        order = np.lexsort((self.columns, -self.values), axis=1)
        values = np.take_along_axis(self.values, order, 1)
        columns = np.take_along_axis(self.columns, order, 1)
        k = self.k
        settled = (values[:, k - 1] > values[:, -1]) & (columns[:, k - 1] >= 0)
        values, columns = values[:, :k].copy(), columns[:, :k].copy()
        if not settled.all():
            rows = np.flatnonzero(~settled)
            values[rows], columns[rows] = exact_rows(rows)
        return values, columns


def _stable_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) of the k largest per row by a stable sort: ties to the lower column."""
    cols = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, cols, 1).astype(np.float32), cols.astype(np.int64)


def _partition_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (1 < k < C) of each row through the k-th largest value (``np.partition``):
    the columns at or above it; in rows with more than k such (ties at the k-th value), the
    columns above it and then the tied ones in column order until k are taken."""
    m, c = scores.shape
    kth = np.partition(scores, c - k, axis=1)[:, c - k, None]
    keep = scores >= kth
    over = np.flatnonzero(keep.sum(axis=1) > k)
    if len(over):
        s, t = scores[over], kth[over]
        above = s > t
        tied = s == t
        missing = k - above.sum(axis=1, keepdims=True)
        keep[over] = above | (tied & (np.cumsum(tied, axis=1) <= missing))
    cols = np.nonzero(keep)[1].reshape(m, k)
    values = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -values), axis=1)
    return np.take_along_axis(values, order, 1), np.take_along_axis(cols, order, 1)


def topk_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values (M, k) float32, columns (M, k) int64) of the k largest of each row of ``scores``
    (M, C), best first, ties to the lower column; k is capped at C. NaN scores are refused.

    k = 1 is an argmax; rows of at least HEAP_COLUMNS_PER_K * k columns go through the heaps
    of :class:`RowTopK` (fewer insertions per column the longer the row), shorter ones
    through :func:`_partition_topk`, each the faster on its side of that length here.
    """
    s = np.ascontiguousarray(scores, np.float32)
    m, c = s.shape
    k = min(k, c)
    if np.isnan(s).any():
        raise ValueError("topk_from_scores: the scores contain NaN")
    if k == 0 or k == c:
        return _stable_topk(s, k)
    if k == 1:
        cols = np.argmax(s, axis=1)[:, None]
        return np.take_along_axis(s, cols, 1), cols.astype(np.int64)
    if c >= HEAP_COLUMNS_PER_K * k and c > k + TIE_SLACK:
        top = RowTopK(m, k)
        top.add(s)
        return top.result(lambda rows: _stable_topk(s[rows], k))
    return _partition_topk(s, k)


def _grouped_topk(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of each row of ``scores`` (B, C) through group maxima.

    The top-k of a row lie in the k groups (of ``TOPK_GROUP`` columns) with the largest
    maxima, so a top-k over C / TOPK_GROUP maxima and one over k * TOPK_GROUP gathered
    scores replace a top-k over all C, which XLA:CPU does about as slowly as the product
    that made them. Falls back to ``lax.top_k`` when there are fewer than k groups.
    """
    b, c = scores.shape
    if c % TOPK_GROUP or c // TOPK_GROUP < k:
        return jax.lax.top_k(scores, k)
    groups = scores.reshape(b, c // TOPK_GROUP, TOPK_GROUP)
    _, best_groups = jax.lax.top_k(groups.max(axis=-1), k)
    best_groups = jnp.sort(best_groups, axis=-1)  # ties keep the lower column first
    cand = jnp.take_along_axis(groups, best_groups[:, :, None], axis=1).reshape(b, -1)
    values, pos = jax.lax.top_k(cand, k)
    cols = jnp.take_along_axis(best_groups, pos // TOPK_GROUP, axis=1) * TOPK_GROUP
    return values, cols + pos % TOPK_GROUP


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _jax_block_topk(q: jax.Array, chunk: jax.Array, n_valid: jax.Array, k: int, block: int):
    """Top-k of q (B, D) against chunk (nb * block, D), rows >= n_valid masked.

    A scan over blocks of ``block`` rows keeps a running top-k, so the score matrix in
    memory is (B, block); ties keep the lower row.
    """
    d = chunk.shape[1]
    blocks = chunk.reshape(-1, block, d)

    def step(carry, block_and_start):
        best_s, best_i = carry
        rows, start = block_and_start
        s = jnp.dot(q, rows.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)
        col = start + jnp.arange(block)
        s = jnp.where(col[None, :] < n_valid, s, -jnp.inf)
        v, c = _grouped_topk(s, min(k, block))
        all_s = jnp.concatenate([best_s, v], axis=1)
        all_i = jnp.concatenate([best_i, c + start], axis=1)
        top_s, pos = jax.lax.top_k(all_s, k)
        return (top_s, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
            jnp.full((q.shape[0], k), -1, jnp.int32))
    starts = jnp.arange(blocks.shape[0], dtype=jnp.int32) * block
    (best_s, best_i), _ = jax.lax.scan(step, init, (blocks, starts))
    return best_s, best_i


def _jax_chunk_topk(q: np.ndarray, chunk: np.ndarray, k: int):
    """Top-k of q (Q, D) against one database chunk on the default JAX device.

    The chunk is padded to a multiple of the database block (JAX_DB_BLOCK rows, or the
    chunk rounded up to 256 rows when smaller) and the queries to equal blocks of at most
    :func:`_query_block` rows, rounded up to 128, so a search compiles once per padded shape
    and k.
    """
    n = chunk.shape[0]
    block = min(JAX_DB_BLOCK, -(-n // 256) * 256)
    n_pad = -(-n // block) * block
    if n_pad != n:
        padded = np.zeros((n_pad, chunk.shape[1]), chunk.dtype)
        padded[:n] = chunk
        chunk = padded
    dev_chunk = jnp.asarray(chunk)
    # Equal blocks of at most _query_block() rows, rounded up to 128 rows.
    num_blocks = -(-q.shape[0] // _query_block())
    per_block = -(-q.shape[0] // num_blocks)
    qb_rows = -(-per_block // 128) * 128
    out_s, out_i = [], []
    for s in range(0, q.shape[0], qb_rows):
        rows = q[s:s + qb_rows]
        qb = np.zeros((qb_rows, q.shape[1]), np.float32)
        qb[:len(rows)] = rows
        bs, bi = _jax_block_topk(jnp.asarray(qb), dev_chunk, jnp.int32(n), k, block)
        out_s.append(np.asarray(bs)[:len(rows)])
        out_i.append(np.asarray(bi)[:len(rows)])
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def _query_block() -> int:
    """Query rows per jitted search call: 1,024 on CPU (a (1024, 8192) score block stays in
    cache-friendly sizes), 8,192 on accelerators."""
    return 1024 if jax.default_backend() == "cpu" else 8192


def _f32_rows(database: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of ``database`` as a C-contiguous float32 array (converted if stored
    otherwise, e.g. a float16 memory map)."""
    return np.ascontiguousarray(database[start:stop], np.float32)


def _blas_stable_topk(q: np.ndarray, database: np.ndarray, k: int, block: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a few query rows by a stable sort of each database block's scores and
    stable merges (ties to the lower row): the fallback of :func:`_blas_topk`'s unsettled rows."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for start in range(0, database.shape[0], block):
        s, i = _stable_topk(q @ _f32_rows(database, start, start + block).T, k)
        best_s, best_i = merge_topk(best_s, best_i, s, i + start, k)
    return best_s, best_i


def _blas_topk(q: np.ndarray, database: np.ndarray, k: int, block: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (k < rows of ``database``) by BLAS products and :class:`RowTopK` heaps.

    The database is read once, ``block`` rows at a time (each block converted to float32
    once); every query block of BLAS_QUERY_BLOCK rows is multiplied with it into one reused
    score tile, which goes into the heaps.
    """
    nq, n = q.shape[0], database.shape[0]
    top = RowTopK(nq, k)
    tile = np.empty(min(nq, BLAS_QUERY_BLOCK) * min(n, block), np.float32)
    for start in range(0, n, block):
        rows = _f32_rows(database, start, start + block)
        for q0 in range(0, nq, BLAS_QUERY_BLOCK):
            qb = q[q0:q0 + BLAS_QUERY_BLOCK]
            scores = tile[:len(qb) * len(rows)].reshape(len(qb), len(rows))
            np.matmul(qb, rows.T, out=scores)
            top.add(scores, first_column=start, first_row=q0)
    return top.result(lambda r: _blas_stable_topk(q[r], database, k, block))


def resolve_backend(backend: str) -> str:
    """The exact-search backend that ``backend`` names: "auto" is "blas" on CPU (JAX's default
    backend), "jax" on GPU and TPU (module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}: use one of {BACKENDS}")
    if backend == "auto":
        return "blas" if jax.default_backend() == "cpu" else "jax"
    return backend


def topk_inner_product(queries: np.ndarray, database: np.ndarray, k: int, *,
                       chunk_size: int = DEFAULT_CHUNK, backend: str = "auto"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, block by block over the database.

    Args:
      queries: (Q, D) float array.
      database: (N, D) float array (float16 memory maps are fine: read block by block).
      k: results per query; if k > N the tail is padded with index -1, score -inf.
      chunk_size: database rows in memory at a time ("blas": min(chunk_size, BLAS_DB_BLOCK)).
      backend: "auto", "blas" or "jax" (:func:`resolve_backend`, module docstring).
    Returns:
      scores (Q, k) float32 descending, indices (Q, k) int64 into ``database``; ties to the
      lower index.
    """
    backend = resolve_backend(backend)
    q = _as_f32(queries)
    if q.ndim != 2 or database.ndim != 2 or q.shape[1] != database.shape[1]:
        raise ValueError(f"queries {q.shape} and database {database.shape} must be (Q, D), (N, D)")
    nq, n = q.shape[0], database.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or n == 0 or k == 0:
        return best_s, best_i
    if backend == "blas":
        kn = min(k, n)
        block = min(chunk_size, BLAS_DB_BLOCK)
        if n <= kn + TIE_SLACK:
            s, i = _blas_stable_topk(q, database, kn, block)
        else:
            s, i = _blas_topk(q, database, kn, block)
        best_s[:, :kn], best_i[:, :kn] = s, i
        return best_s, best_i
    for start in range(0, n, chunk_size):
        kc = min(k, chunk_size, n - start)
        s, i = _jax_chunk_topk(q, np.asarray(database[start:start + chunk_size]), kc)
        s = np.where(i >= 0, s, -np.inf).astype(np.float32)
        i = np.where(i >= 0, i + start, -1)
        if start == 0 and kc == k:
            best_s, best_i = s, i
        else:
            best_s, best_i = merge_topk(best_s, best_i, s, i, k)
    return best_s, best_i


@dataclasses.dataclass(frozen=True)
class ExactSearch:
    """Exact top-k over one database (:func:`topk_inner_product`), called as ``(queries, k)``;
    the same call as the approximate :class:`lmr_jax.retrieval.ivf.IVFSearch`."""

    database: np.ndarray
    chunk_size: int = DEFAULT_CHUNK
    backend: str = "auto"

    @property
    def cache_key(self) -> str:
        """Names the search in cached results (:mod:`reference_graph`): "exact"."""
        return "exact"

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32 descending, indices (Q, k) int64)."""
        return topk_inner_product(queries, self.database, k, chunk_size=self.chunk_size,
                                  backend=self.backend)


def similarity_matrix(queries: np.ndarray, database: np.ndarray, *,
                      chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Dense (Q, N) float32 inner products, computed chunk by chunk over the database."""
    q = _as_f32(queries)
    out = np.empty((q.shape[0], database.shape[0]), dtype=np.float32)
    for start in range(0, database.shape[0], chunk_size):
        chunk = _as_f32(database[start:start + chunk_size])
        np.matmul(q, chunk.T, out=out[:, start:start + chunk.shape[0]])
    return out


def fuse_similarities(sims: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of several models' (Q, N) similarity matrices, float32."""
    if len(sims) != len(weights) or not sims:
        raise ValueError(f"need one weight per similarity matrix: {len(sims)} vs {len(weights)}")
    out = np.zeros(sims[0].shape, dtype=np.float32)
    for s, w in zip(sims, weights, strict=True):
        out += np.float32(w) * s
    return out


def fuse_features(feats: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Concatenate per-model features scaled by sqrt(weight), float32 (rows, sum of dims).

    The inner product of two fused rows equals the weighted sum of the per-model inner
    products, so fused search is plain inner-product search. Weights must be >= 0.
    """
    if len(feats) != len(weights) or not feats:
        raise ValueError(f"need one weight per feature matrix: {len(feats)} vs {len(weights)}")
    if any(w < 0 for w in weights):
        raise ValueError(f"fusion weights must be >= 0 to fuse features, got {list(weights)}")
    return np.concatenate([_as_f32(f) * np.float32(np.sqrt(w)) for f, w in
                           zip(feats, weights, strict=True)], axis=1)


def build_index(database: np.ndarray, kind: str = "flat", *, nlist: int = 1024,
                nprobe: int = 32, hnsw_m: int = 32, ef_search: int = 128,
                train_size: int = 200_000, seed: int = 0,
                chunk_size: int = DEFAULT_CHUNK) -> faiss.Index:
    """A faiss inner-product index over ``database`` (N, D).

    kind: "flat" (exact), "ivf" (IVF-Flat with ``nlist`` lists, ``nprobe`` probed, trained on
    up to ``train_size`` random rows) or "hnsw" (HNSW-Flat, ``hnsw_m`` links, ``ef_search``).
    """
    faiss = _faiss()
    d = database.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(database.shape[0], min(train_size, database.shape[0]),
                                  replace=False))
        index.train(_as_f32(database[rows]))
        index.nprobe = nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}: use flat, ivf or hnsw")
    for start in range(0, database.shape[0], chunk_size):
        index.add(_as_f32(database[start:start + chunk_size]))
    return index


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k) float32, indices (Q, k) int64) from a faiss index."""
    s, i = index.search(_as_f32(queries), k)
    return s, i


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx row & exact row| / k for two (Q, k) index arrays."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {approx.shape} vs {exact.shape}")
    hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size
