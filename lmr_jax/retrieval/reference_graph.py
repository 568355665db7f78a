"""The reference set's own neighbour graph: every ref's top-k refs, computed once, cached on disk.

The k-reciprocal refinement of the Landmark-Country re-ranking (:mod:`landmark_country`)
needs the top-30 refs of each query's top-30 refs: on 1,129 queries x 200,000 refs a search
of about 30,000 refs against all of them, 40-55 % of the whole re-ranking. That search
depends on the reference set alone, not on the queries or the index images: for one model's
reference features (the GLDv2 train set) it can be done once for every ref and reused by
every later evaluation (another query set, the Kaggle public and private runs, a sweep of
``k``, ``alpha`` and ``beta``), as the reference features themselves are.

The graph is an (R, k) int32 ``.npy`` file (R refs; row r lists r's k best refs by inner
product, best first, r itself included, -1 where an approximate search found fewer than k).
It holds what the search it was built with returns, so with the exact search the re-ranking
is the same with or without it; with the inverted file (:mod:`ivf`) it is as approximate as
that search. :func:`cached` names the file after a fingerprint of the reference features,
the search and k, so another model's refs, or another search, never reuse it.

Building writes the rows block by block into ``<name>.partial.npy`` and records the rows
done in ``<name>.progress.json`` after each block: an interrupted build resumes where it
stopped and the finished file appears only when complete (the search's own set-up, an
inverted file's k-means, is redone on resuming: it is deterministic for a seed). Cost: one search of R queries
(exact: R^2 * 2D FLOP, about 3.5 min for 200,000 x 512 on a 2-core CPU; the inverted file
with ``expected_queries = R``: about nprobe / nlist of that, 52 s at 200,000 refs; at
4.9 M refs its 9,570 lists took 8.3 min and then about 18 s per 32,768 refs, so about
55 min in all). Memory: ``block_rows`` query
rows at a time; the finished graph is read as a memory map (4.9 M x 30 int32 = 588 MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

BLOCK_ROWS = 32_768  # query rows searched (and written) per block of a build
FINGERPRINT_ROWS = 4096  # evenly spaced rows hashed into a reference set's fingerprint

NeighbourSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def fingerprint(ref_feats: np.ndarray) -> str:
    """16 hex digits naming a reference set: its shape, dtype and FINGERPRINT_ROWS evenly
    spaced rows (all of them if fewer), so that reading it costs little even for a memmap."""
    n = ref_feats.shape[0]
    rows = np.unique(np.linspace(0, max(n - 1, 0), min(n, FINGERPRINT_ROWS)).astype(np.int64))
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((tuple(ref_feats.shape), str(ref_feats.dtype))).encode())
    h.update(np.ascontiguousarray(ref_feats[rows]).tobytes())
    return h.hexdigest()


def validate(graph: np.ndarray, num_refs: int, k: int, source: str = "graph") -> None:
    """Raise ValueError unless ``graph`` is an (num_refs, >= k) integer array of refs or -1."""
    if graph.ndim != 2 or graph.shape[0] != num_refs or graph.shape[1] < k:
        raise ValueError(f"{source}: reference graph of shape {graph.shape}, expected "
                         f"({num_refs}, >= {k}) (one row of neighbours per ref)")
    if graph.dtype.kind not in "iu":
        raise ValueError(f"{source}: reference graph of dtype {graph.dtype}, expected integers")
    lo, hi = int(graph.min()), int(graph.max())
    if lo < -1 or hi >= num_refs:
        raise ValueError(f"{source}: reference graph entries in [{lo}, {hi}], expected ref "
                         f"rows in [0, {num_refs}) or -1")


def build(ref_feats: np.ndarray, k: int, neighbour_search: NeighbourSearch, path: str, *,
          block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Every ref's top-``k`` refs by ``neighbour_search``, written to ``path`` (.npy); resumes.

    Args:
      ref_feats: (R, D) L2-normalised reference features (memmap allowed).
      k: neighbours per ref (<= R).
      neighbour_search: ``(queries, k) -> (scores, indices)`` over ``ref_feats``.
      path: the finished graph; ``path`` minus ``.npy`` plus ``.partial.npy`` and
        ``.progress.json`` hold an unfinished build.
    Returns:
      (R, k) int32 graph, a read-only memory map of ``path``.
    """
    n = ref_feats.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the refs), got {k}")
    stem = path[:-4] if path.endswith(".npy") else path
    partial, progress = stem + ".partial.npy", stem + ".progress.json"
    state = {"rows": n, "k": k, "done": 0}
    if os.path.exists(progress) and os.path.exists(partial):
        with open(progress) as f:
            saved = json.load(f)
        if saved.get("rows") == n and saved.get("k") == k:
            state = saved
            out = np.load(partial, mmap_mode="r+")
            log.info("reference graph: resuming %s at row %d of %d", partial, state["done"], n)
    if state["done"] == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.int32, shape=(n, k))
    # The rate leaves out the first block, which also pays for the search's set-up (an
    # inverted file's k-means: minutes at millions of refs).
    first, t0, start = state["done"], time.perf_counter(), state["done"]
    for b in range(first, n, block_rows):
        rows = slice(b, min(b + block_rows, n))
        _, nn = neighbour_search(np.asarray(ref_feats[rows], np.float32), k)
        out[rows] = nn
        out.flush()
        state["done"] = rows.stop
        with open(progress + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(progress + ".tmp", progress)
        if b == first:
            t0, start = time.perf_counter(), rows.stop
            log.info("reference graph: %d / %d refs", rows.stop, n)
            continue
        rate = (rows.stop - start) / (time.perf_counter() - t0)
        log.info("reference graph: %d / %d refs, %.0f refs/s, %.0f s left", rows.stop, n,
                 rate, (n - rows.stop) / rate)
    del out
    os.replace(partial, path)
    os.remove(progress)
    return np.load(path, mmap_mode="r")


def cached(ref_feats: np.ndarray, k: int, neighbour_search: NeighbourSearch, search_key: str,
           cache_dir: str) -> np.ndarray:
    """The graph of ``ref_feats`` from ``cache_dir``, built there (:func:`build`) if missing.

    Args:
      search_key: names the search (e.g. "exact", "ivf390-probe32-seed0"); a graph built
        with another search, k or reference set is another file.
    Returns:
      (R, k) int32 read-only memory map.
    """
    path = os.path.join(cache_dir, f"refgraph_{fingerprint(ref_feats)}_{search_key}_k{k}.npy")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        log.info("reference graph: building %s (%d refs, top-%d)", path, ref_feats.shape[0], k)
        graph = build(ref_feats, k, neighbour_search, path)
        log.info("reference graph: built in %.1f s", time.perf_counter() - t0)
        return graph
    try:
        graph = np.load(path, mmap_mode="r")
    except ValueError as e:  # not a .npy file
        raise ValueError(f"{path}: unreadable reference graph ({e}); delete it to rebuild") from e
    validate(graph, ref_feats.shape[0], k, path)
    log.info("reference graph: %s", path)
    return graph[:, :k]
