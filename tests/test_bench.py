"""Smoke tests of the benchmarks (benchmarks/): both sides of the throughput benchmark run and
report sane figures; the per-query loop baseline of re-ranking agrees with lmr_jax's vectorised
re-ranking; the timing helpers measure what they say. Speed itself is measured by
``python -m benchmarks.summary``, never asserted here."""

import resource
import time

import numpy as np
import pytest

from benchmarks import loop_rerank, rerank, throughput, timing, torch_side, xla_cpu_conv
from lmr_jax.retrieval import landmark_country as lmr_landmark_country


@pytest.mark.parametrize("mode", ["train", "embed"])
def test_jax_throughput_runs_the_step(mode):
    r = throughput.jax_throughput("resnet_tiny", mode=mode, batch=2, size=32, dtype="float32",
                                  num_classes=5, steps=2, warmup=0)
    assert r["img_s"] > 0 and r["step_s"] > 0 and r["peak_gib"] > 0
    assert r["img_s"] == pytest.approx(2 / r["step_s"])


def test_torch_throughput_trains_the_reference_model():
    import torch

    from tests.torch_reference import common
    from tests.torch_reference import resnet as torch_resnet

    model = common.RetrievalHead(torch_resnet.resnet50())
    before = [p.detach().clone() for p in model.parameters()]
    r = torch_side.torch_throughput(model, mode="train", batch=2, size=32, dtype="float32",
                                    channels_last=False, num_classes=5, steps=1, warmup=0)
    assert r["img_s"] > 0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed > len(before) // 2  # the SGD step really updated the model


@pytest.mark.parametrize("case", [
    xla_cpu_conv.Case("conv3x3_s2_g2", 9, 4, 6, 3, stride=2, groups=2),
    xla_cpu_conv.Case("dot1x1_s2", 9, 4, 6, 1, stride=2)])
@pytest.mark.parametrize("which", ["fwd", "wgrad", "dgrad"])
def test_xla_cpu_conv_times_the_same_arithmetic_on_both_sides(case, which):
    x, w = xla_cpu_conv.case_inputs(case, batch=2)
    ours = np.asarray(xla_cpu_conv.jax_case(case, x, w, which)())
    for channels_last in (False, True):
        theirs = xla_cpu_conv.torch_case(case, x, w, which, channels_last=channels_last)()
        axes = (2, 3, 1, 0) if which == "wgrad" else (0, 2, 3, 1)  # OIHW -> HWIO, NCHW -> NHWC
        np.testing.assert_allclose(ours, theirs.permute(*axes).numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(ours).max() > 0.1


def test_loop_rerank_agrees_with_the_vectorised_rerank():
    q, x, refs, lms, cts = rerank.random_problem(6, 300, 400, 16, seed=1)
    fast = lmr_landmark_country.landmark_country_rerank(q, x, refs, lms, cts)
    slow = loop_rerank.loop_landmark_country_rerank(q, x, refs, lms, cts)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    # The bonus moved the ranking: re-ranking is not the identity on this problem.
    assert np.abs(slow - q @ x.T).max() > 0.05


def test_bench_vs_loop_reports_identical_rankings():
    r = rerank.bench_vs_loop(num_queries=4, num_index=200, num_refs=300, dim=16,
                             loop_queries=2, seed=2)
    assert r["identical_top100_rows"] == 2 and r["max_abs_diff"] < 1e-5
    assert set(r["vectorised_breakdown"]) == {"tags_s", "apply_s", "phase_reference_search_s",
                                              "phase_refinement_s"}


def test_timed_accumulates_seconds():
    record = {}
    for _ in range(2):
        with timing.timed(record, "sleep"):
            time.sleep(0.02)
    assert 0.03 <= record["sleep"] < 1.0


def test_peak_rss_is_in_gib():
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert timing.peak_rss_gib() == pytest.approx(kib / 2**20, rel=0.05)


def test_clustered_problem_has_landmark_structure():
    p = rerank.clustered_problem(20, 60, 400, 32, refs_per_landmark=10, seed=3)
    assert p.refs.shape == (400, 32) and p.index.shape == (60, 32) and p.queries.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(p.refs, axis=1), 1.0, atol=1e-5)
    # A landmark lies in one country; queries show landmarks of on-landmark index images.
    for lm in np.unique(p.ref_landmarks):
        assert len(np.unique(p.ref_countries[p.ref_landmarks == lm])) == 1
    assert set(p.query_landmarks) <= set(p.index_landmarks[p.index_landmarks >= 0])
    assert 0 < (p.index_landmarks >= 0).sum() < 60
    sims = p.queries @ p.refs.T
    same = p.query_landmarks[:, None] == p.ref_landmarks[None, :]
    assert sims[same].mean() > 0.3 > 0.1 > abs(sims[~same].mean())


def test_approximate_rerank_benchmark_compares_with_exact_and_loop():
    from benchmarks import rerank_approx

    p = rerank.clustered_problem(6, 80, 600, 16, refs_per_landmark=10, seed=4)
    r = rerank_approx.compare(p, nprobe=2, nlist=4, loop_queries=2)
    for key in ("index_tags", "query_tags", "index_tags_on_landmark", "index_tags_distractors"):
        assert 0.0 <= r["agreement"][key] <= 1.0
    assert 0.0 <= r["top100_unchanged"] <= r["top100_overlap"] <= 1.0
    assert 0.0 <= r["map100"]["exact"] <= 1.0 and r["loop_s_all_queries"] > 0
    # Every list probed: the approximate re-ranking is the exact one.
    full = rerank_approx.compare(p, nprobe=4, nlist=4, loop_queries=0)
    assert full["agreement"]["index_tags"] == 1.0 and full["top100_unchanged"] == 1.0


def test_approximate_rerank_benchmark_with_cached_graphs(tmp_path):
    from benchmarks import rerank_approx

    p = rerank.clustered_problem(6, 80, 600, 16, refs_per_landmark=10, seed=4)
    r = rerank_approx.compare(p, nprobe=4, nlist=4, loop_queries=2, graph_dir=str(tmp_path))
    assert sorted(r["with_graph"]) == ["exact", "ivf", "ivf_exact_graph"]
    for g in r["with_graph"].values():  # exact graph, or every list probed: no change
        assert g["agreement"]["index_tags"] == 1.0 and g["agreement"]["query_tags"] == 1.0
        assert g["top100_unchanged"] == 1.0
        assert g["graph_build_s"] >= 0 and g["s"] > 0 and g["speedup_vs_loop"] > 0
    names = sorted(f.name for f in tmp_path.iterdir())  # the third variant reused the exact graph
    assert len(names) == 2 and "_exact_k30" in names[0] and "_ivf4-probe4-seed0_k30" in names[1]


def test_rerank_limits_counts_the_inner_products():
    from benchmarks import rerank_limits

    r = rerank_limits.rerank_against_bound(5, 40, 300, 16, gflops=100.0, seed=1)
    q, _, refs, _, _ = rerank.random_problem(5, 40, 300, 16, seed=1)
    top30 = np.argsort(-(q.astype(np.float64) @ refs.astype(np.float64).T), axis=1)[:, :30]
    assert r["distinct_top30_refs"] == np.unique(top30).size
    assert 30 <= r["mean_neighbourhood"] <= 300
    # Searches + Gram matrices of the local sets + similarities, at least.
    floor = 2 * 16 * ((5 + 40 + r["distinct_top30_refs"]) * 300 + 5 * 40 + 5 * 31 * 32 / 2)
    assert r["flop"] >= floor
    assert r["fraction_of_bound"] == pytest.approx(r["flop"] / 100e9 / r["seconds"], rel=0.05)
    assert {"reference", "neighbours", "k-reciprocal"} <= set(r["phases_s"])


def test_local_sets_benchmark_times_every_part():
    from benchmarks import local_sets

    x = local_sets._unit_sets(2, 40, 8)
    for block in (7, 16, 40):  # the blocked product is the Gram matrix, mirrored exactly
        g = local_sets._blocked_gram(x, block)
        np.testing.assert_allclose(g, x @ x.transpose(0, 2, 1), atol=1e-6)
        np.testing.assert_array_equal(g, g.transpose(0, 2, 1))
    gram = local_sets.gram_products(2, 64, 16, [16, 32])
    assert gram["ssyrk_ms"] > 0 and gram["sgemm_ms"] > 0 and set(gram["blocked_ms"]) == {"16",
                                                                                         "32"}
    steps = local_sets.batch_steps(2, 64, 16)
    assert all(steps[key] > 0 for key in ("gram_ms", "neighbour_weights_ms", "overlaps_ms",
                                          "whole_batch_ms"))
    assert len(steps["topk_ms"]) == 7
    run = local_sets.gram_in_run(5, 40, 300, 16)
    # Every query's set: itself, its top-30 refs and theirs (at least 31 nodes).
    assert 31 <= run["mean_set_nodes"] <= 301 and len(run["gram_s_per_thread"]) >= 1
    assert run["gram_distinct_pairs_gflop"] >= 5 * 31 * 32 / 2 * 16 * 2 / 1e9


def test_full_scale_and_later_run_modes_with_a_graph(tmp_path):
    from benchmarks import rerank_approx

    graphs = str(tmp_path / "graphs")
    r = rerank_approx.full_scale(str(tmp_path / "refs.npy"), 6, 80, 600, 16, nprobe=4, nlist=4,
                                 check_index=20, graph_dir=graphs)
    assert r["index_tags"] == 1.0  # every list probed: the exact top-1
    assert r["with_graph_vs_without"]["query_tags"] == 1.0 and r["graph_build_s"] >= 0
    p = rerank.clustered_problem(6, 80, 600, 16, ref_path=str(tmp_path / "refs.npy"))
    later = rerank_approx.later_run(p, "ivf", 4, 4, graphs)
    assert later["s"] > 0 and later["variant"] == "ivf"
    assert len(list((tmp_path / "graphs").iterdir())) == 1  # the full mode's graph, reused


def test_gemm_rates_take_the_best_shape(monkeypatch):
    from benchmarks import rerank_limits

    monkeypatch.setattr(rerank_limits, "GEMM_SHAPES", ((64, 128), (32, 256)))
    monkeypatch.setattr(rerank_limits, "GEMM_DATABASE_ROWS", 512)
    r = rerank_limits.gemm_rates(dim=32, repeats=2)
    assert sorted(r["shapes"]) == ["32x32x256", "64x32x128"]
    for key in ("numpy_gflops", "xla_gflops"):
        assert r[key] == max(s[key] for s in r["shapes"].values()) > 0
