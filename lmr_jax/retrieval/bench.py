"""Benchmarks: re-ranking (vectorised vs a per-query loop, GLDv2 scale) and extraction speed.

:func:`loop_landmark_country_rerank` is a straightforward implementation of SPEC.md section 7
in the style of the reference code (a Python loop per query, numpy, the local k-reciprocal
computation looping over the nodes of the set), used only as the timing and ranking baseline.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from lmr_jax.retrieval import rerank, search


def _loop_local_jaccard(feats: np.ndarray, k1: int = 10, k2: int = 3) -> np.ndarray:
    """Jaccard distance of node 0 to every node, node-by-node loops (reference style)."""
    n = len(feats)
    dist = 1.0 - (feats @ feats.T + 1.0) / 2.0
    rank = np.argsort(dist, axis=1, kind="stable")
    kh = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), np.float32)
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        recip = fwd[np.any(rank[fwd, :k1 + 1] == i, axis=1)]
        expanded = recip
        for c in recip:
            cf = rank[c, :kh + 1]
            crecip = cf[np.any(rank[cf, :kh + 1] == c, axis=1)]
            if len(np.intersect1d(crecip, recip)) > 2.0 / 3.0 * len(crecip):
                expanded = np.append(expanded, crecip)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        v[i, expanded] = w / w.sum()
    v_qe = np.zeros_like(v)
    for i in range(n):
        v_qe[i] = v[rank[i, :k2]].mean(axis=0)
    m = np.zeros(n, np.float32)
    for col in np.nonzero(v_qe[0])[0]:
        rows = np.nonzero(v_qe[:, col])[0]
        m[rows] += np.minimum(v_qe[0, col], v_qe[rows, col])
    return 1.0 - m / (2.0 - m)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top-k column indices, best first (argpartition, then sort of the k)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def loop_landmark_country_rerank(query_feats, index_feats, ref_feats, ref_landmarks,
                                 ref_countries, *, k=3, alpha=1.0, beta=0.1, topk=30,
                                 batch_size=128, timings: dict | None = None) -> np.ndarray:
    """Per-query numpy baseline of SPEC.md section 7; returns (Q, N) float32 similarities.

    ``timings``, if given, receives the seconds spent on the index tags (batched GEMM, as the
    reference does it) and on the per-query loop.
    """
    t0 = time.perf_counter()
    refs = np.asarray(ref_feats, np.float32)
    index_lm = np.empty(len(index_feats), np.asarray(ref_landmarks).dtype)
    index_ct = np.empty(len(index_feats), np.asarray(ref_countries).dtype)
    for s in range(0, len(index_feats), batch_size):
        best = np.argmax(index_feats[s:s + batch_size] @ refs.T, axis=1)
        index_lm[s:s + batch_size] = ref_landmarks[best]
        index_ct[s:s + batch_size] = ref_countries[best]
    t1 = time.perf_counter()
    sims = np.asarray(query_feats @ index_feats.T, np.float32)
    for qi, q in enumerate(query_feats):
        cos = refs @ q
        top = _top(cos[None], topk)[0]
        nbr_top = _top(refs[top] @ refs.T, topk)
        union = np.unique(np.concatenate([top, nbr_top.ravel()]))
        jac = _loop_local_jaccard(np.concatenate([q[None], refs[union]]))[1:]
        final = 0.5 * (1.0 - (cos + 1.0) / 2.0) + 0.5
        final[union] = 0.5 * (1.0 - (cos[union] + 1.0) / 2.0) + 0.5 * jac
        ref_sim = 1.0 - final
        best = np.argsort(-ref_sim, kind="stable")[:k]
        for labels, index_labels, weight in ((ref_landmarks, index_lm, alpha),
                                             (ref_countries, index_ct, beta)):
            tags = labels[best]
            scores = {t: ref_sim[best][tags == t].sum() for t in np.unique(tags)}
            total = sum(scores.values())
            for t, s in scores.items():
                sims[qi, index_labels == t] += weight * s / total
    if timings is not None:
        timings.update(index_tags_s=round(t1 - t0, 2), per_query_loop_s=round(
            time.perf_counter() - t1, 2))
    return sims


def random_problem(num_queries: int, num_index: int, num_refs: int, dim: int = 512, *,
                   num_landmarks: int | None = None, num_countries: int = 200, seed: int = 0,
                   ref_path: str | None = None):
    """Random unit vectors and labels; refs go to a float16 .npy memmap when ``ref_path``."""
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


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_vs_loop(num_queries: int = 1129, num_index: int = 20_000, num_refs: int = 200_000,
                  dim: int = 512, loop_queries: int | None = None, seed: int = 0) -> dict:
    """Time both implementations on the same random inputs and compare their top-100 rankings.

    ``loop_queries`` runs the loop on the first queries only (its cost is linear in the
    number of queries; the report then says so and extrapolates).
    """
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed)
    t0 = time.perf_counter()
    fast_times: dict = {}
    # landmark_country_rerank split in its two steps to time them.
    tags = rerank.compute_tags(q, x, refs, lms, cts, timings=fast_times)
    t1 = time.perf_counter()
    fast = rerank.apply_tags(search.similarity_matrix(q, x), tags)
    fast_times["apply_s"] = round(time.perf_counter() - t1, 2)
    t_fast = time.perf_counter() - t0
    nl = loop_queries or num_queries
    t0 = time.perf_counter()
    loop_times: dict = {}
    slow = loop_landmark_country_rerank(q[:nl], x, refs, lms, cts, timings=loop_times)
    t_loop = time.perf_counter() - t0
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
                     num_refs: int = 4_900_000, dim: int = 512, chunk_size: int = 1 << 18,
                     seed: int = 0) -> dict:
    """Top-100 re-ranking at GLDv2 scale with float16 memory-mapped refs; time and peak RSS."""
    q, x, refs, lms, cts = random_problem(num_queries, num_index, num_refs, dim, seed=seed,
                                          ref_path=ref_path)
    t0 = time.perf_counter()
    _, idx = rerank.landmark_country_rerank_topk(q, x, refs, lms, cts, chunk_size=chunk_size)
    dt = time.perf_counter() - t0
    return {"queries": num_queries, "index": num_index, "refs": num_refs, "dim": dim,
            "seconds": round(dt, 1), "peak_rss_gb": round(_peak_rss_gb(), 2),
            "result_shape": list(idx.shape)}


def main_json(result: dict) -> str:
    return json.dumps(result, sort_keys=True)


def images_per_second(step, batch: int, repeats: int = 10, warmup: int = 2) -> float:
    """Median images/s of ``step()`` (one batch of ``batch`` images, synchronised on return)."""
    from lmr_jax.bench import median_seconds

    return batch / median_seconds(step, steps=repeats, warmup=warmup)


def bench_jax_forward(arch: str = "resnet50", batch: int = 8, size: int = 384,
                      dtype: str = "float32", repeats: int = 10) -> float:
    """Images/s of the jitted lmr_jax model forward on the default JAX device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax.models import create

    model = create(arch, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.dtype(dtype))
    return images_per_second(lambda: fwd(state, x).block_until_ready(), batch, repeats)


def bench_extract_end_to_end(folder: str, out_dir: str, arch: str = "resnet50",
                             size: int = 384, batch: int = 8, dtype: str = "float32") -> dict:
    """Images/s of :func:`lmr_jax.retrieval.extract.extract` (decode + forward + write)."""
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax.data.lists import ImageList
    from lmr_jax.data.store import open_source
    from lmr_jax.models import create
    from lmr_jax.retrieval import extract

    files = sorted(str(p) for p in Path(folder).iterdir())
    image_list = ImageList.from_files(files)
    model = create(arch, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    options = extract.ExtractOptions(size=size, batch_size=batch, dtype=dtype,
                                     shard_size=len(files))
    t0 = time.perf_counter()
    extract.extract(model, open_source(image_list, None), image_list.ids, out_dir,
                    options=options, progress=False)
    dt = time.perf_counter() - t0
    return {"images": len(files), "seconds": round(dt, 2), "img_s": round(len(files) / dt, 2)}


def bench_ann(num_queries: int = 1129, num_db: int = 200_000, dim: int = 512, k: int = 100,
              clusters: int = 2000, noise: float = 0.6, seed: int = 0) -> list[dict]:
    """Build/search time and recall@k of faiss flat, IVF and HNSW indexes.

    Data: unit vectors around ``clusters`` random centres (per-dimension noise ``noise`` /
    sqrt(dim) before normalising), queries drawn the same way; recall is against exact search.
    """
    from lmr_jax.retrieval import search

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n):
        x = centres[rng.integers(0, clusters, n)] + noise / np.sqrt(dim) * rng.standard_normal(
            (n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    db, q = draw(num_db), draw(num_queries)
    t0 = time.perf_counter()
    _, exact = search.topk_inner_product(q, db, k)
    rows = [{"index": "exact (chunked faiss.knn)", "build_s": 0.0,
             "search_s": round(time.perf_counter() - t0, 2), "recall": 1.0}]
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
