"""Re-ranking against slow, obviously-correct transcriptions of docs/reference.md
(Re-ranking) / Zhong et al."""

import logging
import math

import jax
import numpy as np
import pytest

from lmr_jax.retrieval import kreciprocal, landmark_country, rerank


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def slow_jaccard(feats, k1=10, k2=3, rows=None):
    """Zhong et al.'s k-reciprocal Jaccard distance on a small set, plain loops, float64.

    Returns the (n, n) matrix of dist = 1 - (cos+1)/2 and the (n, n) Jaccard distances
    (only the given ``rows`` of it are filled when ``rows`` is set).
    """
    f = np.asarray(feats, np.float64)
    n = len(f)
    dist = 1.0 - (f @ f.T + 1.0) / 2.0
    rank = [sorted(range(n), key=lambda j, i=i: (dist[i][j], j)) for i in range(n)]

    def reciprocal(i, k):
        return [j for j in rank[i][:k + 1] if i in rank[j][:k + 1]]

    half = int(round(k1 / 2))  # Python rounds half to even, like numpy
    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            h = reciprocal(c, half)
            if len(set(h) & set(r)) > 2.0 / 3.0 * len(h):
                expanded |= set(h)
        total = sum(math.exp(-dist[i][e]) for e in expanded)
        for e in expanded:
            v[i][e] = math.exp(-dist[i][e]) / total
    vqe = np.zeros((n, n))
    for i in range(n):
        nbrs = rank[i][:k2]
        for c in range(n):
            vqe[i][c] = sum(v[j][c] for j in nbrs) / len(nbrs)
    jac = np.zeros((n, n))
    for i in range(n) if rows is None else rows:
        for j in range(n):
            m = sum(min(vqe[i][c], vqe[j][c]) for c in range(n))
            jac[i][j] = 1.0 - m / (2.0 - m)
    return dist, jac


def slow_landmark_country(q, x, refs, lms, cts, k=3, alpha=1.0, beta=0.1, kr=True, topk=30):
    """docs/reference.md, Re-ranking, one query at a time, dictionaries and loops."""
    refs64 = refs.astype(np.float64)
    out = np.zeros((len(q), len(x)))
    index_lm, index_ct = [], []
    for feat in x.astype(np.float64):
        best = int(np.argmax(refs64 @ feat))
        index_lm.append(lms[best])
        index_ct.append(cts[best])
    for qi, feat in enumerate(q.astype(np.float64)):
        cos = refs64 @ feat
        order = sorted(range(len(refs)), key=lambda r: (-cos[r], r))
        if kr:
            t_set = order[:topk]
            u = set(t_set)
            for t in t_set:
                ct = refs64 @ refs64[t]
                u |= set(sorted(range(len(refs)), key=lambda r, ct=ct: (-ct[r], r))[:topk])
            u = sorted(u)
            _, jac = slow_jaccard(np.concatenate([feat[None], refs64[u]]), rows=[0])
            refined = {}
            for r in range(len(refs)):
                d = 1.0 - (cos[r] + 1.0) / 2.0
                j = jac[0][1 + u.index(r)] if r in u else 1.0
                refined[r] = 1.0 - (0.5 * d + 0.5 * j)
            top = sorted(refined, key=lambda r: (-refined[r], r))[:k]
            scores = [refined[r] for r in top]
        else:
            top = order[:k]
            scores = [cos[r] for r in top]
        lm_score, ct_score = {}, {}
        for r, s in zip(top, scores, strict=True):
            lm_score[lms[r]] = lm_score.get(lms[r], 0.0) + s
            ct_score[cts[r]] = ct_score.get(cts[r], 0.0) + s
        lm_total, ct_total = sum(lm_score.values()), sum(ct_score.values())
        for i, xf in enumerate(x.astype(np.float64)):
            out[qi, i] = (feat @ xf + alpha * lm_score.get(index_lm[i], 0.0) / lm_total
                          + beta * ct_score.get(index_ct[i], 0.0) / ct_total)
    return out


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    d = 12
    refs = _unit(rng, 90, d)
    q = _unit(rng, 5, d)
    x = _unit(rng, 30, d)
    lms = rng.integers(0, 4, size=90)  # few landmarks: ties and mixed neighbourhoods
    cts = rng.choice(np.array(["FR", "DE", ""]), size=90)
    return q, x, refs, lms, cts


@pytest.mark.parametrize("host", [True, False])  # the CPU path, and the accelerators' one call
def test_local_jaccard_matches_slow(case, host):
    q, _, refs, _, _ = case
    s = np.concatenate([q[:1], refs[:40]])
    dist_ref, jac_ref = slow_jaccard(s)
    # Batch of two sets, the second padded: padding must not change anything.
    x = np.zeros((2, 48, s.shape[1]), np.float32)
    x[0, :41] = s
    x[1, :41] = s
    valid = np.zeros((2, 48), bool)
    valid[:, :41] = True
    dist, jac = kreciprocal.local_query_jaccard(x, valid, host=host)
    np.testing.assert_allclose(dist[0, :41], dist_ref[0], atol=1e-6)
    np.testing.assert_allclose(jac[0, :41], jac_ref[0], atol=1e-5)
    np.testing.assert_allclose(jac[1, :41], jac_ref[0], atol=1e-5)


@pytest.mark.parametrize("host", [True, False])
def test_local_jaccard_padding_never_a_neighbour(host):
    """20 unit vectors in 3-d: most nodes' 11th neighbour has a negative cosine, so zero
    padding (cosine 0) would enter their forward lists unless it is masked."""
    rng = np.random.default_rng(4)
    s = _unit(rng, 20, 3)
    assert np.sort(s @ s.T, axis=1)[:, -11].min() < 0
    x = np.zeros((1, 32, 3), np.float32)
    x[0, :20] = s
    valid = np.zeros((1, 32), bool)
    valid[0, :20] = True
    dist, jac = kreciprocal.local_query_jaccard(x, valid, host=host)
    dist_ref, jac_ref = slow_jaccard(s, rows=[0])
    np.testing.assert_allclose(dist[0, :20], dist_ref[0], atol=1e-6)
    np.testing.assert_allclose(jac[0, :20], jac_ref[0], atol=1e-5)


@pytest.mark.parametrize("host", [True, False])
def test_local_jaccard_large_sets_with_ties(host):
    """Sets of hundreds of nodes on lattice features: exact products and many exactly tied
    distances, so neighbour lists and reciprocal sets depend on the tie rule."""
    rng = np.random.default_rng(11)
    x = np.zeros((2, 448, 6), np.float32)
    x[0, :401] = rng.integers(-3, 4, size=(401, 6)) / 8.0
    x[1, :300] = x[0, 50:350]
    valid = np.zeros((2, 448), bool)
    valid[0, :401] = True
    valid[1, :300] = True
    dist, jac = kreciprocal.local_query_jaccard(x, valid, host=host)
    for b, n in ((0, 401), (1, 300)):
        dist_ref, jac_ref = slow_jaccard(x[b, :n], rows=[0])
        np.testing.assert_allclose(dist[b, :n], dist_ref[0], atol=1e-6)
        np.testing.assert_allclose(jac[b, :n], jac_ref[0], atol=1e-5)


@pytest.mark.parametrize("kr", [True, False])
def test_landmark_country_rerank_matches_slow(case, kr):
    q, x, refs, lms, cts = case
    fast = landmark_country.landmark_country_rerank(q, x, refs, lms, cts, k=3, alpha=1.0, beta=0.1,
                                          query_kreciprocal=kr)
    slow = slow_landmark_country(q, x, refs, lms, cts, kr=kr)
    assert fast.dtype == np.float32 and fast.shape == (5, 30)
    np.testing.assert_allclose(fast, slow, atol=2e-5)
    np.testing.assert_array_equal(np.argsort(-fast, 1, kind="stable"),
                                  np.argsort(-slow, 1, kind="stable"))
    # The bonus is active: some index images moved.
    assert np.abs(fast - q @ x.T).max() > 0.1


def test_local_sets_of_mixed_sizes_match_slow():
    """Queries inside a tight cluster of refs have small local sets, the others large ones:
    with two queries a batch, batches are padded to different sizes."""
    rng = np.random.default_rng(8)
    d = 12
    centre = _unit(rng, 1, d)
    cluster = centre + 0.05 * rng.standard_normal((40, d))
    refs = np.concatenate([cluster / np.linalg.norm(cluster, axis=1, keepdims=True),
                           _unit(rng, 160, d)]).astype(np.float32)
    near = centre + 0.05 * rng.standard_normal((3, d))
    q = np.concatenate([near / np.linalg.norm(near, axis=1, keepdims=True),
                        _unit(rng, 3, d)]).astype(np.float32)[[0, 3, 1, 4, 2, 5]]
    x = _unit(rng, 20, d)
    lms = rng.integers(0, 5, size=200)
    cts = rng.choice(np.array(["FR", "DE", "IT"]), size=200)
    tags = landmark_country.compute_tags(q, x, refs, lms, cts, batch_size=2)
    sizes = tags.neighbourhood_sizes
    padded = -(-(sizes + 1) // landmark_country.LOCAL_SET_ROUND)  # in units of the rounding
    assert padded.min() < padded.max(), sizes
    fast = landmark_country.apply_tags(q @ x.T, tags)
    slow = slow_landmark_country(q, x, refs, lms, cts)
    np.testing.assert_allclose(fast, slow, atol=2e-5)


def test_topk_variant_and_chunking(case):
    q, x, refs, lms, cts = case
    full = landmark_country.landmark_country_rerank(q, x, refs, lms, cts)
    ranker = rerank.RERANKERS.build("landmark_country", query_chunk=2)
    s, i = ranker([rerank.ModelFeatures(q, x, refs)], [1.0], top_k=10,
                  references=rerank.References(lms, cts))
    np.testing.assert_array_equal(i, np.argsort(-full, 1, kind="stable")[:, :10])
    np.testing.assert_allclose(s, np.take_along_axis(full, i, 1), atol=1e-6)


def test_full_kreciprocal_matches_slow():
    rng = np.random.default_rng(5)
    q, x = _unit(rng, 4, 8), _unit(rng, 36, 8)
    fast = kreciprocal.kreciprocal_rerank(q, x, k1=6, k2=3, lambda_value=0.3, query_chunk=3)
    dist, jac = slow_jaccard(np.concatenate([q, x]), k1=6, k2=3)
    slow = 1.0 - (0.7 * jac[:4, 4:] + 0.3 * dist[:4, 4:])
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_compile_ahead_compiles_each_shape_once_for_the_later_calls(caplog):
    def compilations():
        return sum(f"Finished XLA compilation of jit({name})" in r.getMessage()
                   for r in caplog.records
                   for name in ("_neighbour_weights", "_query_overlaps"))

    rng = np.random.default_rng(1)
    x = _unit(rng, 48, 5).reshape(2, 24, 5)
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        futures = kreciprocal.compile_ahead([(2, 24, 5), (2, 24, 5), (2, 40, 5)])
        assert sorted(futures) == [(2, 24, 5), (2, 40, 5)]
        for f in futures.values():
            f.result()
        assert compilations() == 4  # two jitted steps per shape
        dist, jac = kreciprocal.local_query_jaccard(x, np.ones((2, 24), bool))
        assert compilations() == 4  # the call found the shape compiled
        kreciprocal.local_query_jaccard(x[:, :20], np.ones((2, 20), bool))
        assert compilations() == 6  # a shape not compiled ahead: the count sees compilations
    _, jac_ref = slow_jaccard(x[1], rows=[0])
    np.testing.assert_allclose(jac[1], jac_ref[0], atol=1e-5)


def test_local_set_batches_find_the_blas_library_they_limit():
    """The refinement limits BLAS to one thread per batch thread through threadpoolctl; that
    does nothing unless numpy's BLAS was found when the module was imported."""
    assert any(lib["user_api"] == "blas" for lib in landmark_country._BLAS.info())
