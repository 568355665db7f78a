"""Approximate Landmark-Country re-ranking (inverted-file reference search) against exact.

    python -m benchmarks.rerank_approx                      # 1,129 x 20,000 x 200,000, clustered
    python -m benchmarks.rerank_approx --problem uniform    # random unit vectors (worst case)
    python -m benchmarks.rerank_approx --refs 20000 --index 5000 --loop_queries 0
    python -m benchmarks.rerank_approx --mode full --ref_path /big/refs_f16.npy   # GLDv2 scale
    python -m benchmarks.rerank_approx --graph_dir /tmp/graphs   # also with cached graphs
    python -m benchmarks.rerank_approx --mode later_run --graph_dir /tmp/graphs  # fresh process

``--mode compare`` runs, on the same features and in one process: the exact re-ranking, the
approximate one (``neighbour_search="ivf"``, ``--nprobe`` of ``--nlist`` lists) and, unless
``--loop_queries 0``, the per-query transcription of the reference (:mod:`benchmarks.loop_rerank`;
its index tags in full, its query loop on the first ``--loop_queries`` queries, extrapolated
linearly to all). Agreement of the approximate result with the exact one:

* index tags: share of index images whose (landmark, country) tag is unchanged, also for the
  index images of a landmark with refs and for the distractors apart;
* query tags: share of queries whose K (landmark, country) votes are unchanged;
* top-100: share of queries whose re-ranked top-100 list is unchanged, and the mean share of
  the exact top-100 found in the approximate one;
* mAP@100 (clustered problem, relevant = index images of the query's landmark): plain search,
  exact and approximate re-ranking.

With ``--graph_dir``, the re-ranking runs three more times reading a reference graph (every
ref's top-30 refs, :mod:`lmr_jax.retrieval.reference_graph`) from that folder: exact with the
exact graph, approximate with the approximate graph, approximate with the exact graph
(``GRAPH_VARIANTS``). Building a missing graph is timed apart (``graph_build_s``), as the
one-time cost that later runs on the same references do not pay. ``--mode later_run`` times
one of them (``--variant``) alone in a fresh process, compilations included, as a later run.

``--mode full`` times the approximate re-ranking at GLDv2 scale (float16 memory-mapped refs,
written once) with its peak RSS, and checks the index tags of ``--check_index`` random index
images against an exact search of those images. Prints one JSON object on the last line.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from absl import app, flags

from benchmarks.loop_rerank import loop_index_tags, loop_query_rerank
from benchmarks.rerank import ClusteredProblem, clustered_problem, random_problem
from benchmarks.timing import peak_rss_gib
from lmr_jax.retrieval import landmark_country, metrics, search
from lmr_jax.retrieval.rerank import ModelFeatures, cached_reference_graph, reference_search

TOP_K = 100


def _rerank(problem: ClusteredProblem, kind: str, nprobe: int, nlist: int | None,
            graph_dir: str | None = None, graph_kind: str | None = None):
    """(tags, top-100 index rows (Q, 100), seconds) of one Landmark-Country re-ranking; with
    ``graph_dir``, the reference graph built by the search ``graph_kind`` is read from there
    (built there if missing)."""
    p = problem
    model = ModelFeatures(p.queries, p.index, p.refs)
    t0 = time.perf_counter()
    find = reference_search(model, kind, nprobe, nlist)
    graph = None
    if graph_dir:
        graph = cached_reference_graph(model, graph_kind or kind, graph_dir, nprobe=nprobe,
                                       nlist=nlist, run_search=find)
    tags = landmark_country.compute_tags(p.queries, p.index, p.refs, p.ref_landmarks,
                                         p.ref_countries, neighbour_search=find,
                                         ref_graph=graph)
    scores = landmark_country.apply_tags(search.similarity_matrix(p.queries, p.index), tags)
    _, top = search.topk_from_scores(scores, TOP_K)
    return tags, top, time.perf_counter() - t0


def map_at_100(top: np.ndarray, problem: ClusteredProblem) -> float:
    """mAP@100 (lmr_jax.retrieval.metrics) with relevant = index images of the query's
    landmark; queries with none are left out."""
    truth, preds = {}, {}
    for qi, lm in enumerate(problem.query_landmarks):
        relevant = np.flatnonzero(problem.index_landmarks == lm)
        if len(relevant):
            truth[str(qi)] = [str(i) for i in relevant]
            preds[str(qi)] = [str(i) for i in top[qi]]
    return metrics.mean_average_precision(preds, truth, max_predictions=TOP_K)


def tag_agreement(exact: landmark_country.Tags, approx: landmark_country.Tags,
                  index_landmarks: np.ndarray | None = None) -> dict[str, float]:
    """Shares of index images and queries whose tags are unchanged (module docstring)."""
    same_index = ((exact.index_landmarks == approx.index_landmarks)
                  & (exact.index_countries == approx.index_countries))
    same_query = ((exact.query_landmarks == approx.query_landmarks).all(axis=1)
                  & (exact.query_countries == approx.query_countries).all(axis=1))
    out = {"index_tags": float(same_index.mean()), "query_tags": float(same_query.mean())}
    if index_landmarks is not None:
        on = index_landmarks >= 0
        out["index_tags_on_landmark"] = float(same_index[on].mean()) if on.any() else None
        out["index_tags_distractors"] = float(same_index[~on].mean()) if (~on).any() else None
    return out


GRAPH_VARIANTS = {"exact": ("exact", "exact"), "ivf": ("ivf", "ivf"),
                  "ivf_exact_graph": ("ivf", "exact")}  # name: (search, graph's search)


def _with_graph(problem: ClusteredProblem, kind: str, graph_kind: str, nprobe: int,
                nlist: int | None, graph_dir: str
                ) -> tuple[landmark_country.Tags, np.ndarray, float, float]:
    """(tags, top-100, seconds of the re-ranking reading the graph, seconds of building it
    (of reading it, if an earlier variant built it))."""
    t0 = time.perf_counter()
    model = ModelFeatures(problem.queries, problem.index, problem.refs)
    cached_reference_graph(model, graph_kind, graph_dir, nprobe=nprobe, nlist=nlist)
    build_s = time.perf_counter() - t0
    tags, top, seconds = _rerank(problem, kind, nprobe, nlist, graph_dir, graph_kind)
    return tags, top, seconds, build_s


def compare(problem: ClusteredProblem, nprobe: int, nlist: int | None,
            loop_queries: int, graph_dir: str | None = None) -> dict:
    """Exact, approximate and (optionally) loop re-ranking of one problem, in this process;
    with ``graph_dir`` both again reading a reference graph cached there."""
    p = problem
    exact_tags, exact_top, exact_s = _rerank(p, "exact", nprobe, nlist)
    print(json.dumps({"exact_s": round(exact_s, 1)}), flush=True)
    approx_tags, approx_top, approx_s = _rerank(p, "ivf", nprobe, nlist)
    print(json.dumps({"approx_s": round(approx_s, 1)}), flush=True)
    graph = {}
    if graph_dir:
        for name, (kind, graph_kind) in GRAPH_VARIANTS.items():
            tags, top, seconds, build_s = _with_graph(p, kind, graph_kind, nprobe, nlist,
                                                      graph_dir)
            graph[name] = {"s": round(seconds, 2), "graph_build_s": round(build_s, 1),
                           "agreement": tag_agreement(exact_tags, tags, p.index_landmarks if
                                                      (p.query_landmarks >= 0).any() else None),
                           "top100_unchanged": float((exact_top == top).all(axis=1).mean())}
            print(json.dumps({f"{name}_with_graph": graph[name]}), flush=True)
    _, plain_top = search.topk_from_scores(search.similarity_matrix(p.queries, p.index), TOP_K)
    has_truth = bool((p.query_landmarks >= 0).any())
    res = {
        "queries": len(p.queries), "index": len(p.index), "refs": len(p.refs),
        "dim": p.refs.shape[1], "nprobe": nprobe, "nlist": nlist,
        "exact_s": round(exact_s, 2), "approx_s": round(approx_s, 2),
        "approx_speedup_vs_exact": round(exact_s / approx_s, 2),
        "agreement": tag_agreement(exact_tags, approx_tags,
                                   p.index_landmarks if has_truth else None),
        "top100_unchanged": float((exact_top == approx_top).all(axis=1).mean()),
        "top100_overlap": float(np.mean([len(np.intersect1d(a, b)) / a.size for a, b in
                                         zip(exact_top, approx_top, strict=True)])),
    }
    if has_truth:
        res["map100"] = {"plain": map_at_100(plain_top, p), "exact": map_at_100(exact_top, p),
                         "approx": map_at_100(approx_top, p)}
    if graph:
        res["with_graph"] = graph
    if loop_queries:
        nl = min(loop_queries, len(p.queries))
        t0 = time.perf_counter()
        index_tags = loop_index_tags(p.index, p.refs, p.ref_landmarks, p.ref_countries)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop_query_rerank(p.queries[:nl], p.index, p.refs, p.ref_landmarks, p.ref_countries,
                          index_tags)
        t_query = time.perf_counter() - t0
        loop_all = t_index + t_query * len(p.queries) / nl
        res.update({"loop_index_tags_s": round(t_index, 1), "loop_queries": nl,
                    "loop_query_s": round(t_query, 1), "loop_s_all_queries": round(loop_all, 1),
                    "exact_speedup_vs_loop": round(loop_all / exact_s, 1),
                    "approx_speedup_vs_loop": round(loop_all / approx_s, 1)})
        for g in graph.values():
            g["speedup_vs_loop"] = round(loop_all / g["s"], 1)
    return res


def later_run(problem: ClusteredProblem, variant: str, nprobe: int, nlist: int | None,
              graph_dir: str) -> dict:
    """One re-ranking as a later run sees it: the reference graph already in ``graph_dir``
    (built first, timed apart, if missing), nothing compiled yet in this process."""
    kind, graph_kind = GRAPH_VARIANTS[variant]
    _, _, seconds, build_s = _with_graph(problem, kind, graph_kind, nprobe, nlist, graph_dir)
    return {"variant": variant, "s": round(seconds, 2), "graph_build_s": round(build_s, 1),
            "queries": len(problem.queries), "index": len(problem.index),
            "refs": len(problem.refs), "nprobe": nprobe, "nlist": nlist}


def full_scale(ref_path: str, num_queries: int, num_index: int, num_refs: int, dim: int,
               nprobe: int, nlist: int | None, check_index: int, seed: int = 0,
               graph_dir: str | None = None) -> dict:
    """Approximate re-ranking at GLDv2 scale: time, peak RSS, index-tag agreement on a sample;
    with ``graph_dir``, again reading an approximate reference graph (built there, timed
    apart, if missing)."""
    p = clustered_problem(num_queries, num_index, num_refs, dim, seed=seed, ref_path=ref_path)
    approx_tags, _, seconds = _rerank(p, "ivf", nprobe, nlist)
    rss = peak_rss_gib()
    graph = {}
    if graph_dir:
        tags, _, graph_s, build_s = _with_graph(p, "ivf", "ivf", nprobe, nlist, graph_dir)
        graph = {"approx_with_graph_s": round(graph_s, 1), "graph_build_s": round(build_s, 1),
                 "peak_rss_gib_with_graph": round(peak_rss_gib(), 2),
                 "with_graph_vs_without": tag_agreement(approx_tags, tags)}
    rows = np.sort(np.random.default_rng(seed).choice(num_index, min(check_index, num_index),
                                                      replace=False))
    t0 = time.perf_counter()
    _, top1 = search.topk_inner_product(p.index[rows], p.refs, 1)
    exact_check_s = time.perf_counter() - t0
    lm, ct = p.ref_landmarks[top1[:, 0]], p.ref_countries[top1[:, 0]]
    same = (lm == approx_tags.index_landmarks[rows]) & (ct == approx_tags.index_countries[rows])
    on = p.index_landmarks[rows] >= 0
    return {"queries": num_queries, "index": num_index, "refs": num_refs, "dim": dim,
            "nprobe": nprobe, "nlist": nlist, "approx_s": round(seconds, 1),
            "peak_rss_gib": round(rss, 2), "checked_index": len(rows),
            "exact_check_s": round(exact_check_s, 1),
            "index_tags": float(same.mean()),
            "index_tags_on_landmark": float(same[on].mean()) if on.any() else None,
            "index_tags_distractors": float(same[~on].mean()) if (~on).any() else None,
            **graph}


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    logging.getLogger("lmr_jax").setLevel(logging.INFO)
    if f.mode == "full":
        if not f.ref_path:
            raise app.UsageError("--mode full needs --ref_path")
        res = full_scale(f.ref_path, f.queries, f.index or 79_000, f.refs or 4_900_000, f.dim,
                         f.nprobe, f.nlist, f.check_index, graph_dir=f.graph_dir)
    else:
        index, refs = f.index or 20_000, f.refs or 200_000
        if f.problem == "clustered":
            problem = clustered_problem(f.queries, index, refs, f.dim)
        else:
            q, x, r, lms, cts = random_problem(f.queries, index, refs, f.dim)
            problem = ClusteredProblem(q, x, r, lms, cts, np.full(len(q), -1),
                                       np.full(len(x), -1))
        if f.mode == "later_run":
            if not f.graph_dir:
                raise app.UsageError("--mode later_run needs --graph_dir")
            res = later_run(problem, f.variant, f.nprobe, f.nlist, f.graph_dir)
        else:
            res = compare(problem, f.nprobe, f.nlist, f.loop_queries, f.graph_dir)
        res["problem"] = f.problem
    print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_enum("mode", "compare", ["compare", "full", "later_run"], "Which benchmark.")
    flags.DEFINE_enum("variant", "ivf_exact_graph", list(GRAPH_VARIANTS),
                      "later_run mode: search and graph (GRAPH_VARIANTS).")
    flags.DEFINE_enum("problem", "clustered", ["clustered", "uniform"],
                      "Features with landmark structure, or random unit vectors.")
    flags.DEFINE_integer("queries", 1129, "Queries.")
    flags.DEFINE_integer("index", None, "Index images (default 20,000 / 79,000).")
    flags.DEFINE_integer("refs", None, "Reference images (default 200,000 / 4,900,000).")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    flags.DEFINE_integer("nprobe", 32, "Lists probed per query.")
    flags.DEFINE_integer("nlist", None, "Lists (default lmr_jax.retrieval.ivf.default_nlist).")
    flags.DEFINE_integer("loop_queries", 200, "Queries of the per-query loop (extrapolated to "
                         "all); 0 skips the loop.")
    flags.DEFINE_string("graph_dir", None, "Compare and full modes: also re-rank reading "
                        "reference graphs cached in this folder, built there first (timed "
                        "apart) if missing; later_run mode: where the graphs are.")
    flags.DEFINE_integer("check_index", 2000, "Full mode: index images checked against exact.")
    flags.DEFINE_string("ref_path", None, "Full mode: float16 .npy of the refs (written once if "
                        "missing, ~5 GB for 4.9 M).")
    app.run(main)
