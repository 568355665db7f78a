"""Landmark-Country re-ranking benchmarks: vectorised vs a per-query loop, and GLDv2 scale.

    python -m benchmarks.rerank --mode loop      # vectorised vs per-query loop (20,000 x 200,000)
    python -m benchmarks.rerank --mode loop --queries 100 --index 2000 --refs 20000
    python -m benchmarks.rerank --mode full --ref_path /big/refs_f16.npy   # GLDv2 scale

The vectorised side is :mod:`lmr_jax.retrieval.rerank`, timed here around its public calls; the
loop side is :mod:`benchmarks.loop_rerank`. Prints one JSON object on the last line; see
docs/benchmarks.md, section Re-ranking.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.loop_rerank import loop_index_tags, loop_query_rerank
from benchmarks.timing import peak_rss_gib, timed
from lmr_jax.retrieval import landmark_country, search
from lmr_jax.retrieval.rerank import RERANKERS, ModelFeatures, References


def random_problem(num_queries: int, num_index: int, num_refs: int, dim: int = 512, *,
                   num_landmarks: int | None = None, num_countries: int = 200, seed: int = 0,
                   ref_path: str | None = None):
    """Random unit vectors (queries (Q, D), index (N, D), refs (R, D)) and ref labels
    (landmarks (R,), countries (R,)); refs go to a float16 .npy memmap when ``ref_path``."""
    rng = np.random.default_rng(seed)

    def unit(n):
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q, x = unit(num_queries), unit(num_index)
    num_landmarks = num_landmarks or max(1, num_refs // 20)
    lms = rng.integers(0, num_landmarks, num_refs)
    cts = rng.integers(0, num_countries, num_refs)
    if ref_path is None:
        refs = unit(num_refs)
    else:
        if not os.path.exists(ref_path):
            mm = np.lib.format.open_memmap(ref_path + ".tmp.npy", "w+", np.float16, (num_refs, dim))
            for s in range(0, num_refs, 1 << 17):
                mm[s:s + (1 << 17)] = unit(min(1 << 17, num_refs - s)).astype(np.float16)
            mm.flush()
            del mm
            os.replace(ref_path + ".tmp.npy", ref_path)
        refs = np.load(ref_path, mmap_mode="r")
    return q, x, refs, lms, cts


def bench_vs_loop(num_queries: int = 1129, num_index: int = 20_000, num_refs: int = 200_000,
                  dim: int = 512, loop_queries: int | None = None, seed: int = 0,
                  phases: bool = True) -> dict:
    """Time both implementations on the same random inputs and compare their top-100 rankings.

    The vectorised total is :func:`~lmr_jax.retrieval.landmark_country.compute_tags` plus the similarity
    matrix and :func:`~lmr_jax.retrieval.landmark_country.apply_tags`. With ``phases``, the two phases of
    the tags (the reference search and the k-reciprocal refinement) are also timed by calling
    them on their own, outside the total. ``loop_queries`` runs the loop on the first queries
    only (its cost is linear in the number of queries; the report then extrapolates).
    """
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed)
    fast_times: dict[str, float] = {}
    with timed(fast_times, "tags_s"):
        tags = landmark_country.compute_tags(q, x, refs, lms, cts)
    with timed(fast_times, "apply_s"):
        fast = landmark_country.apply_tags(search.similarity_matrix(q, x), tags)
    t_fast = fast_times["tags_s"] + fast_times["apply_s"]
    if phases:
        topk = 30
        with timed(fast_times, "phase_reference_search_s"):
            _, q_top, _ = landmark_country.reference_neighbours(q, x, refs, min(topk, num_refs))
        with timed(fast_times, "phase_refinement_s"):
            landmark_country.query_reference_refinement(q, refs, q_top, topk=topk)
    nl = loop_queries or num_queries
    loop_times: dict[str, float] = {}
    with timed(loop_times, "index_tags_s"):
        index_tags = loop_index_tags(x, refs, lms, cts)
    with timed(loop_times, "per_query_loop_s"):
        slow = loop_query_rerank(q[:nl], x, refs, lms, cts, index_tags)
    t_loop = loop_times["index_tags_s"] + loop_times["per_query_loop_s"]
    t_loop_all = loop_times["index_tags_s"] + loop_times["per_query_loop_s"] * num_queries / nl
    top_fast = np.argsort(-fast[:nl], axis=1, kind="stable")[:, :100]
    top_slow = np.argsort(-slow, axis=1, kind="stable")[:, :100]
    return {
        "queries": num_queries, "index": num_index, "refs": num_refs, "dim": dim,
        "vectorised_s": round(t_fast, 2), "loop_s": round(t_loop, 2), "loop_queries": nl,
        "loop_s_all_queries": round(t_loop_all, 2), "speedup": round(t_loop_all / t_fast, 1),
        "loop_breakdown": loop_times, "vectorised_breakdown": fast_times,
        "identical_top100_rows": int((top_fast == top_slow).all(axis=1).sum()),
        "max_abs_diff": float(np.abs(fast[:nl] - slow).max()),
    }


def bench_full_scale(ref_path: str, num_queries: int = 1129, num_index: int = 79_000,
                     num_refs: int = 4_900_000, dim: int = 512, seed: int = 0) -> dict:
    """Top-100 re-ranking at GLDv2 scale with float16 memory-mapped refs; time and peak RSS."""
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed,
                                          ref_path=ref_path)
    t0 = time.perf_counter()
    _, idx = RERANKERS.build("landmark_country")([ModelFeatures(q, x, refs)], [1.0], top_k=100,
                                                 references=References(lms, cts))
    dt = time.perf_counter() - t0
    return {"queries": num_queries, "index": num_index, "refs": num_refs, "dim": dim,
            "seconds": round(dt, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "result_shape": list(idx.shape)}


def main(argv: list[str]) -> None:
    del argv
    import logging

    f = flags.FLAGS
    logging.getLogger("lmr_jax").setLevel(logging.INFO)
    if f.mode == "loop":
        res = bench_vs_loop(f.queries, f.index or 20_000, f.refs or 200_000, f.dim,
                            loop_queries=f.loop_queries)
    else:
        if not f.ref_path:
            raise app.UsageError("--mode full needs --ref_path")
        res = bench_full_scale(f.ref_path, f.queries, f.index or 79_000, f.refs or 4_900_000,
                               f.dim)
    print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_enum("mode", "loop", ["loop", "full"], "Which benchmark.")
    flags.DEFINE_integer("queries", 1129, "Queries.")
    flags.DEFINE_integer("index", None, "Index images (default 20,000 / 79,000).")
    flags.DEFINE_integer("refs", None, "Reference images (default 200,000 / 4,900,000).")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    flags.DEFINE_integer("loop_queries", None, "Run the loop on the first N queries only and "
                         "extrapolate (default: all).")
    flags.DEFINE_string("ref_path", None, "float16 .npy for the full-scale refs (written once "
                        "if missing, ~5 GB).")
    app.run(main)
