"""Landmark-Country re-ranking benchmarks: vectorised vs a per-query loop, and GLDv2 scale.

    python -m benchmarks.rerank --mode loop      # vectorised vs per-query loop (20,000 x 200,000)
    python -m benchmarks.rerank --mode loop --queries 100 --index 2000 --refs 20000
    python -m benchmarks.rerank --mode full --ref_path /big/refs_f16.npy   # GLDv2 scale

The vectorised side is :mod:`lmr_jax.retrieval.rerank`, timed here around its public calls; the
loop side is :mod:`benchmarks.loop_rerank`. Prints one JSON object on the last line; see
docs/benchmarks.md, section Re-ranking.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.loop_rerank import loop_index_tags, loop_query_rerank
from benchmarks.timing import peak_rss_gib, timed
from lmr_jax.retrieval import landmark_country, search
from lmr_jax.retrieval.rerank import RERANKERS, ModelFeatures, References


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ref_array(make_rows, num_refs: int, dim: int, ref_path: str | None) -> np.ndarray:
    """``make_rows(n)`` -> (n, D) float32, called chunk by chunk: in memory, or written once
    to a float16 .npy at ``ref_path`` and opened as a memory map."""
    if ref_path is None:
        return make_rows(num_refs)
    if not os.path.exists(ref_path):
        mm = np.lib.format.open_memmap(ref_path + ".tmp.npy", "w+", np.float16, (num_refs, dim))
        for s in range(0, num_refs, 1 << 17):
            mm[s:s + (1 << 17)] = make_rows(min(1 << 17, num_refs - s)).astype(np.float16)
        mm.flush()
        del mm
        os.replace(ref_path + ".tmp.npy", ref_path)
    return np.load(ref_path, mmap_mode="r")


def random_problem(num_queries: int, num_index: int, num_refs: int, dim: int = 512, *,
                   num_landmarks: int | None = None, num_countries: int = 200, seed: int = 0,
                   ref_path: str | None = None):
    """Random unit vectors (queries (Q, D), index (N, D), refs (R, D)) and ref labels
    (landmarks (R,), countries (R,)); refs go to a float16 .npy memmap when ``ref_path``."""
    rng = np.random.default_rng(seed)

    def unit(n):
        return _unit(rng.standard_normal((n, dim), dtype=np.float32))

    q, x = unit(num_queries), unit(num_index)
    num_landmarks = num_landmarks or max(1, num_refs // 20)
    lms = rng.integers(0, num_landmarks, num_refs)
    cts = rng.integers(0, num_countries, num_refs)
    return q, x, _ref_array(unit, num_refs, dim, ref_path), lms, cts


@dataclasses.dataclass
class ClusteredProblem:
    """Features with landmark structure: every image is its landmark's centre plus noise.

    queries (Q, D), index (N, D), refs (R, D) unit rows; ref_landmarks / ref_countries (R,)
    (a landmark lies in one country); query_landmarks (Q,) and index_landmarks (N,) the true
    landmark of each image, -1 for a distractor (an index image of a landmark with no ref)."""

    queries: np.ndarray
    index: np.ndarray
    refs: np.ndarray
    ref_landmarks: np.ndarray
    ref_countries: np.ndarray
    query_landmarks: np.ndarray
    index_landmarks: np.ndarray


def clustered_problem(num_queries: int, num_index: int, num_refs: int, dim: int = 512, *,
                      refs_per_landmark: int = 20, num_countries: int = 200,
                      index_on_landmark: float = 0.3, seed: int = 0,
                      ref_path: str | None = None) -> ClusteredProblem:
    """A retrieval problem shaped like GLDv2 features (docs/benchmarks.md, Re-ranking).

    R / ``refs_per_landmark`` landmarks with random unit centres; an image of landmark l is
    unit(c_l + sigma_l g), g ~ N(0, I / D) (so |g| ~ 1) and sigma_l ~ U(0.8, 1.2): images of
    one landmark have cosine about 0.5 with each other and about 0 with other landmarks'.
    A share ``index_on_landmark`` of the index images shows a landmark of the reference set;
    the others are distractors, views of landmarks with no ref. Every query shows the landmark
    of one of the on-landmark index images.
    """
    rng = np.random.default_rng(seed)
    num_landmarks = max(1, num_refs // refs_per_landmark)
    centres = _unit(rng.standard_normal((num_landmarks, dim), dtype=np.float32))
    sigma = rng.uniform(0.8, 1.2, num_landmarks).astype(np.float32)
    countries = rng.integers(0, num_countries, num_landmarks)

    ref_rng = np.random.default_rng([seed, 1])  # own stream: the same refs with or without a file

    def views(centre_rows: np.ndarray, spread: np.ndarray, gen=rng) -> np.ndarray:
        g = gen.standard_normal(centre_rows.shape, dtype=np.float32) / np.sqrt(dim)
        return _unit(centre_rows + spread[:, None] * g)

    ref_lms = rng.integers(0, num_landmarks, num_refs)
    pos = [0]

    def ref_rows(n: int) -> np.ndarray:
        lm = ref_lms[pos[0]:pos[0] + n]
        pos[0] += n
        return views(centres[lm], sigma[lm], ref_rng)

    refs = _ref_array(ref_rows, num_refs, dim, ref_path)
    n_on = int(round(index_on_landmark * num_index))
    index_lms = np.full(num_index, -1, np.int64)
    index_lms[:n_on] = rng.integers(0, num_landmarks, n_on)
    index_lms = rng.permutation(index_lms)
    on = index_lms >= 0
    index = np.empty((num_index, dim), np.float32)
    index[on] = views(centres[index_lms[on]], sigma[index_lms[on]])
    unseen = _unit(rng.standard_normal((int((~on).sum()), dim), dtype=np.float32))
    index[~on] = views(unseen, rng.uniform(0.8, 1.2, len(unseen)).astype(np.float32))
    query_lms = rng.choice(index_lms[on], num_queries) if on.any() else \
        rng.integers(0, num_landmarks, num_queries)
    queries = views(centres[query_lms], sigma[query_lms])
    return ClusteredProblem(queries, index, refs, ref_lms, countries[ref_lms], query_lms,
                            index_lms)


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
