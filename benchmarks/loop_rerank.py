"""Per-query loop baseline of Landmark-Country re-ranking, in the style of the reference code.

A straightforward implementation (a Python loop per query, numpy, the local k-reciprocal
computation looping over the nodes of the set) of the method described in docs/reference.md
(section Re-ranking); the re-ranking benchmark uses it as the timing and ranking baseline of
:mod:`lmr_jax.retrieval.rerank`, and tests/test_bench.py checks that the two agree.
"""

from __future__ import annotations

import numpy as np


def loop_local_jaccard(feats: np.ndarray, k1: int = 10, k2: int = 3) -> np.ndarray:
    """Jaccard distance (n,) of node 0 to every node of ``feats`` (n, D), node-by-node loops."""
    n = len(feats)
    dist = 1.0 - (feats @ feats.T + 1.0) / 2.0
    rank = np.argsort(dist, axis=1, kind="stable")
    kh = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), np.float32)
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        recip = fwd[np.any(rank[fwd, :k1 + 1] == i, axis=1)]
        expanded = recip
        for c in recip:
            cf = rank[c, :kh + 1]
            crecip = cf[np.any(rank[cf, :kh + 1] == c, axis=1)]
            if len(np.intersect1d(crecip, recip)) > 2.0 / 3.0 * len(crecip):
                expanded = np.append(expanded, crecip)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        v[i, expanded] = w / w.sum()
    v_qe = np.zeros_like(v)
    for i in range(n):
        v_qe[i] = v[rank[i, :k2]].mean(axis=0)
    m = np.zeros(n, np.float32)
    for col in np.nonzero(v_qe[0])[0]:
        rows = np.nonzero(v_qe[:, col])[0]
        m[rows] += np.minimum(v_qe[0, col], v_qe[rows, col])
    return 1.0 - m / (2.0 - m)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top-k column indices, best first (argpartition, then sort of the k)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def loop_index_tags(index_feats: np.ndarray, ref_feats: np.ndarray, ref_landmarks: np.ndarray,
                    ref_countries: np.ndarray, *, batch_size: int = 128
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(landmark (N,), country (N,)) of each index image's top-1 ref, ``batch_size`` index
    images per matrix product (as the reference code does it)."""
    refs = np.asarray(ref_feats, np.float32)
    index_lm = np.empty(len(index_feats), np.asarray(ref_landmarks).dtype)
    index_ct = np.empty(len(index_feats), np.asarray(ref_countries).dtype)
    for s in range(0, len(index_feats), batch_size):
        best = np.argmax(index_feats[s:s + batch_size] @ refs.T, axis=1)
        index_lm[s:s + batch_size] = ref_landmarks[best]
        index_ct[s:s + batch_size] = ref_countries[best]
    return index_lm, index_ct


def loop_query_rerank(query_feats: np.ndarray, index_feats: np.ndarray, ref_feats: np.ndarray,
                      ref_landmarks: np.ndarray, ref_countries: np.ndarray,
                      index_tags: tuple[np.ndarray, np.ndarray], *, k: int = 3,
                      alpha: float = 1.0, beta: float = 0.1, topk: int = 30) -> np.ndarray:
    """Re-ranked (Q, N) float32 similarities, one query at a time, given the index tags of
    :func:`loop_index_tags`."""
    refs = np.asarray(ref_feats, np.float32)
    index_lm, index_ct = index_tags
    sims = np.asarray(query_feats @ index_feats.T, np.float32)
    for qi, q in enumerate(query_feats):
        cos = refs @ q
        top = _top(cos[None], topk)[0]
        nbr_top = _top(refs[top] @ refs.T, topk)
        union = np.unique(np.concatenate([top, nbr_top.ravel()]))
        jac = loop_local_jaccard(np.concatenate([q[None], refs[union]]))[1:]
        final = 0.5 * (1.0 - (cos + 1.0) / 2.0) + 0.5
        final[union] = 0.5 * (1.0 - (cos[union] + 1.0) / 2.0) + 0.5 * jac
        ref_sim = 1.0 - final
        best = np.argsort(-ref_sim, kind="stable")[:k]
        for labels, index_labels, weight in ((ref_landmarks, index_lm, alpha),
                                             (ref_countries, index_ct, beta)):
            tags = labels[best]
            scores = {t: ref_sim[best][tags == t].sum() for t in np.unique(tags)}
            total = sum(scores.values())
            for t, s in scores.items():
                sims[qi, index_labels == t] += weight * s / total
    return sims


def loop_landmark_country_rerank(query_feats: np.ndarray, index_feats: np.ndarray,
                                 ref_feats: np.ndarray, ref_landmarks: np.ndarray,
                                 ref_countries: np.ndarray, *, k: int = 3, alpha: float = 1.0,
                                 beta: float = 0.1, topk: int = 30,
                                 batch_size: int = 128) -> np.ndarray:
    """Index tags, then the per-query loop; returns (Q, N) float32 similarities."""
    tags = loop_index_tags(index_feats, ref_feats, ref_landmarks, ref_countries,
                           batch_size=batch_size)
    return loop_query_rerank(query_feats, index_feats, ref_feats, ref_landmarks, ref_countries,
                             tags, k=k, alpha=alpha, beta=beta, topk=topk)
