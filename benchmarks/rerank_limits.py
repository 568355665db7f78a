"""The machine's float32 GEMM rate, and the exact Landmark-Country re-ranking against it.

    python -m benchmarks.rerank_limits                         # GEMM rates + three sizes
    python -m benchmarks.rerank_limits --queries 282,1129 --refs 20000,50000,200000,1000000
    python -m benchmarks.rerank_limits --gemm_only

The exact method cannot take less time than its inner products divided by the GEMM rate:

* one search of the queries and the index images against every reference (their top-30 and
  top-1 references): (Q + N) x R x D x 2 FLOP;
* one search of the distinct top-30 references of the queries against every reference (their
  own 30 nearest references): U x R x D x 2 FLOP, U <= 30 Q (counted from the problem);
* the Gram matrix of each query's local set (the query and its n_q neighbourhood refs) for the
  k-reciprocal refinement, its distinct pairs only: sum_q (n_q + 1)(n_q + 2) / 2 x D x 2 FLOP
  (n_q <= 930, read from the tags);
* the query x index similarities: Q x N x D x 2 FLOP.

The top-k passes and the rest of the refinement (neighbour lists, reciprocal sets, Jaccard
overlaps) are not counted, so "fraction of the bound" (bound / measured time) is 1.0 only for
an implementation with no cost but its GEMMs. The GEMM rate is measured here with numpy (BLAS)
and XLA (jitted ``jnp.dot``) on the float32 products of GEMM_SHAPES; the bound uses the fastest
of them all. Every (queries, refs) pair of the flags is one run on
random unit vectors, timed around the library's public calls (tags, similarities + tags,
top-100), with the phases as logged by :mod:`lmr_jax.retrieval.landmark_country`. Prints one
JSON object per run and one for all on the last line.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.rerank import random_problem
from benchmarks.timing import median_seconds
from lmr_jax.retrieval import landmark_country, search

# (rows, columns) of the products timed for the GEMM rate: the BLAS search's score tile and a
# squarer one, each product repeated over a 65,536-row database so the output stays in cache,
# and one (4096 x 20,000) product whose 328 MB output does not (the rate of earlier runs).
GEMM_SHAPES = ((1024, 8192), (4096, 2048), (4096, 20_000))
GEMM_DATABASE_ROWS = 65_536


def _product_rates(a: np.ndarray, blocks: list[np.ndarray], repeats: int) -> dict[str, float]:
    """GFLOP/s of ``a @ b`` for every b of ``blocks``, numpy/BLAS and jitted XLA (median)."""
    import jax
    import jax.numpy as jnp

    out = np.empty((a.shape[0], blocks[0].shape[1]), np.float32)
    flop = 2.0 * a.shape[0] * a.shape[1] * sum(b.shape[1] for b in blocks)
    numpy_s = median_seconds(lambda: [np.matmul(a, b, out=out) for b in blocks],
                             steps=repeats, warmup=1)
    dot = jax.jit(jnp.dot)
    ja, jbs = jnp.asarray(a), [jnp.asarray(b) for b in blocks]
    xla_s = median_seconds(lambda: [dot(ja, jb).block_until_ready() for jb in jbs],
                           steps=repeats, warmup=1)
    return {"numpy_gflops": round(flop / numpy_s / 1e9, 1),
            "xla_gflops": round(flop / xla_s / 1e9, 1)}


def gemm_rates(dim: int = 512, repeats: int = 5) -> dict:
    """float32 GFLOP/s of numpy/BLAS and jitted XLA products (median of ``repeats``) for each
    of GEMM_SHAPES: {"numpy_gflops": best, "xla_gflops": best, "shapes": {shape: {...}}}."""
    rng = np.random.default_rng(0)
    best = {"numpy_gflops": 0.0, "xla_gflops": 0.0}
    shapes = {}
    for m, n in GEMM_SHAPES:
        a = rng.standard_normal((m, dim), dtype=np.float32)
        db = rng.standard_normal((max(n, GEMM_DATABASE_ROWS), dim), dtype=np.float32)
        blocks = [np.ascontiguousarray(db[s:s + n].T) for s in range(0, len(db) - n + 1, n)]
        rates = _product_rates(a, blocks, repeats)
        shapes[f"{m}x{dim}x{n}"] = rates
        best = {key: max(best[key], rates[key]) for key in best}
    return {**best, "shapes": shapes}


def rerank_flop(num_queries: int, num_index: int, num_refs: int, num_distinct: int,
                dim: int, neighbourhood_sizes: np.ndarray | None = None) -> float:
    """The inner products of the exact method (module docstring), in FLOP."""
    n = None if neighbourhood_sizes is None else neighbourhood_sizes.astype(np.float64) + 1.0
    local = 0.0 if n is None else float(np.sum(n * (n + 1.0) / 2.0))
    return 2.0 * dim * ((num_queries + num_index + num_distinct) * num_refs
                        + num_queries * num_index + local)


class _PhaseLog(logging.Handler):
    """Collects the seconds that landmark_country logs for each phase (last argument), and
    the number of distinct top-30 refs (first argument of the "neighbours of" line)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}
        self.distinct_refs = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.endswith("%.1f s") and record.args:
            self.seconds[msg.split(" ")[0].split("(")[0]] = round(float(record.args[-1]), 2)
        if msg.startswith("neighbours of"):
            self.distinct_refs = int(record.args[0])


def rerank_against_bound(num_queries: int, num_index: int, num_refs: int, dim: int,
                         gflops: float, seed: int = 0) -> dict[str, float]:
    """Time of the exact Landmark-Country re-ranking (top-100) of a random problem, its FLOP,
    the GEMM-bound time at ``gflops`` and the fraction bound / time."""
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed)
    phases = _PhaseLog()
    logger = logging.getLogger("lmr_jax.retrieval.landmark_country")
    logger.addHandler(phases)
    logger.setLevel(logging.INFO)
    try:
        t0 = time.perf_counter()
        tags = landmark_country.compute_tags(q, x, refs, lms, cts)
        t_tags = time.perf_counter() - t0
        scores = landmark_country.apply_tags(search.similarity_matrix(q, x), tags)
        search.topk_from_scores(scores, 100)
        seconds = time.perf_counter() - t0
    finally:
        logger.removeHandler(phases)
    distinct = phases.distinct_refs
    flop = rerank_flop(num_queries, num_index, num_refs, distinct, dim,
                       tags.neighbourhood_sizes)
    bound = flop / (gflops * 1e9)
    return {"queries": num_queries, "index": num_index, "refs": num_refs,
            "distinct_top30_refs": distinct,
            "mean_neighbourhood": round(float(tags.neighbourhood_sizes.mean()), 1),
            "flop": flop, "tflop": round(flop / 1e12, 3), "seconds": float(f"{seconds:.4g}"),
            "tags_s": round(t_tags, 2), "phases_s": phases.seconds, "bound_s": float(f"{bound:.3g}"),
            "fraction_of_bound": float(f"{bound / seconds:.3g}"),
            "load_average": round(os.getloadavg()[0], 1)}


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    rates = gemm_rates(f.dim)
    result: dict = {"gemm": rates, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(json.dumps({"gemm": rates}), flush=True)
    if not f.gemm_only:
        gflops = max(rates["numpy_gflops"], rates["xla_gflops"])
        rows = []
        for queries in (int(n) for n in f.queries):
            for refs in (int(r) for r in f.refs):
                rows.append(rerank_against_bound(queries, f.index, refs, f.dim, gflops))
                print(json.dumps(rows[-1]), flush=True)
        result["rerank"] = rows
        result["bound_gflops"] = gflops
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_list("queries", ["1129"], "Query counts, one run per count and refs size.")
    flags.DEFINE_integer("index", 5000, "Index images.")
    flags.DEFINE_list("refs", ["20000", "50000", "200000"], "Reference-set sizes, one run each.")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    flags.DEFINE_bool("gemm_only", False, "Measure the GEMM rates only.")
    app.run(main)
