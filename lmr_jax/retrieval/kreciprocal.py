"""k-reciprocal encoding and Jaccard distance (Zhong et al., CVPR 2017), vectorised.

Distances are ``dist = 1 - (cos + 1) / 2`` between L2-normalised features, the convention of
the reference re-ranking code (docs/retrieval.md). For every node i of a set:

1. forward(i) = the k1+1 nearest nodes (i itself included, ties to the lower index);
   R(i) = {j in forward(i) : i in forward(j)}.
2. For each candidate c in R(i), its half set R'(c) (same rule with round(k1/2) instead of
   k1, numpy rounding) is added when |R'(c) & R(i)| > 2/3 |R'(c)|.
3. V[i, e] = exp(-dist[i, e]) over the expanded set, normalised to sum 1.
4. Query expansion: V[i] <- mean of V over the k2 nearest nodes of i.
5. jaccard(i, j) = 1 - m / (2 - m), m = sum_col min(V[i, col], V[j, col]).

Two drivers share steps 1-2 (:func:`reciprocal_members`, jnp, no Python loop per node):

* :func:`local_query_jaccard`: dense, jitted and batched over many small local sets (the
  query-to-reference refinement of the Landmark-Country re-ranking, sets of <= 931 nodes).
* :func:`kreciprocal_rerank`: the full re-ranking of queries x index (sparse V in scipy
  CSR; neighbour lists from exact chunked search) for sets of ~10^5 nodes where a dense
  n x n matrix does not fit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from lmr_jax.retrieval import search


def half_k(k1: int) -> int:
    """round(k1 / 2) with numpy's round-half-to-even, as the reference code."""
    return int(np.around(k1 / 2.0))


def reciprocal_members(fwd: jax.Array, valid: jax.Array, k1: int) -> tuple[jax.Array, jax.Array]:
    """Members of the expanded k-reciprocal set of every node (steps 1-2 above).

    Args:
      fwd: (..., n, k1+1) int32 forward neighbour lists in rank order; row i of batch b lists
        nodes of the same batch.
      valid: (..., n) bool; invalid nodes (padding) are never members.
      k1: the k of the forward lists.
    Returns:
      members (..., n, L) int32 and mask (..., n, L) bool with L = (k1+1) * (1 + kh+1),
      kh = round(k1/2); the first k1+1 entries are R(i), then the accepted half sets. An
      index may appear more than once (mask true): callers deduplicate.
    """
    kh = half_k(k1)
    n = fwd.shape[-2]
    batch_shape = fwd.shape[:-2]
    fwd2 = fwd.reshape((-1, n, k1 + 1))
    valid2 = valid.reshape((-1, n))

    def one(f, v):
        node = jnp.arange(n, dtype=f.dtype)
        recip = v[f] & jnp.any(f[f] == node[:, None, None], axis=-1) & v[:, None]  # (n, k1+1)
        fh = f[:, :kh + 1]
        hrecip = v[fh] & jnp.any(fh[fh] == node[:, None, None], axis=-1)  # (n, kh+1)
        cand_h = fh[f]  # (n, k1+1, kh+1): half lists of the candidates c = f[i, a]
        cand_hmask = hrecip[f]
        in_r = jnp.any((cand_h[..., None] == f[:, None, None, :]) & recip[:, None, None, :],
                       axis=-1) & cand_hmask
        inter = jnp.sum(in_r, axis=-1)
        size = jnp.sum(cand_hmask, axis=-1)
        accept = recip & (inter > (2.0 / 3.0) * size)  # (n, k1+1)
        ext = cand_h.reshape(n, -1)
        ext_mask = (accept[:, :, None] & cand_hmask).reshape(n, -1)
        return (jnp.concatenate([f, ext], axis=1), jnp.concatenate([recip, ext_mask], axis=1))

    members, mask = jax.vmap(one)(fwd2, valid2)
    length = members.shape[-1]
    return members.reshape(batch_shape + (n, length)), mask.reshape(batch_shape + (n, length))


@functools.partial(jax.jit, static_argnames=("k1", "k2"))
def _local_query_jaccard(x: jax.Array, valid: jax.Array, k1: int, k2: int):
    b, n, _ = x.shape
    cos = jnp.einsum("bid,bjd->bij", x, x, precision=jax.lax.Precision.HIGHEST)
    dist = 1.0 - (cos + 1.0) / 2.0
    ranked = jnp.where(valid[:, None, :], dist, jnp.inf)
    _, fwd = jax.lax.top_k(-ranked, k1 + 1)
    # The barriers stop XLA:CPU from fusing the neighbour-list gathers into their consumers,
    # which recomputed them per element and made this function ~10x slower.
    fwd = jax.lax.optimization_barrier(fwd.astype(jnp.int32))
    members, mask = jax.lax.optimization_barrier(reciprocal_members(fwd, valid, k1))
    w = jnp.where(mask, jnp.exp(-jnp.take_along_axis(dist, members, axis=-1)), 0.0)
    cols = jnp.where(mask, members, n)
    bi = jnp.arange(b)[:, None, None]
    ri = jnp.arange(n)[None, :, None]
    v = jnp.zeros((b, n, n + 1), jnp.float32).at[bi, ri, cols].set(w)[..., :n]
    v = v / jnp.maximum(jnp.sum(v, axis=-1, keepdims=True), 1e-30)
    qe_idx = fwd[..., :k2]  # (b, n, k2)
    qe_w = jnp.take_along_axis(jnp.broadcast_to(valid[:, None, :], (b, n, n)), qe_idx, axis=-1)
    qe_w = qe_w / jnp.maximum(jnp.sum(qe_w, axis=-1, keepdims=True), 1)
    # Only row 0 (the query) and every node's expanded row are needed: V_qe = mean of k2 rows.
    rows = jnp.arange(b)[:, None]
    v_qe = sum(qe_w[..., j:j + 1] * v[rows, qe_idx[..., j]] for j in range(k2))
    m = jnp.sum(jnp.minimum(v_qe[:, :1, :], v_qe), axis=-1)  # (b, n)
    jac = 1.0 - m / (2.0 - m)
    return dist[:, 0, :], jac


def local_query_jaccard(x: np.ndarray, valid: np.ndarray, k1: int = 10, k2: int = 3
                        ) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal Jaccard distance of node 0 (the query) to every node of small local sets.

    Jitted with jnp (dense n x n per set; faster than numpy here because XLA fuses the
    distance, top-k and V construction, and the batched Gram matrix is one GEMM call).

    Args:
      x: (B, n, D) float32 L2-normalised features; x[:, 0] is the query of each set.
      valid: (B, n) bool, False on padding (padding is never a neighbour).
    Returns:
      dist (B, n) = 1 - (cos(q, j) + 1) / 2 and jaccard (B, n), both float32.
    """
    if k2 > k1 + 1:
        raise ValueError(f"k2={k2} must be <= k1+1={k1 + 1}")
    d, j = _local_query_jaccard(jnp.asarray(x, jnp.float32), jnp.asarray(valid), k1, k2)
    return np.asarray(d), np.asarray(j)


def compile_ahead(shapes: Sequence[tuple[int, int, int]], k1: int = 10, k2: int = 3
                  ) -> dict[tuple[int, int, int], Future]:
    """Compile :func:`local_query_jaccard` for batches of shape (B, n, D), in a background thread.

    The shapes are compiled one after the other in the order given (the first use first), each
    once, while the caller runs the batches already compiled: each padded size costs about
    0.3-0.4 s of compilation on a 2-core CPU, and the refinement's work leaves one core idle in
    its single-threaded parts (top-k). Wait on a shape's future before its first call, so that
    the call finds it compiled rather than compiling it a second time.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="local-jaccard-compile")

    def compile_one(shape: tuple[int, int, int]) -> None:
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        valid = jax.ShapeDtypeStruct(shape[:2], jnp.bool_)
        _local_query_jaccard.lower(x, valid, k1, k2).compile()

    futures = {s: pool.submit(compile_one, s) for s in dict.fromkeys(shapes)}
    pool.shutdown(wait=False)
    return futures


def _dedupe_rows(members: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask with repeated (row, member) entries switched off (first kept)."""
    order = np.argsort(np.where(mask, members, -1), axis=1, kind="stable")
    sorted_m = np.take_along_axis(np.where(mask, members, -1), order, 1)
    dup_sorted = np.zeros_like(mask)
    dup_sorted[:, 1:] = (sorted_m[:, 1:] == sorted_m[:, :-1]) & (sorted_m[:, 1:] >= 0)
    dup = np.zeros_like(mask)
    np.put_along_axis(dup, order, dup_sorted, 1)
    return mask & ~dup


def kreciprocal_rerank(query_feats: np.ndarray, index_feats: np.ndarray, *, k1: int = 10,
                       k2: int = 3, lambda_value: float = 0.3, row_chunk: int = 8192,
                       query_chunk: int = 64) -> np.ndarray:
    """Full k-reciprocal re-ranking of queries x index (Zhong et al. 2017).

    The node set is queries followed by index images; neighbour lists come from exact chunked
    search over that set, V is a sparse CSR matrix (each row has at most
    (k1+1)(kh+2) entries), and the query-to-index overlaps are accumulated column by column
    of V, so memory is O(n k1^2) plus the (Q, N) output.

    Args:
      query_feats: (Q, D) L2-normalised; index_feats: (N, D) L2-normalised.
      k1, k2, lambda_value: Zhong et al.'s parameters (final = (1-lambda) jaccard + lambda dist).
    Returns:
      (Q, N) float32 re-ranked similarities 1 - final distance.
    """
    q = np.ascontiguousarray(query_feats, np.float32)
    g = np.ascontiguousarray(index_feats, np.float32)
    nq, ni = q.shape[0], g.shape[0]
    x = np.concatenate([q, g])
    n = x.shape[0]
    kf = min(k1 + 1, n)
    _, fwd = search.topk_inner_product(x, x, kf)
    if kf < k1 + 1:  # tiny sets: pad lists with an invalid node
        fwd = np.concatenate([fwd, np.full((n, k1 + 1 - kf), n)], axis=1)
    fwd = fwd.astype(np.int32)
    valid = np.ones(n + 1, bool)
    valid[n] = False
    fwd_ext = np.concatenate([fwd, np.full((1, k1 + 1), n, np.int32)])
    members, mask = jax.jit(reciprocal_members, static_argnums=2)(
        jnp.asarray(fwd_ext), jnp.asarray(valid), k1)
    members, mask = np.asarray(members)[:n], np.asarray(mask)[:n]
    mask = _dedupe_rows(members, mask)
    w = np.zeros(members.shape, np.float32)
    for s in range(0, n, row_chunk):
        xm = x[np.minimum(members[s:s + row_chunk], n - 1)]
        cos = np.einsum("nd,nld->nl", x[s:s + row_chunk], xm)
        w[s:s + row_chunk] = np.exp(-(1.0 - (cos + 1.0) / 2.0))
    w = np.where(mask, w, 0.0)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
    rows = np.repeat(np.arange(n), members.shape[1])
    v = sp.csr_matrix((w.ravel(), (rows, np.where(mask, members, 0).ravel())), shape=(n, n))
    v.eliminate_zeros()
    qe = fwd[:, :k2]
    qe_valid = qe < n
    a = sp.csr_matrix(((qe_valid / np.maximum(qe_valid.sum(1, keepdims=True), 1)).ravel(),
                       (np.repeat(np.arange(n), k2), np.minimum(qe, n - 1).ravel())), shape=(n, n))
    v_qe = (a @ v).tocsr()
    v_qe.eliminate_zeros()
    v_csc = v_qe.tocsc()
    out = np.empty((nq, ni), np.float32)
    for s in range(0, nq, query_chunk):
        rows_q = v_qe[s:min(s + query_chunk, nq)].tocoo()
        cols = rows_q.col
        starts = v_csc.indptr[cols]
        counts = v_csc.indptr[cols + 1] - starts
        rep = np.repeat(np.arange(len(cols)), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pos = starts[rep] + offs
        contrib = np.minimum(rows_q.data[rep], v_csc.data[pos])
        b = min(query_chunk, nq - s)
        m = np.bincount(rows_q.row[rep] * n + v_csc.indices[pos], weights=contrib,
                        minlength=b * n).reshape(b, n)[:, nq:]
        jac = 1.0 - m / (2.0 - m)
        dist = 1.0 - (q[s:s + b] @ g.T + 1.0) / 2.0
        out[s:s + b] = 1.0 - ((1.0 - lambda_value) * jac + lambda_value * dist)
    return out
