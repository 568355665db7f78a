"""Inverted-file search: lists, exactness when every list is probed, and what a probe sees."""

import numpy as np
import pytest

from lmr_jax.retrieval import ivf, rerank
from tests.test_rerank import _unit, slow_landmark_country


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    # Clustered database (16 centres), so that lists are uneven and some are small.
    centres = _unit(rng, 16, 24)
    db = centres[rng.integers(0, 16, 1200)] + 0.6 * rng.standard_normal((1200, 24)) / np.sqrt(24)
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    return _unit(rng, 70, 24), db


def _brute_topk(q, rows, db, k):
    """float64 top-k of every query over the database rows ``rows`` (ties to the lower row)."""
    s = q.astype(np.float64) @ db[rows].astype(np.float64).T
    order = np.lexsort((np.broadcast_to(rows, s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), rows[order]


def test_lists_partition_the_database_by_nearest_centroid(data):
    _, db = data
    lists = ivf.build_inverted_file(db, 12, seed=3)
    assert lists.nlist == 12 and lists.offsets[0] == 0 and lists.offsets[-1] == len(db)
    np.testing.assert_array_equal(np.sort(lists.members), np.arange(len(db)))
    np.testing.assert_allclose(np.linalg.norm(lists.centroids, axis=1), 1.0, atol=1e-5)
    nearest = np.argmax(db.astype(np.float64) @ lists.centroids.astype(np.float64).T, axis=1)
    for c in range(lists.nlist):
        rows = lists.list_rows(c)
        assert (np.diff(rows) > 0).all()
        assert (nearest[rows] == c).all()


def test_every_list_probed_is_exact(data):
    q, db = data
    lists = ivf.build_inverted_file(db, 12)
    s, i = ivf.ivf_topk(q, db, lists, 25, nprobe=12)
    s_ref, i_ref = _brute_topk(q, np.arange(len(db)), db, 25)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)


def test_a_query_sees_exactly_its_probed_lists(data):
    q, db = data
    lists = ivf.build_inverted_file(db, 12)
    nprobe = 3
    s, i = ivf.ivf_topk(q, db, lists, 40, nprobe=nprobe)
    cent = q.astype(np.float64) @ lists.centroids.astype(np.float64).T
    for qi in range(len(q)):
        probed = np.argsort(-cent[qi], kind="stable")[:nprobe]
        rows = np.sort(np.concatenate([lists.list_rows(c) for c in probed]))
        s_ref, i_ref = _brute_topk(q[qi:qi + 1], rows, db, 40)
        n = min(40, len(rows))
        np.testing.assert_array_equal(i[qi, :n], i_ref[0, :n])
        np.testing.assert_allclose(s[qi, :n], s_ref[0, :n], atol=1e-5)
        # Fewer probed rows than k: the tail is padding.
        assert (i[qi, n:] == -1).all() and np.isneginf(s[qi, n:]).all()


def test_default_nlist():
    assert ivf.default_nlist(52_000, 5_000_000, 32) == 1290  # sqrt(queries x nprobe)
    assert ivf.default_nlist(52_000, 200_000, 32) == 390  # lists of >= 512 rows
    assert ivf.default_nlist(10, 100_000, 32) == 32  # at least nprobe
    assert ivf.default_nlist(10, 10, 4) == 1


def test_reranker_with_every_list_probed_matches_the_reference():
    rng = np.random.default_rng(3)
    refs, q, x = _unit(rng, 90, 12), _unit(rng, 5, 12), _unit(rng, 30, 12)
    lms = rng.integers(0, 4, size=90)
    cts = rng.choice(np.array(["FR", "DE", ""]), size=90)
    ranker = rerank.RERANKERS.build("landmark_country", neighbour_search="ivf", nlist=3,
                                    nprobe=3)
    s, i = ranker([rerank.ModelFeatures(q, x, refs)], [1.0], top_k=30,
                  references=rerank.References(lms, cts))
    slow = slow_landmark_country(q, x, refs, lms, cts)
    np.testing.assert_array_equal(i, np.argsort(-slow, 1, kind="stable"))
    np.testing.assert_allclose(s, np.take_along_axis(slow, i, 1), atol=2e-5)


@pytest.mark.parametrize("options,match", [({"neighbour_search": "hnsw"}, "neighbour_search"),
                                           ({"neighbour_search": "ivf", "nprobe": 0}, "nprobe"),
                                           ({"nlist": 0}, "nlist")])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        rerank.RERANKERS.build("landmark_country", **options)


def test_bad_nlist(data):
    _, db = data
    with pytest.raises(ValueError, match="nlist"):
        ivf.build_inverted_file(db, len(db) + 1)


def test_spherical_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(2)
    centres = np.eye(16, dtype=np.float32)[:6]
    pts = centres[np.repeat(np.arange(6), 50)] + 0.05 * rng.standard_normal((300, 16))
    pts = (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)
    found = ivf.spherical_kmeans(pts, 6, niter=10, seed=0)
    # Each true centre has its own centroid.
    assert sorted(np.argmax(found @ centres.T, axis=0)) == list(range(6))
    assert (np.max(found @ centres.T, axis=0) > 0.99).all()


def test_float16_memmap_database(tmp_path, data):
    q, db = data
    np.save(tmp_path / "db.npy", db.astype(np.float16))
    mm = np.load(tmp_path / "db.npy", mmap_mode="r")
    lists = ivf.build_inverted_file(mm, 8)
    s, i = ivf.ivf_topk(q, mm, lists, 10, nprobe=8)
    _, i_ref = _brute_topk(q, np.arange(len(db)), np.asarray(mm, np.float32), 10)
    np.testing.assert_array_equal(i, i_ref)


@pytest.mark.parametrize("k", [1, 7])
def test_tied_rows_every_list_probed_give_the_exact_scores(data, k):
    """Duplicated database rows tie exactly (inside one list, as they share a centroid): the
    scores are the exact top-k and every index is a distinct row with that score."""
    q, db = data
    db = np.concatenate([db, db[:300], db[:100]])
    lists = ivf.build_inverted_file(db, 12)
    s, i = ivf.ivf_topk(q, db, lists, k, nprobe=12)
    s_ref, _ = _brute_topk(q, np.arange(len(db)), db, k)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)
    true = np.take_along_axis(q.astype(np.float64) @ db.astype(np.float64).T, i, 1)
    np.testing.assert_allclose(true, s, atol=1e-5)
    assert all(len(set(row)) == k for row in i)
