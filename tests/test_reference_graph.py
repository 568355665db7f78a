"""The cached reference graph: its rows, resuming a build, the cache key, bad files, and the
re-ranking read from it against the slow per-query reference."""

import json
import logging
import os

import numpy as np
import pytest

from lmr_jax.retrieval import landmark_country, reference_graph, rerank, search
from tests.test_ivf import _brute_topk
from tests.test_rerank import _unit, slow_landmark_country


class CountingSearch:
    """Exact search that counts the query rows it was given and can fail on a given call."""

    def __init__(self, refs, fail_on_call=None):
        self.inner = search.ExactSearch(refs)
        self.rows = 0
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, queries, k):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("interrupted")
        self.rows += len(queries)
        return self.inner(queries, k)


@pytest.fixture(scope="module")
def refs():
    return _unit(np.random.default_rng(5), 300, 12)


def test_graph_rows_are_each_refs_top_k(refs, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lmr_jax.retrieval.reference_graph"):
        graph = reference_graph.build(refs, 9, search.ExactSearch(refs),
                                      str(tmp_path / "g.npy"), block_rows=64)
    progress = [r.getMessage() for r in caplog.records if "/ 300 refs" in r.getMessage()]
    assert len(progress) == 5  # one line a block, a rate from the second block on
    assert "refs/s" not in progress[0] and all("refs/s" in m for m in progress[1:])
    _, expected = _brute_topk(refs, np.arange(len(refs)), refs, 9)
    assert graph.shape == (300, 9) and graph.dtype == np.int32
    np.testing.assert_array_equal(graph, expected)
    assert sorted(os.listdir(tmp_path)) == ["g.npy"]


def test_interrupted_build_resumes_where_it_stopped(refs, tmp_path):
    path = str(tmp_path / "g.npy")
    first = CountingSearch(refs, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        reference_graph.build(refs, 7, first, path, block_rows=64)
    assert first.rows == 128 and not os.path.exists(path)
    with open(tmp_path / "g.progress.json") as f:
        assert json.load(f)["done"] == 128
    second = CountingSearch(refs)
    graph = reference_graph.build(refs, 7, second, path, block_rows=64)
    assert second.rows == 300 - 128  # the finished blocks are not searched again
    _, expected = _brute_topk(refs, np.arange(len(refs)), refs, 7)
    np.testing.assert_array_equal(graph, expected)
    assert sorted(os.listdir(tmp_path)) == ["g.npy"]


def test_progress_of_another_build_is_not_resumed(refs, tmp_path):
    path = str(tmp_path / "g.npy")
    with pytest.raises(KeyboardInterrupt):
        reference_graph.build(refs, 7, CountingSearch(refs, fail_on_call=2), path, block_rows=64)
    again = CountingSearch(refs)
    graph = reference_graph.build(refs, 5, again, path, block_rows=64)  # another k
    assert again.rows == 300
    np.testing.assert_array_equal(graph, _brute_topk(refs, np.arange(300), refs, 5)[1])


def test_cache_is_built_once_per_reference_set_and_search(refs, tmp_path):
    counting = CountingSearch(refs)
    a = reference_graph.cached(refs, 6, counting, "exact", str(tmp_path))
    b = reference_graph.cached(refs, 6, counting, "exact", str(tmp_path))
    assert counting.rows == 300  # the second call read the file
    np.testing.assert_array_equal(a, b)
    other = refs[::-1].copy()
    c = reference_graph.cached(other, 6, search.ExactSearch(other), "exact", str(tmp_path))
    reference_graph.cached(refs, 6, search.ExactSearch(refs), "ivf4-probe2-seed0", str(tmp_path))
    assert len(os.listdir(tmp_path)) == 3
    np.testing.assert_array_equal(c, 299 - np.asarray(a)[::-1])


@pytest.mark.parametrize("content,match", [
    (np.zeros((300, 3), np.int32), r"shape \(300, 3\)"),
    (np.zeros((299, 6), np.int32), r"shape \(299, 6\)"),
    (np.zeros((300, 6), np.float32), "dtype float32"),
    (np.full((300, 6), 300, np.int32), r"entries in \[300, 300\]"),
    (b"not a numpy file", "unreadable"),
])
def test_cache_rejects_a_bad_file(refs, tmp_path, content, match):
    name = f"refgraph_{reference_graph.fingerprint(refs)}_exact_k6.npy"
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    else:
        np.save(tmp_path / name, content)
    with pytest.raises(ValueError, match=match):
        reference_graph.cached(refs, 6, search.ExactSearch(refs), "exact", str(tmp_path))


def test_fingerprint_sees_rows_dtype_and_shape(refs):
    base = reference_graph.fingerprint(refs)
    changed = refs.copy()
    changed[150, 0] += 1e-3
    assert reference_graph.fingerprint(refs.copy()) == base
    assert reference_graph.fingerprint(changed) != base
    assert reference_graph.fingerprint(refs.astype(np.float16)) != base
    assert reference_graph.fingerprint(refs[:299]) != base


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    refs, q, x = _unit(rng, 90, 12), _unit(rng, 5, 12), _unit(rng, 30, 12)
    lms = rng.integers(0, 4, size=90)
    cts = rng.choice(np.array(["FR", "DE", ""]), size=90)
    return q, x, refs, lms, cts


def test_tags_from_a_given_graph_match_the_reference(case):
    """A graph from the test's own brute force, wider than needed, read instead of searching."""
    q, x, refs, lms, cts = case
    _, graph = _brute_topk(refs, np.arange(len(refs)), refs, 40)
    counting = CountingSearch(refs)
    tags = landmark_country.compute_tags(q, x, refs, lms, cts, ref_graph=graph,
                                         neighbour_search=counting)
    assert counting.rows == len(q) + len(x)  # the refs' neighbours came from the graph
    np.testing.assert_allclose(landmark_country.apply_tags(q @ x.T, tags),
                               slow_landmark_country(q, x, refs, lms, cts), atol=2e-5)
    with pytest.raises(ValueError, match=r"ref_graph of shape \(90, 20\)"):
        landmark_country.compute_tags(q, x, refs, lms, cts, ref_graph=graph[:, :20])


@pytest.mark.parametrize("options,key", [
    ({}, "_exact_"),
    ({"neighbour_search": "ivf", "nlist": 3, "nprobe": 3}, "_ivf3-probe3-seed0_"),
    ({"neighbour_search": "ivf", "nlist": 3, "nprobe": 3, "reference_graph_search": "exact"},
     "_exact_")])
def test_reranker_with_a_graph_cache_matches_the_reference(case, tmp_path, options, key):
    q, x, refs, lms, cts = case
    ranker = rerank.RERANKERS.build("landmark_country", reference_graph_dir=str(tmp_path),
                                    **options)
    slow = slow_landmark_country(q, x, refs, lms, cts)
    for _ in range(2):  # builds the graph, then reads it
        s, i = ranker([rerank.ModelFeatures(q, x, refs)], [1.0], top_k=30,
                      references=rerank.References(lms, cts))
        np.testing.assert_array_equal(i, np.argsort(-slow, 1, kind="stable"))
        np.testing.assert_allclose(s, np.take_along_axis(slow, i, 1), atol=2e-5)
    (name,) = os.listdir(tmp_path)
    assert name.endswith("_k30.npy") and key in name


def test_reranker_refuses_an_unknown_graph_search():
    with pytest.raises(ValueError, match="reference_graph_search must be one of"):
        rerank.RERANKERS.build("landmark_country", reference_graph_search="hnsw")
