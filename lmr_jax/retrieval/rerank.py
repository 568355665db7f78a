"""One re-ranking interface for single models and ensembles: method name -> ranked index lists.

Every re-ranking method is a factory registered in :data:`RERANKERS` by name; its keyword
options are its config entry (``RERANKERS.build(name, **options)`` refuses unknown ones). It
returns a :class:`Reranker`, called the same way for one model or an ensemble::

    ranker = RERANKERS.build("landmark_country", ensemble="before_merge")
    scores, top = ranker([ModelFeatures(q1, x1, r1), ModelFeatures(q2, x2, r2)], [0.6, 0.4],
                         top_k=100, references=References(ref_landmarks, ref_countries))

The evaluation command, its submissions and its report all rank through this; adding a method
is one registered function plus its config entry.

Methods (Q queries, N index images; model m has weight w_m and its own features):

* ``off`` (plain search, no re-ranking): score(q, i) = sum_m w_m <q_m, i_m> (the weighted sum of the models' similarity
  matrices, weights as given, not normalised).
* ``landmark_country``: the Landmark-Country re-ranking (:mod:`landmark_country`), every model
  with the tags computed from its own query, index and reference features. Two ways to
  combine models, both those of the GLR2021 reference code:

  - ``before_merge`` (default; the setting of the paper's submission): each model's
    similarities get that model's bonus, then the re-ranked matrices are summed with the
    model weights: sum_m w_m (S_m + B_m);
  - ``after_merge``: the weighted plain similarities are summed first, then every model's
    bonus is added in turn, unweighted: sum_m w_m S_m + sum_m B_m.

  With one model of weight 1 the two are the same ranking, S + B.
* ``kreciprocal``: the k-reciprocal re-ranking of Zhong et al. (:mod:`kreciprocal`) on the
  fused features (each model's features times sqrt(w_m / sum w), concatenated: unit norm, and
  their dot product is the weighted mean of the models' similarities).

The (Q, N) score matrix is never held whole: it is built ``query_chunk`` queries at a time and
only the ``top_k`` best per query are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lmr_jax.registry import Registry
from lmr_jax.retrieval import ivf, kreciprocal, landmark_country, reference_graph, search

ENSEMBLE_MODES = ("before_merge", "after_merge")
NEIGHBOUR_SEARCHES = ("exact", "ivf")
QUERY_CHUNK = 128


@dataclasses.dataclass
class ModelFeatures:
    """One model's L2-normalised features: query (Q, D), index (N, D), reference set (R, D) or
    None (float16 memory maps are fine; every model lists the same images in the same order)."""

    query: np.ndarray
    index: np.ndarray
    refs: np.ndarray | None = None


@dataclasses.dataclass
class References:
    """Labels of the reference set, one per row of every model's ``refs``: landmarks (R,) and
    countries (R,) (ints or strings; '' is a country like any other)."""

    landmarks: np.ndarray
    countries: np.ndarray


RankFn = Callable[[Sequence[ModelFeatures], np.ndarray, int, "References | None"],
                  tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Reranker:
    """A built re-ranking method.

    Calling it with the models' features, their weights and ``top_k`` returns (scores (Q, k)
    float32 descending, index rows (Q, k) int64), k = min(top_k, N), ties to the lower row.
    ``needs_references``: the method needs ``refs`` in every model and ``references``.
    """

    name: str
    rank: RankFn
    needs_references: bool = False

    def __call__(self, models: Sequence[ModelFeatures], weights: Sequence[float], *,
                 top_k: int = 100, references: References | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        models = list(models)
        w = np.asarray(weights, np.float64)
        if not models or len(w) != len(models):
            raise ValueError(f"{self.name}: need one weight per model, got {len(models)} "
                             f"models and {len(w)} weights")
        q, n = models[0].query.shape[0], models[0].index.shape[0]
        for i, m in enumerate(models):
            if m.query.shape[0] != q or m.index.shape[0] != n:
                raise ValueError(f"{self.name}: model {i} has {m.query.shape[0]} queries and "
                                 f"{m.index.shape[0]} index rows, model 0 {q} and {n}")
        if self.needs_references:
            if references is None or any(m.refs is None for m in models):
                raise ValueError(f"{self.name} needs the reference set: reference features "
                                 "for every model and their landmarks and countries")
            r = len(references.landmarks)
            bad = [i for i, m in enumerate(models) if m.refs.shape[0] != r]
            if bad or len(references.countries) != r:
                raise ValueError(f"{self.name}: {r} reference labels but models {bad} have "
                                 "another number of reference rows (or the countries differ)")
        return self.rank(models, w, top_k, references)


RERANKERS: Registry[Callable[..., Reranker]] = Registry(
    "re-ranking method", builtin_modules=("lmr_jax.retrieval.rerank",))


def _chunked_topk(num_queries: int, num_index: int, top_k: int,
                  scores_of: Callable[[slice], np.ndarray], query_chunk: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the (Q, N) scores built by ``scores_of(rows)`` for chunks of query rows."""
    k = min(top_k, num_index)
    out_s = np.empty((num_queries, k), np.float32)
    out_i = np.empty((num_queries, k), np.int64)
    for s in range(0, num_queries, query_chunk):
        rows = slice(s, s + query_chunk)
        out_s[rows], out_i[rows] = search.topk_from_scores(scores_of(rows), k)
    return out_s, out_i


def _similarities(models: Sequence[ModelFeatures]) -> Callable[[slice], list[np.ndarray]]:
    """rows -> every model's (rows, N) float32 similarities."""
    q = [np.ascontiguousarray(m.query, np.float32) for m in models]
    x = [np.ascontiguousarray(m.index, np.float32) for m in models]
    return lambda rows: [qm[rows] @ xm.T for qm, xm in zip(q, x, strict=True)]


@RERANKERS.register("off")
def plain_search(*, query_chunk: int = QUERY_CHUNK) -> Reranker:
    """Plain search: the weighted sum of the models' similarity matrices."""

    def rank(models, weights, top_k, references):
        del references
        sims = _similarities(models)
        return _chunked_topk(models[0].query.shape[0], models[0].index.shape[0], top_k,
                             lambda rows: search.fuse_similarities(sims(rows), weights),
                             query_chunk)

    return Reranker("off", rank)


def reference_search(model: ModelFeatures, kind: str = "exact", nprobe: int = 32,
                     nlist: int | None = None) -> landmark_country.NeighbourSearch:
    """The search over ``model.refs`` for the Landmark-Country tags: "exact" or "ivf".

    The inverted file serves both nearest-neighbour steps, so its ``nlist`` default is sized
    for Q + N rows and the (at most 30 Q) distinct top-30 refs.
    """
    if kind == "exact":
        return search.ExactSearch(model.refs)
    num_q, num_x = model.query.shape[0], model.index.shape[0]
    expected = num_q + num_x + min(30 * num_q, model.refs.shape[0])
    return ivf.IVFSearch(model.refs, nprobe=nprobe, nlist=nlist, expected_queries=expected)


def cached_reference_graph(model: ModelFeatures, kind: str, cache_dir: str, *,
                           nprobe: int = 32, nlist: int | None = None,
                           run_search: landmark_country.NeighbourSearch | None = None
                           ) -> np.ndarray:
    """``model.refs``' reference graph (top-30 refs of every ref) from ``cache_dir``, built
    there on first use (:mod:`reference_graph`) with the search ``kind`` ("exact" or "ivf").

    The inverted file of the graph is sized for R rows (the graph's), so that its cache key
    does not depend on a run's query set; ``run_search``, the run's own search, is used
    instead when it is the same search. Returns an (R, min(30, R)) int32 memory map.
    """
    if kind == "exact":
        find = search.ExactSearch(model.refs)
    else:
        find = ivf.IVFSearch(model.refs, nprobe=nprobe, nlist=nlist,
                             expected_queries=len(model.refs))
    if run_search is not None and getattr(run_search, "cache_key", None) == find.cache_key:
        find = run_search
    return reference_graph.cached(model.refs, min(landmark_country.TOP_REFS, len(model.refs)),
                                  find, find.cache_key, cache_dir)


@RERANKERS.register("landmark_country")
def landmark_country_method(*, ensemble: str = "before_merge", k: int = 3, alpha: float = 1.0,
                            beta: float = 0.1, query_kreciprocal: bool = True,
                            neighbour_search: str = "exact", nprobe: int = 32,
                            nlist: int | None = None,
                            reference_graph_dir: str | None = None,
                            reference_graph_search: str | None = None,
                            query_chunk: int = QUERY_CHUNK) -> Reranker:
    """Landmark-Country re-ranking, each model with its own tags; ``ensemble`` as above.

    ``neighbour_search`` is the search over the reference set for the two nearest-neighbour
    steps (the index images' top-1 ref, the queries' top-30 neighbourhoods): "exact" (the
    reference's), or "ivf", the approximate inverted file of :mod:`ivf` with ``nprobe`` of
    ``nlist`` lists probed (``nlist`` None: :func:`ivf.default_nlist`); its agreement with
    the exact tags is measured in docs/benchmarks.md.

    ``reference_graph_dir``: cache every model's reference graph there (each ref's top-30
    refs, :mod:`reference_graph`; built on first use, read after) instead of searching the
    neighbourhoods' second step in every run. ``reference_graph_search``: the search that
    builds it, "exact" or "ivf" (None: ``neighbour_search``). An exact graph with the
    approximate search keeps the refinement's neighbourhoods exact and small; it costs one
    exact search of every ref (R^2 products: minutes at 200,000 refs on a CPU, hours at
    millions).
    """
    if ensemble not in ENSEMBLE_MODES:
        raise ValueError(f"landmark_country: ensemble must be one of {ENSEMBLE_MODES}, "
                         f"got {ensemble!r}")
    graph_search = reference_graph_search or neighbour_search
    for name, value in (("neighbour_search", neighbour_search),
                        ("reference_graph_search", graph_search)):
        if value not in NEIGHBOUR_SEARCHES:
            raise ValueError(f"landmark_country: {name} must be one of {NEIGHBOUR_SEARCHES}, "
                             f"got {value!r}")
    if nprobe < 1 or (nlist is not None and nlist < 1):
        raise ValueError(f"landmark_country: nprobe ({nprobe}) and nlist ({nlist}) must be >= 1")

    def tags_of(m: ModelFeatures, references: References) -> landmark_country.Tags:
        find = reference_search(m, neighbour_search, nprobe, nlist)
        graph = None
        if reference_graph_dir and query_kreciprocal:
            graph = cached_reference_graph(m, graph_search, reference_graph_dir, nprobe=nprobe,
                                           nlist=nlist, run_search=find)
        return landmark_country.compute_tags(m.query, m.index, m.refs, references.landmarks,
                                             references.countries, k=k,
                                             query_kreciprocal=query_kreciprocal,
                                             neighbour_search=find, ref_graph=graph)

    def rank(models, weights, top_k, references):
        tags = [tags_of(m, references) for m in models]
        sims = _similarities(models)

        def scores_of(rows):
            per_model = sims(rows)
            if ensemble == "before_merge":
                return search.fuse_similarities(
                    [landmark_country.apply_tags(s, t, rows, alpha=alpha, beta=beta)
                     for s, t in zip(per_model, tags, strict=True)], weights)
            fused = search.fuse_similarities(per_model, weights)
            for t in tags:
                fused = landmark_country.apply_tags(fused, t, rows, alpha=alpha, beta=beta)
            return fused

        return _chunked_topk(models[0].query.shape[0], models[0].index.shape[0], top_k,
                             scores_of, query_chunk)

    return Reranker("landmark_country", rank, needs_references=True)


@RERANKERS.register("kreciprocal")
def kreciprocal_method(*, k1: int = 10, k2: int = 3, lambda_value: float = 0.3) -> Reranker:
    """k-reciprocal re-ranking (Zhong et al.) of the fused features."""

    def rank(models, weights, top_k, references):
        del references
        w = list(weights / weights.sum())
        q = search.fuse_features([m.query for m in models], w)
        x = search.fuse_features([m.index for m in models], w)
        sims = kreciprocal.kreciprocal_rerank(q, x, k1=k1, k2=k2, lambda_value=lambda_value)
        return search.topk_from_scores(sims, top_k)

    return Reranker("kreciprocal", rank)
