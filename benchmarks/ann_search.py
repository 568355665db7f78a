"""Exact vs approximate nearest-neighbour search: build/search time, recall.

Exact: both backends of :func:`lmr_jax.retrieval.search.topk_inner_product` (BLAS products +
heaps, ``"blas"``, the CPU default; the jitted search, ``"jax"``) and ``faiss.knn``.
Approximate: lmr_jax's inverted file (:mod:`lmr_jax.retrieval.ivf`, one product per list) and
faiss's IVF-Flat and HNSW-Flat.

    python -m benchmarks.ann_search --db 100000     # 1,129 queries, 100,000 vectors, top-100

Data: unit vectors around ``clusters`` random centres (per-dimension noise ``noise`` / sqrt(dim)
before normalising), queries drawn the same way; recall is against exact search. Prints one
JSON object; see docs/benchmarks.md, section Exact vs approximate search.
"""

from __future__ import annotations

import json
import time

import faiss
import numpy as np
from absl import app, flags

from lmr_jax.retrieval import ivf, search


def bench_ann(num_queries: int = 1129, num_db: int = 200_000, dim: int = 512, k: int = 100,
              clusters: int = 2000, noise: float = 0.6, seed: int = 0) -> list[dict]:
    """Build/search seconds and recall@k of the exact backends and the approximate indexes,
    one row each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n):
        x = centres[rng.integers(0, clusters, n)] + noise / np.sqrt(dim) * rng.standard_normal(
            (n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    db, q = draw(num_db), draw(num_queries)
    rows, found = [], {}
    exact_searches = {
        "blas": lambda: search.topk_inner_product(q, db, k, backend="blas"),
        "jax": lambda: search.topk_inner_product(q, db, k, backend="jax"),
        "faiss.knn": lambda: faiss.knn(q, db, k, metric=faiss.METRIC_INNER_PRODUCT)}
    for name, run in exact_searches.items():
        t0 = time.perf_counter()
        _, found[name] = run()
        rows.append({"index": f"exact ({name})", "build_s": 0.0,
                     "search_s": round(time.perf_counter() - t0, 2),
                     "recall": round(search.recall_at_k(found[name], found["blas"]), 4)})
    exact = found["blas"]
    t0 = time.perf_counter()
    lists = ivf.build_inverted_file(db, 1024)
    build = time.perf_counter() - t0
    for nprobe in (8, 32, 128):
        t0 = time.perf_counter()
        _, approx = ivf.ivf_topk(q, db, lists, k, nprobe=nprobe)
        rows.append({"index": f"lmr_jax ivf nlist=1024 nprobe={nprobe}", "build_s": round(build, 1),
                     "search_s": round(time.perf_counter() - t0, 2),
                     "recall": round(search.recall_at_k(approx, exact), 4)})
    settings = [("ivf", {"nlist": 1024}, "nprobe", [8, 32, 128]),
                ("hnsw", {"hnsw_m": 32}, "ef_search", [128, 512])]
    for kind, build_kw, knob, values in settings:
        t0 = time.perf_counter()
        index = search.build_index(db, kind, **build_kw)
        build = time.perf_counter() - t0
        for v in values:
            if kind == "ivf":
                index.nprobe = v
            else:
                index.hnsw.efSearch = v
            t0 = time.perf_counter()
            _, approx = search.search_index(index, q, k)
            rows.append({"index": f"{kind} {build_kw} {knob}={v}", "build_s": round(build, 1),
                         "search_s": round(time.perf_counter() - t0, 2),
                         "recall": round(search.recall_at_k(approx, exact), 4)})
    return rows


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    print(json.dumps(bench_ann(f.queries, f.db, f.dim), sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_integer("queries", 1129, "Queries.")
    flags.DEFINE_integer("db", 200_000, "Database vectors.")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    app.run(main)
