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


@pytest.mark.parametrize("chunk,backend", [(7, "faiss"), (64, "faiss"), (1 << 18, "faiss"),
                                           (64, "jax"), (1 << 18, "jax")])
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
    for backend in ("faiss", "jax"):
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
