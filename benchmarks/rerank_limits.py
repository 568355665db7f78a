"""The machine's float32 GEMM rate, and the exact Landmark-Country re-ranking against it.

    python -m benchmarks.rerank_limits                         # GEMM rates + two re-ranking sizes
    python -m benchmarks.rerank_limits --refs 20000,50000,200000 --index 20000
    python -m benchmarks.rerank_limits --gemm_only

The exact method cannot take less time than its inner products divided by the GEMM rate:

* one search of the queries and the index images against every reference (their top-30 and
  top-1 references): (Q + N) x R x D x 2 FLOP;
* one search of the distinct top-30 references of the queries against every reference (their
  own 30 nearest references): U x R x D x 2 FLOP, U <= 30 Q (counted from the problem);
* the query x index similarities: Q x N x D x 2 FLOP.

The k-reciprocal refinement on the local sets (at most 931 x 931 per query) and the top-k
passes are not counted in the bound, so "fraction of the bound" (bound / measured time) is 1.0
only for an implementation with no cost but its GEMMs. The GEMM rate is measured here with numpy
(BLAS) and XLA (jitted ``jnp.dot``) on a (4096 x D) x (D x 20,000) float32 product, the shape of
one search chunk. Prints one JSON object on the last line.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.rerank import random_problem
from benchmarks.timing import median_seconds
from lmr_jax.retrieval import landmark_country
from lmr_jax.retrieval.rerank import RERANKERS, ModelFeatures, References

TOP_K_QUERY = 30  # the reference's query neighbourhood: 30 refs, each with its 30 nearest


def gemm_rates(dim: int = 512, m: int = 4096, n: int = 20_000, repeats: int = 5
               ) -> dict[str, float]:
    """float32 GFLOP/s of an (m x dim) @ (dim x n) product: numpy/BLAS and jitted XLA (median)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, dim), dtype=np.float32)
    b = rng.standard_normal((dim, n), dtype=np.float32)
    flop = 2.0 * m * n * dim
    numpy_s = median_seconds(lambda: a @ b, steps=repeats, warmup=1)
    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    xla_s = median_seconds(lambda: dot(ja, jb).block_until_ready(), steps=repeats, warmup=1)
    return {"numpy_gflops": round(flop / numpy_s / 1e9, 1),
            "xla_gflops": round(flop / xla_s / 1e9, 1)}


def rerank_flop(num_queries: int, num_index: int, num_refs: int, num_distinct: int,
                dim: int) -> float:
    """The inner products of the exact method (module docstring), in FLOP."""
    return 2.0 * dim * ((num_queries + num_index + num_distinct) * num_refs
                        + num_queries * num_index)


def rerank_against_bound(num_queries: int, num_index: int, num_refs: int, dim: int,
                         gflops: float, seed: int = 0) -> dict[str, float]:
    """Time of the exact ``landmark_country`` re-ranking (top-100) on a random problem, its
    FLOP, the GEMM-bound time at ``gflops`` and the fraction bound / time."""
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed)
    _, q_top, _ = landmark_country.reference_neighbours(q, x, refs, min(TOP_K_QUERY, num_refs))
    distinct = int(np.unique(q_top).size)
    rerank = RERANKERS.build("landmark_country")
    t0 = time.perf_counter()
    rerank([ModelFeatures(q, x, refs)], [1.0], top_k=100, references=References(lms, cts))
    seconds = time.perf_counter() - t0
    flop = rerank_flop(num_queries, num_index, num_refs, distinct, dim)
    bound = flop / (gflops * 1e9)
    return {"queries": num_queries, "index": num_index, "refs": num_refs,
            "distinct_top30_refs": distinct, "tflop": round(flop / 1e12, 3),
            "seconds": round(seconds, 2), "bound_s": round(bound, 2),
            "fraction_of_bound": round(bound / seconds, 3)}


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    rates = gemm_rates(f.dim)
    result: dict = {"gemm": rates, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(json.dumps({"gemm": rates}), flush=True)
    if not f.gemm_only:
        gflops = max(rates.values())
        rows = []
        for refs in (int(r) for r in f.refs):
            rows.append(rerank_against_bound(f.queries, f.index, refs, f.dim, gflops))
            print(json.dumps(rows[-1]), flush=True)
        result["rerank"] = rows
        result["bound_gflops"] = gflops
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_integer("queries", 1129, "Queries.")
    flags.DEFINE_integer("index", 5000, "Index images.")
    flags.DEFINE_list("refs", ["20000", "50000"], "Reference-set sizes, one run each.")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    flags.DEFINE_bool("gemm_only", False, "Measure the GEMM rates only.")
    app.run(main)
