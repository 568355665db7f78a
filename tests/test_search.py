"""Search: chunked exact top-k, fusion, approximate indexes with recall."""

import numpy as np
import pytest

from lmr_jax.retrieval import search


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return _unit(rng, 37, 16), _unit(rng, 500, 16)


def _brute(q, db, k):
    s = q.astype(np.float64) @ db.astype(np.float64).T
    i = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, i, 1), i


@pytest.mark.parametrize("chunk,backend", [(7, "blas"), (64, "blas"), (1 << 18, "blas"),
                                           (1 << 18, "auto"), (64, "jax"), (1 << 18, "jax")])
def test_topk_exact_chunked(data, chunk, backend):
    q, db = data
    s, i = search.topk_inner_product(q, db, 10, chunk_size=chunk, backend=backend)
    s_ref, i_ref = _brute(q, db, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)


def test_topk_float16_memmap_and_k_larger_than_n(tmp_path, data):
    q, db = data
    path = tmp_path / "db.npy"
    np.save(path, db[:20].astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    s_ref, i_ref = _brute(q, np.asarray(mm, np.float32), 20)
    for backend in ("blas", "jax"):
        s, i = search.topk_inner_product(q, mm, 25, chunk_size=6, backend=backend)
        np.testing.assert_array_equal(i[:, :20], i_ref)
        assert (i[:, 20:] == -1).all() and np.isneginf(s[:, 20:]).all()


def test_similarity_matrix_and_fusion(data):
    q, db = data
    rng = np.random.default_rng(1)
    q2, db2 = _unit(rng, len(q), 8), _unit(rng, len(db), 8)
    sim1 = search.similarity_matrix(q, db, chunk_size=33)
    np.testing.assert_allclose(sim1, q @ db.T, atol=1e-6)
    fused = search.fuse_similarities([sim1, q2 @ db2.T], [0.7, 0.3])
    np.testing.assert_allclose(fused, 0.7 * (q @ db.T) + 0.3 * (q2 @ db2.T), atol=1e-6)
    fq = search.fuse_features([q, q2], [0.7, 0.3])
    fdb = search.fuse_features([db, db2], [0.7, 0.3])
    np.testing.assert_allclose(fq @ fdb.T, fused, atol=1e-5)
    with pytest.raises(ValueError, match=">= 0"):
        search.fuse_features([q, q2], [1.0, -1.0])


def test_approximate_indexes_report_recall(data):
    q, db = data
    _, exact = search.topk_inner_product(q, db, 10)
    flat = search.build_index(db, "flat")
    assert search.recall_at_k(search.search_index(flat, q, 10)[1], exact) == 1.0
    ivf = search.build_index(db, "ivf", nlist=8, nprobe=8)  # all lists probed: exact
    assert search.recall_at_k(search.search_index(ivf, q, 10)[1], exact) == 1.0
    ivf1 = search.build_index(db, "ivf", nlist=16, nprobe=1)
    r1 = search.recall_at_k(search.search_index(ivf1, q, 10)[1], exact)
    assert 0.0 < r1 < 1.0
    hnsw = search.build_index(db, "hnsw", hnsw_m=16, ef_search=64)
    assert search.recall_at_k(search.search_index(hnsw, q, 10)[1], exact) > 0.9
    with pytest.raises(ValueError, match="unknown index kind"):
        search.build_index(db, "lsh")


def test_recall_at_k_counts():
    a = np.array([[1, 2, 3], [4, 5, -1]])
    e = np.array([[3, 2, 9], [4, 6, 7]])
    assert search.recall_at_k(a, e) == pytest.approx(3 / 6)


def _stable(scores, k):
    """The slow exact reference: a stable sort of each row (ties to the lower column)."""
    cols = np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, cols, 1), cols


@pytest.mark.parametrize("k", [1, 3, 11, 30, 100])
def test_topk_from_scores_keeps_lower_columns_on_ties(k):
    """Lattice scores: most rows have ties across the k-th value, which a heap or a partition
    settles in any order."""
    rng = np.random.default_rng(k)
    scores = rng.integers(-3, 4, size=(300, 250)).astype(np.float32)
    scores[:5] = 1.0  # whole rows tied: more ties than the heaps' slack
    scores[5:10, 40:] = -np.inf  # fewer finite scores than some k
    values, cols = search.topk_from_scores(scores, k)
    ref_values, ref_cols = _stable(scores, k)
    np.testing.assert_array_equal(cols, ref_cols)
    np.testing.assert_array_equal(values, ref_values)
    assert values.dtype == np.float32 and cols.dtype == np.int64


def test_topk_from_scores_random_and_narrow():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((1000, 700)).astype(np.float32)
    np.testing.assert_array_equal(search.topk_from_scores(scores, 30)[1], _stable(scores, 30)[1])
    narrow = scores[:, :12]  # fewer columns than k + slack: a stable sort
    np.testing.assert_array_equal(search.topk_from_scores(narrow, 30)[1], _stable(narrow, 12)[1])


def test_blas_search_ties_and_tiles(monkeypatch):
    """Duplicated database rows give exactly tied scores (more copies than the heaps' slack
    for some queries); small tiles make several query and database blocks."""
    monkeypatch.setattr(search, "BLAS_QUERY_BLOCK", 16)
    rng = np.random.default_rng(2)
    lattice = rng.integers(-2, 3, size=(60, 8)).astype(np.float32) / 4.0
    db = np.concatenate([lattice, np.repeat(lattice[:3], 12, axis=0), lattice[::-1]])
    q = rng.integers(-2, 3, size=(45, 8)).astype(np.float32) / 4.0
    q[:3] = lattice[:3]
    ref_s, ref_i = _stable(q.astype(np.float64) @ db.astype(np.float64).T, 20)
    for chunk in (7, 50, 1 << 18):
        s, i = search.topk_inner_product(q, db, 20, chunk_size=chunk, backend="blas")
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(s, ref_s, atol=1e-6)


def test_unknown_backend_is_refused(data):
    q, db = data
    with pytest.raises(ValueError, match="unknown search backend 'faiss'"):
        search.topk_inner_product(q, db, 3, backend="faiss")
    assert search.resolve_backend("auto") == "blas"  # the tests run JAX on the CPU


@pytest.mark.parametrize("k", [2, 11])
def test_topk_from_scores_wide_rows_through_the_heaps(k):
    """Rows long enough for the heaps (HEAP_COLUMNS_PER_K * k), with ties across the k-th."""
    rng = np.random.default_rng(k)
    width = search.HEAP_COLUMNS_PER_K * k + 5
    scores = rng.integers(-40, 41, size=(40, width)).astype(np.float32)
    scores[:3] = 2.0  # whole rows tied
    np.testing.assert_array_equal(search.topk_from_scores(scores, k)[1], _stable(scores, k)[1])


def test_topk_from_scores_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        search.topk_from_scores(np.array([[0.0, np.nan, 1.0]], np.float32), 1)
