"""The local sets of the k-reciprocal refinement on the CPU: their Gram matrices and steps.

    python -m benchmarks.local_sets                              # all three parts
    python -m benchmarks.local_sets --parts gram,steps --sets 16 --nodes 896
    python -m benchmarks.local_sets --parts in_run --queries 1129 --index 5000 --refs 20000

Parts (each prints one JSON object; the last line holds them all):

* ``gram``: the Gram matrices of ``--sets`` random sets of ``--nodes`` x ``--dim`` on one BLAS
  thread (the setting of the re-ranking's batch threads): ``x @ x^T`` (numpy calls OpenBLAS's
  ``ssyrk``, the library's product), ``x @ y^T`` with y a copy of x (``sgemm``), and the upper
  blocks by ``sgemm`` then mirrored, for each of ``--blocks``. Milliseconds, best of 5.
* ``steps``: one batch of :func:`lmr_jax.retrieval.kreciprocal.local_query_jaccard`'s CPU path
  step by step (Gram, jitted neighbour lists and weights, V filled and scattered by numpy,
  jitted overlaps), and the top-(k1+1) of the neighbour lists alone by ``lax.top_k``, the search's
  two-stage top-k (groups of 8 to 64 columns), ``search.topk_from_scores`` and faiss's heaps.
  Milliseconds, best of 5, one BLAS thread.
* ``in_run``: one exact ``landmark_country.compute_tags`` on random unit vectors with the local
  sets' Gram matrices timed in each batch thread, and the FLOP of their distinct pairs (what the
  GEMM bound of :mod:`benchmarks.rerank_limits` counts): the Gram matrices alone, at that rate,
  set a ceiling on the refinement's fraction of the bound.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
from absl import app, flags
from threadpoolctl import ThreadpoolController

from benchmarks.timing import call_seconds
from lmr_jax.retrieval import kreciprocal, landmark_country, search

K1, K2 = 10, 3
_BLAS = ThreadpoolController()  # made once: scanning the libraries later can deadlock (kreciprocal)


def _best_ms(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls after one untimed call, in milliseconds."""
    return round(min(call_seconds(fn, steps=repeats, warmup=1)) * 1e3, 3)


def _unit_sets(sets: int, nodes: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((sets, nodes, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _blocked_gram(x: np.ndarray, block: int) -> np.ndarray:
    """x @ x^T per set from the upper blocks (sgemm into the output in place), mirrored."""
    b, n, _ = x.shape
    out = np.empty((b, n, n), np.float32)
    edges = [*range(0, n, block), n]
    spans = [slice(a, e) for a, e in zip(edges[:-1], edges[1:], strict=True)]
    for s in range(b):
        for i, rows in enumerate(spans):
            for cols in spans[i:]:
                np.matmul(x[s, rows], x[s, cols].T, out=out[s, rows, cols])
                if cols != rows:
                    out[s, cols, rows] = out[s, rows, cols].T
    return out


def gram_products(sets: int, nodes: int, dim: int, blocks: list[int]) -> dict:
    """Milliseconds of the three ways to the Gram matrices (module docstring), one BLAS thread."""
    x = _unit_sets(sets, nodes, dim)
    y = x.copy()
    out = np.empty((sets, nodes, nodes), np.float32)
    with _BLAS.limit(limits=1, user_api="blas"):
        res = {"ssyrk_ms": _best_ms(lambda: np.matmul(x, x.transpose(0, 2, 1), out=out)),
               "sgemm_ms": _best_ms(lambda: np.matmul(x, y.transpose(0, 2, 1), out=out)),
               "blocked_ms": {str(b): _best_ms(lambda b=b: _blocked_gram(x, b)) for b in blocks}}
    full = np.matmul(x, x.transpose(0, 2, 1))
    assert np.abs(_blocked_gram(x, blocks[0]) - full).max() < 1e-5  # the same product
    return {"sets": sets, "nodes": nodes, "dim": dim, **res}


def batch_steps(sets: int, nodes: int, dim: int) -> dict:
    """Milliseconds of each step of one batch of local sets, and of five top-k's (docstring)."""
    import jax

    x = _unit_sets(sets, nodes, dim)
    valid = np.ones((sets, nodes), bool)
    valid[:, nodes - nodes // 16:] = False  # some padding, as batches have
    res = {}
    with _BLAS.limit(limits=1, user_api="blas"):
        res["gram_ms"] = _best_ms(lambda: kreciprocal._gram(x, valid))
        cos = kreciprocal._gram(x, valid)
        res["neighbour_weights_ms"] = _best_ms(lambda: jax.block_until_ready(
            kreciprocal._neighbour_weights_jit(cos, valid, K1)))
        fwd, members, weights, _ = kreciprocal._neighbour_weights_jit(cos, valid, K1)
        members, weights = np.asarray(members), np.asarray(weights)
        res["v_ms"] = _best_ms(lambda: kreciprocal._dense_weights(members, weights))
        v = kreciprocal._dense_weights(members, weights)
        res["overlaps_ms"] = _best_ms(lambda: jax.block_until_ready(
            kreciprocal._query_overlaps_jit(v, members, fwd, valid, K2)))
        res["whole_batch_ms"] = _best_ms(lambda: kreciprocal.local_query_jaccard(x, valid, K1,
                                                                                 K2))
        rows = cos.reshape(-1, nodes)
        k = K1 + 1
        top_k = jax.jit(lambda c: jax.lax.top_k(c, k)[1])
        res["topk_ms"] = {"lax.top_k": _best_ms(lambda: np.asarray(top_k(rows)))}
        default_group = search.TOPK_GROUP
        try:
            for group in (8, 16, 32, 64):
                search.TOPK_GROUP = group
                grouped = jax.jit(lambda c: search._grouped_topk(c, k)[1])
                res["topk_ms"][f"two-stage, groups of {group}"] = _best_ms(
                    lambda grouped=grouped: np.asarray(grouped(rows)))
        finally:
            search.TOPK_GROUP = default_group
        res["topk_ms"]["search.topk_from_scores"] = _best_ms(
            lambda: search.topk_from_scores(rows, k))

        def heaps():
            top = search.RowTopK(rows.shape[0], k)
            top.add(rows)
            return top.result(lambda r: search._stable_topk(rows[r], k))

        res["topk_ms"]["faiss heaps (RowTopK)"] = _best_ms(heaps)
    return {"sets": sets, "nodes": nodes, "dim": dim, **res}


def gram_in_run(queries: int, index: int, refs: int, dim: int) -> dict:
    """One exact compute_tags with the local sets' Gram matrices timed per batch thread."""
    from benchmarks.rerank import random_problem

    spent: dict[int, float] = {}
    lock = threading.Lock()
    gram = kreciprocal._gram

    def timed_gram(x, valid):
        t0 = time.perf_counter()
        out = gram(x, valid)
        with lock:
            thread = threading.get_ident()
            spent[thread] = spent.get(thread, 0.0) + time.perf_counter() - t0
        return out

    q, x, r, lms, cts = random_problem(queries, index, refs, dim)
    kreciprocal._gram = timed_gram
    try:
        t0 = time.perf_counter()
        tags = landmark_country.compute_tags(q, x, r, lms, cts)
        total = time.perf_counter() - t0
    finally:
        kreciprocal._gram = gram
    n = tags.neighbourhood_sizes.astype(np.float64) + 1  # the query and its refs
    return {"queries": queries, "index": index, "refs": refs, "dim": dim,
            "tags_s": round(total, 2),
            "gram_s_per_thread": sorted(round(s, 2) for s in spent.values()),
            "gram_distinct_pairs_gflop": round(float((n * (n + 1) / 2).sum()) * dim * 2 / 1e9, 3),
            "mean_set_nodes": round(float(n.mean()), 1)}


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    logging.getLogger("lmr_jax").setLevel(logging.INFO)  # in_run: the phases of the tags
    parts = f.parts.split(",")
    unknown = set(parts) - {"gram", "steps", "in_run"}
    if unknown:
        raise app.UsageError(f"--parts: unknown {sorted(unknown)}")
    out = {}
    if "gram" in parts:
        out["gram"] = gram_products(f.sets, f.nodes, f.dim, [int(b) for b in f.blocks])
        print(json.dumps({"gram": out["gram"]}), flush=True)
    if "steps" in parts:
        out["steps"] = batch_steps(f.sets, f.nodes, f.dim)
        print(json.dumps({"steps": out["steps"]}), flush=True)
    if "in_run" in parts:
        out["in_run"] = gram_in_run(f.queries, f.index, f.refs, f.dim)
        print(json.dumps({"in_run": out["in_run"]}), flush=True)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    flags.DEFINE_string("parts", "gram,steps,in_run", "Comma-separated: gram, steps, in_run.")
    flags.DEFINE_integer("sets", 16, "gram, steps: sets in the batch.")
    flags.DEFINE_integer("nodes", 896, "gram, steps: nodes per set (padded size).")
    flags.DEFINE_integer("dim", 512, "Feature dimension.")
    flags.DEFINE_list("blocks", ["128", "192", "224", "256", "320", "448"],
                      "gram: block sizes of the blocked product.")
    flags.DEFINE_integer("queries", 1129, "in_run: queries.")
    flags.DEFINE_integer("index", 5000, "in_run: index images.")
    flags.DEFINE_integer("refs", 20000, "in_run: references.")
    app.run(main)
