"""Landmark-Country aware re-ranking of one model's similarities, vectorised.

Pipeline (Q queries, N index images, R reference images with landmark and country):

1. Searches over the reference set (block-by-block exact search, or the approximate inverted
   file of :mod:`ivf`: ``neighbour_search``): each query's top-30 refs and each index image's
   top-1 ref (-> index landmark / country tags).
2. Query-to-reference refinement (``query_kreciprocal=True``): the top-30 refs of every
   distinct top-30 ref (a second pass over R), the local set S = {q} + U with U the
   sorted union, the k-reciprocal Jaccard distance on S (:mod:`kreciprocal`, batched over
   queries), refined similarity 1 - (0.5 dist + 0.5 jaccard) on U. A ref outside
   U has refined similarity 0.5 - 0.5 dist, never above that of the 30 nearest refs (which are
   in U), so the top-K tags are always inside U and the refs outside need no computation.
3. Query tags: the K best refs; a tag's weight = the summed similarity of the refs carrying
   it over the summed similarity of all K (landmarks and countries alike).
4. final(q, i) = dot(q, i) + alpha * weight_q(landmark(i)) + beta * weight_q(country(i)).

Memory is bounded by the block sizes: the reference set is read block by block (it can be a
float16 memory map), the local sets are processed ``batch_size`` queries at a time
(REFINE_THREADS batches at once, one BLAS thread each), in order of size and padded per batch
(to a multiple of LOCAL_SET_ROUND nodes; each padded size compiles the refinement's jitted
steps once, about 0.8 s on the 2-core CPU, in a background thread ahead of its first batch,
so the rounding trades padding against compilations). With a reference graph
(:mod:`reference_graph`) the second step of the neighbourhoods is read, not searched.

Ensembles (each model's own tags, fused with the model weights) and the top-k driver are in
:mod:`lmr_jax.retrieval.rerank` (method ``landmark_country``). The settings of the GLR2021
reference are the defaults here: K = 3, alpha = 1.0, beta = 0.1, tags from the k-reciprocal
refined similarity over a top-30 neighbourhood (k1 = 10, k2 = 3, lambda = 0.5).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from lmr_jax.retrieval import kreciprocal, search

log = logging.getLogger(__name__)

LOCAL_SET_ROUND = 128  # local sets are padded to a multiple of this many nodes
# Local-set batches run in this many threads (one BLAS thread each): one batch's
# single-threaded parts (top-k, the scatter of V, host copies) overlap another's products.
REFINE_THREADS = 2
TOP_REFS = 30  # the neighbourhood of the k-reciprocal refinement: top-30 refs, and theirs
# The BLAS libraries loaded so far (numpy's OpenBLAS), found once, here: threadpoolctl looks
# for them by walking the loaded libraries under the dynamic loader's lock, which deadlocked
# against a compilation thread loading a library while holding the GIL.
_BLAS = ThreadpoolController()


@dataclasses.dataclass
class Tags:
    """Query tags (Q, K) and index tags (N,), as integer codes of landmarks and countries.

    query_weights (Q, K) float32: the similarity of each of the K refs over their sum, so that
    the weight of a tag is the sum over the refs that carry it. neighbourhood_sizes (Q,) int:
    the refs in each query's local set U of the k-reciprocal refinement (None without it).
    """

    query_landmarks: np.ndarray
    query_countries: np.ndarray
    query_weights: np.ndarray
    index_landmarks: np.ndarray
    index_countries: np.ndarray
    neighbourhood_sizes: np.ndarray | None = None


def _codes(values: np.ndarray) -> np.ndarray:
    """Integer codes of arbitrary labels (ints or strings); equal labels -> equal codes."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    _, inv = np.unique(values, return_inverse=True)
    return inv.astype(np.int64)


NeighbourSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""(queries (n, D), k) -> (scores (n, k) descending, reference indices (n, k)): a search over
the reference set, exact (:class:`search.ExactSearch`) or approximate (:class:`ivf.IVFSearch`)."""


def reference_neighbours(query_feats: np.ndarray, index_feats: np.ndarray,
                         ref_feats: np.ndarray, k_query: int, *,
                         chunk_size: int = search.DEFAULT_CHUNK,
                         neighbour_search: NeighbourSearch | None = None):
    """The queries' top-``k_query`` and the index images' top-1 refs (exact by default).

    The two are separate searches: the index images (most of the rows) need one neighbour
    each, and selecting ``k_query`` for them was about 40 % of the approximate search's time
    (docs/benchmarks.md, Re-ranking). The price is a second read of the reference set: a
    float16 memory map larger than the page cache is read from disk twice.

    Returns:
      (query scores (Q, k), query ref indices (Q, k), index top-1 ref indices (N,)).
    """
    find = neighbour_search or search.ExactSearch(ref_feats, chunk_size)
    s, i = find(np.ascontiguousarray(query_feats, np.float32), k_query)
    _, top1 = find(np.ascontiguousarray(index_feats, np.float32), 1)
    return s, i, top1[:, 0]


def _sorted_unions(cand: np.ndarray) -> np.ndarray:
    """Per row the sorted distinct values of ``cand`` (Q, M) >= 0, padded with -1 at the end."""
    srt = np.sort(cand, axis=1)
    dup = np.zeros(srt.shape, bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    big = np.iinfo(np.int64).max
    comp = np.sort(np.where(dup, big, srt), axis=1)
    width = int((~dup).sum(axis=1).max())
    comp = comp[:, :width]
    return np.where(comp == big, -1, comp)


def query_reference_refinement(query_feats: np.ndarray, ref_feats: np.ndarray,
                               top_refs: np.ndarray, *, topk: int = TOP_REFS, k1: int = 10,
                               k2: int = 3, lambda_value: float = 0.5, batch_size: int = 16,
                               chunk_size: int = search.DEFAULT_CHUNK,
                               neighbour_search: NeighbourSearch | None = None,
                               ref_graph: np.ndarray | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal refined query-to-reference similarity on each query's local set U.

    Args:
      query_feats: (Q, D) L2-normalised; ref_feats: (R, D) L2-normalised (memmap allowed).
      top_refs: (Q, >= topk) each query's nearest refs by dot product (best first).
      neighbour_search: the search of the top refs' own ``topk`` nearest refs (default exact).
      ref_graph: (R, >= topk) every ref's nearest refs, best first (:mod:`reference_graph`):
        read instead of searching.
    Returns:
      U (Q, M) int64 sorted ref indices padded with -1 and the refined similarity (Q, M)
      float32 (-inf on padding): 1 - ((1 - lambda) * jaccard + lambda * dist).
    """
    q = np.ascontiguousarray(query_feats, np.float32)
    t = min(topk, ref_feats.shape[0])
    first = np.ascontiguousarray(top_refs[:, :t])
    distinct, inv = np.unique(first, return_inverse=True)
    t0 = time.perf_counter()
    if ref_graph is not None:
        if ref_graph.shape[0] != ref_feats.shape[0] or ref_graph.shape[1] < t:
            raise ValueError(f"ref_graph of shape {ref_graph.shape}, expected "
                             f"({ref_feats.shape[0]}, >= {t})")
        nn = np.asarray(ref_graph[distinct, :t], np.int64)
        source = "read from the reference graph"
    else:
        find = neighbour_search or search.ExactSearch(ref_feats, chunk_size)
        _, nn = find(np.asarray(ref_feats[distinct], np.float32), t)
        source = "searched"
    log.info("neighbours of %d distinct top-%d refs (%s): %.1f s", len(distinct), t, source,
             time.perf_counter() - t0)
    cand = np.concatenate([first, nn[inv.reshape(first.shape)].reshape(len(q), -1)], axis=1)
    unions = _sorted_unions(cand)
    nq, width = unions.shape
    sizes = (unions >= 0).sum(axis=1)
    # Queries in order of local-set size, each batch padded to its own largest set (rounded
    # up to LOCAL_SET_ROUND nodes, the query included): the dense per-set work grows with
    # the square of the padded size, and on clustered data most sets are far below the
    # largest one. On 1,129 x 200,000 clustered features, rounding to 64 / 128 / 256 / one
    # size for all took 21 / 13 / 15 / 16 s (docs/benchmarks.md).
    order = np.argsort(sizes, kind="stable")
    starts = range(0, nq, batch_size)
    padded = [-(-(int(sizes[order[s:s + batch_size]].max()) + 1) // LOCAL_SET_ROUND)
              * LOCAL_SET_ROUND for s in starts]
    compiled = kreciprocal.compile_ahead([(batch_size, n, q.shape[1]) for n in padded], k1, k2)
    sims = np.full((nq, width), -np.inf, np.float32)

    def refine_batch(s: int, n_pad: int) -> None:
        rows_q = order[s:s + batch_size]
        b = len(rows_q)
        w = n_pad - 1
        u = unions[rows_q, :w]
        idx = np.full((batch_size, w), -1, np.int64)
        idx[:b, :u.shape[1]] = u
        valid = np.zeros((batch_size, n_pad), bool)
        valid[:b, 0] = True
        valid[:, 1:] = idx >= 0
        x = np.zeros((batch_size, n_pad, q.shape[1]), np.float32)
        x[:b, 0] = q[rows_q]
        flat = idx.ravel()
        ok = flat >= 0
        feats = np.zeros((flat.size, q.shape[1]), np.float32)
        feats[ok] = ref_feats[flat[ok]]
        x[:, 1:] = feats.reshape(batch_size, w, -1)
        compiled[(batch_size, n_pad, q.shape[1])].result()
        dist, jac = kreciprocal.local_query_jaccard(x, valid, k1, k2)
        cols = slice(1, u.shape[1] + 1)
        final = 1.0 - ((1.0 - lambda_value) * jac[:b, cols] + lambda_value * dist[:b, cols])
        sims[rows_q, :u.shape[1]] = np.where(u >= 0, final, -np.inf)

    # One BLAS thread per batch thread: two batches' products on 2 cores with 2 BLAS threads
    # each took 1.9x as long per batch as one alone (the threads spin, waiting for cores).
    with _BLAS.limit(limits=1, user_api="blas"), ThreadPoolExecutor(REFINE_THREADS) as pool:
        list(pool.map(refine_batch, starts, padded))
    return unions, sims


def compute_tags(query_feats: np.ndarray, index_feats: np.ndarray, ref_feats: np.ndarray,
                 ref_landmarks: np.ndarray, ref_countries: np.ndarray, *, k: int = 3,
                 query_kreciprocal: bool = True, topk: int = TOP_REFS, batch_size: int = 16,
                 chunk_size: int = search.DEFAULT_CHUNK,
                 neighbour_search: NeighbourSearch | None = None,
                 ref_graph: np.ndarray | None = None) -> Tags:
    """Query tags from the top-``k`` refs and index tags from the top-1 ref.

    Args:
      query_feats: (Q, D), index_feats: (N, D), ref_feats: (R, D), all L2-normalised (the
        reference set may be a float16 memory map).
      ref_landmarks, ref_countries: (R,) labels of the refs (ints or strings).
      k: refs that vote for the query tags; query_kreciprocal: vote with the k-reciprocal
        refined similarity over a top-``topk`` neighbourhood (the reference) instead of dot
        products.
      neighbour_search: the search over the reference set for both nearest-neighbour steps
        (the index images' top-1 ref, the top-``topk`` neighbourhoods); default exact.
      ref_graph: (R, >= topk) every ref's nearest refs (:mod:`reference_graph`), read for
        the neighbourhoods' second step instead of searching.
    """
    if len(ref_landmarks) != ref_feats.shape[0] or len(ref_countries) != ref_feats.shape[0]:
        raise ValueError(f"ref_landmarks ({len(ref_landmarks)}) and ref_countries "
                         f"({len(ref_countries)}) need one entry per ref ({ref_feats.shape[0]})")
    lm = _codes(ref_landmarks)
    ct = _codes(ref_countries)
    n_ref = ref_feats.shape[0]
    k = min(k, n_ref)
    kq = min(topk, n_ref) if query_kreciprocal else k
    t0 = time.perf_counter()
    find = neighbour_search or search.ExactSearch(ref_feats, chunk_size)
    q_s, q_i, index_top1 = reference_neighbours(query_feats, index_feats, ref_feats, kq,
                                                neighbour_search=find)
    log.info("reference search (%d queries + %d index x %d refs): %.1f s", len(q_s),
             len(index_top1), n_ref, time.perf_counter() - t0)
    if query_kreciprocal:
        t0 = time.perf_counter()
        unions, sims = query_reference_refinement(query_feats, ref_feats, q_i, topk=topk,
                                                  batch_size=batch_size, neighbour_search=find,
                                                  ref_graph=ref_graph)
        log.info("k-reciprocal refinement (local sets of up to %d refs): %.1f s",
                 unions.shape[1], time.perf_counter() - t0)
        best_s, sel = search.topk_from_scores(sims, k)
        best = np.take_along_axis(unions, sel, 1)
        sizes = (unions >= 0).sum(axis=1)
    else:
        best, best_s, sizes = q_i[:, :k], q_s[:, :k], None
    weights = best_s / best_s.sum(axis=1, keepdims=True)
    return Tags(lm[best], ct[best], weights.astype(np.float32), lm[index_top1], ct[index_top1],
                sizes)


def apply_tags(sims: np.ndarray, tags: Tags, rows: slice | np.ndarray = slice(None), *,
               alpha: float = 1.0, beta: float = 0.1) -> np.ndarray:
    """sims (q, N) + alpha * landmark weight + beta * country weight, for query ``rows``."""
    out = np.array(sims, dtype=np.float32, copy=True)
    ql, qc, qw = (tags.query_landmarks[rows], tags.query_countries[rows],
                  tags.query_weights[rows])
    for a in range(ql.shape[1]):
        w = qw[:, a:a + 1]
        out += np.float32(alpha) * w * (ql[:, a:a + 1] == tags.index_landmarks[None, :])
        out += np.float32(beta) * w * (qc[:, a:a + 1] == tags.index_countries[None, :])
    return out


def landmark_country_rerank(query_feats: np.ndarray, index_feats: np.ndarray,
                            ref_feats: np.ndarray, ref_landmarks: np.ndarray,
                            ref_countries: np.ndarray, *, k: int = 3, alpha: float = 1.0,
                            beta: float = 0.1, query_kreciprocal: bool = True) -> np.ndarray:
    """Landmark-Country re-ranked similarities of one model, dense (Q, N).

    Args:
      query_feats: (Q, D) L2-normalised query features.
      index_feats: (N, D) L2-normalised index features.
      ref_feats: (R, D) L2-normalised reference features (float16 memory map is fine).
      ref_landmarks: (R,) landmark label per ref (ints or strings).
      ref_countries: (R,) country per ref (any hashable labels; '' is a label like any other).
      k: number of reference neighbours that vote for the query tags.
      alpha, beta: weights of the landmark and country bonus.
      query_kreciprocal: tags from the k-reciprocal refined similarity (reference behaviour);
        False uses plain dot products.
    Returns:
      (Q, N) float32 re-ranked similarities.
    """
    tags = compute_tags(query_feats, index_feats, ref_feats, ref_landmarks, ref_countries,
                        k=k, query_kreciprocal=query_kreciprocal)
    sims = search.similarity_matrix(query_feats, index_feats)
    return apply_tags(sims, tags, alpha=alpha, beta=beta)
