"""Offline retrieval evaluation driven by a config (``scripts/eval.py --config ...``).

features of queries / index / reference set for one or several models (read from feature
folders, or extracted on the fly from checkpoints) -> top-100 of every configured re-ranking
method of :mod:`lmr_jax.retrieval.rerank` (the same interface for one model and for an
ensemble: each model keeps its own features, the methods fuse them) ->
``submission_<method>.csv`` and ``submission.csv`` (the configured method) -> GLDv2 metrics for
all / Public / Private -> ``report.json``, ``report.md`` and ``results.png`` in the work folder
(``config.workdir``; default ``runs/eval/<config name>``).

Images without a feature (failed at extraction, see ``failed.txt`` of the feature folder) are
left out of the ranking and counted in the report: ``missing_features`` in report.json (queries,
index and reference images) and a line of report.md; a missing query scores as a query with no
correct result, a missing index image can never be retrieved.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.data.store import open_source
from lmr_jax.models.saved_model import load_model
from lmr_jax.retrieval import extract, features, metrics, rerank, submission, visualize

log = logging.getLogger(__name__)


def _load_or_extract(model_cfg, role: str, image_list, config, workdir: Path,
                     cache: dict) -> features.FeatureSet:
    path = model_cfg.get(f"{role}_features", "") or ""
    if path:
        return features.load_features(path)
    if not model_cfg.get("checkpoint"):
        raise ValueError(f"model {model_cfg.name!r}: no {role}_features folder and no checkpoint "
                         "to extract them from")
    if not config.images:
        raise ValueError(f"model {model_cfg.name!r}: extracting {role} features needs "
                         "config.images (a prepared store or the GLDv2 image root)")
    key = (model_cfg.checkpoint, model_cfg.dtype)
    if key not in cache:
        cache[key] = load_model(model_cfg.checkpoint, dtype=jnp.dtype(model_cfg.dtype))[0]
    out = workdir / "features" / model_cfg.name / role
    options = extract.ExtractOptions(size=model_cfg.size, scales=tuple(model_cfg.scales),
                                     flip=model_cfg.flip, dtype=model_cfg.dtype,
                                     batch_size=model_cfg.batch_size)
    extract.extract(cache[key], open_source(image_list, config.images), image_list.ids, str(out),
                    options=options, run_config={"checkpoint": model_cfg.checkpoint})
    return features.load_features(out)


def _align(sets: list[features.FeatureSet], ids: np.ndarray, what: str
           ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ids (in ``ids`` order) that every model has a feature for, and each model's rows."""
    keep = np.ones(len(ids), bool)
    for fs in sets:
        keep &= np.isin(ids, fs.ids)
    if not keep.all():
        log.warning("%d %s images have no feature in some model; left out", (~keep).sum(), what)
    kept = ids[keep]
    out = []
    for fs in sets:
        if len(fs.ids) == len(kept) and np.array_equal(fs.ids, kept):
            out.append(fs.feats)  # already aligned: keep the memory map
        else:
            out.append(np.asarray(fs.feats[features.positions_of(kept, fs.ids)]))
    return kept, out


def _solution(config, val) -> submission.RetrievalSolution:
    if config.get("solution"):
        return submission.read_retrieval_solution(config.solution)
    gt = val.gt_dict()
    public = {q: gt[q] for q, u in zip(val.query_ids, val.usage, strict=True) if u == "Public"}
    private = {q: gt[q] for q, u in zip(val.query_ids, val.usage, strict=True) if u == "Private"}
    return submission.RetrievalSolution(public, private, set())


def _score(preds: dict[str, list[str]], sol: submission.RetrievalSolution) -> dict[str, float]:
    preds = {k: v for k, v in preds.items() if k not in sol.ignored}
    out = metrics.retrieval_metrics(preds, sol.all)
    if sol.public:
        out.update(metrics.retrieval_metrics(preds, sol.public, prefix="_public"))
    if sol.private:
        out.update(metrics.retrieval_metrics(preds, sol.private, prefix="_private"))
    return out


def _markdown(results: dict[str, dict[str, Any]], chosen: str, missing: dict[str, int]) -> str:
    lines = ["# Retrieval evaluation", "",
             "Images without a feature (left out): " + ", ".join(
                 f"{n} {what}" for what, n in missing.items()), "",
             "| re-ranking | mAP@100 | Public | Private | P@1 | P@10 | mean first correct | "
             "time (s) |", "|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    for method, r in results.items():
        m = r["metrics"]
        name = f"**{method}** (submission)" if method == chosen else method
        lines.append(f"| {name} | {pct(m.get('map@100'))} | {pct(m.get('map@100_public'))} | "
                     f"{pct(m.get('map@100_private'))} | {pct(m.get('precision@1'))} | "
                     f"{pct(m.get('precision@10'))} | {m['mean_position']:.1f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _picture(path: Path, config, val, query_ids, index_ids, topk, sol) -> str | None:
    n_q = min(config.picture.num_queries, len(query_ids))
    n_r = min(config.picture.num_results, topk.shape[1])
    if n_q == 0 or n_r == 0:
        return None
    loaders = {}
    if config.images:
        for lst in (val.query_list(), val.index_list()):
            try:
                src = open_source(lst, config.images)
            except (FileNotFoundError, OSError, ValueError) as e:
                log.warning("no images for the picture: %s", e)
                continue
            pos = {k: i for i, k in enumerate(lst.ids.tolist())}
            loaders[lst.name] = (src, pos)

    def load(image_id: str) -> bytes | None:
        for src, pos in loaders.values():
            if image_id in pos:
                try:
                    return src[pos[image_id]]["image"]
                except Exception:  # noqa: BLE001 - a missing image is drawn grey
                    return None
        return None

    gt = sol.all
    results, correct = [], []
    for q in range(n_q):
        ids = [str(index_ids[i]) for i in topk[q, :n_r] if i >= 0]
        results.append(ids)
        g = set(gt.get(str(query_ids[q]), []))
        correct.append([(i in g) if g else None for i in ids])
    visualize.draw_results(path, [str(q) for q in query_ids[:n_q]], results, correct, load,
                           title=f"{config.submission_rerank}: green = correct, red = wrong")
    return str(path)


def _rerankers(config: ml_collections.ConfigDict) -> dict[str, rerank.Reranker]:
    """The configured methods, built with their options (unknown names or options: errors)."""
    methods = list(config.rerank)
    if not methods or config.submission_rerank not in methods:
        raise ValueError(f"config.rerank must list the methods to run and contain "
                         f"submission_rerank {config.submission_rerank!r}; got {methods} "
                         f"(known: {', '.join(rerank.RERANKERS.names())})")
    options = config.get("rerank_options", ml_collections.ConfigDict())
    return {m: rerank.RERANKERS.build(m, **dict(options.get(m, {}))) for m in methods}


def _references(config, val, models, workdir, cache
                ) -> tuple[list[np.ndarray], rerank.References, int]:
    """Every model's reference features, their labels (validation images left out) and the
    number of reference images without a feature."""
    ref_list = ImageList.load(config.reference.list)
    ref_list = ref_list.select(ref_list.labels >= 0)
    leak = np.isin(ref_list.ids, np.concatenate([val.query_ids, val.index_ids]))
    if leak.any():
        log.warning("%d reference images are validation queries or index images: removed",
                    leak.sum())
        ref_list = ref_list.select(~leak)
    rsets = [_load_or_extract(m, "ref", ref_list, config, workdir, cache) for m in models]
    ref_ids, rf = _align(rsets, ref_list.ids, "reference")
    pos = features.positions_of(ref_ids, ref_list.ids, "reference ids")
    return (rf, rerank.References(ref_list.labels[pos], ref_list.countries[pos]),
            len(ref_list.ids) - len(ref_ids))


def run_evaluation(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Run the evaluation described by ``config`` (see configs/eval/gldv2_val.py).

    Returns a flat dict of the submission method's metrics plus ``"map@100_<method>"`` for
    every method run, also written to ``report.json``.
    """
    if not config.workdir:
        raise ValueError("config.workdir is empty: name the output folder (scripts/eval.py "
                         "defaults it to runs/eval/<config file name>)")
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rankers = _rerankers(config)
    val = ValidationSet.load(config.validation)
    sol = _solution(config, val)
    cache: dict = {}
    models = list(config.models)
    weights = [float(m.weight) for m in models]
    qsets = [_load_or_extract(m, "query", val.query_list(), config, workdir, cache) for m in models]
    isets = [_load_or_extract(m, "index", val.index_list(), config, workdir, cache) for m in models]
    query_ids, qf = _align(qsets, val.query_ids, "query")
    index_ids, xf = _align(isets, val.index_ids, "index")
    missing = {"query": len(val.query_ids) - len(query_ids),
               "index": len(val.index_ids) - len(index_ids)}
    refs, references = [None] * len(models), None
    if any(r.needs_references for r in rankers.values()):
        refs, references, missing["reference"] = _references(config, val, models, workdir,
                                                             cache)
    feats = [rerank.ModelFeatures(q, x, r) for q, x, r in zip(qf, xf, refs, strict=True)]
    results: dict[str, dict[str, Any]] = {}
    tops: dict[str, np.ndarray] = {}
    for method, ranker in rankers.items():
        t0 = time.perf_counter()
        _, top = ranker(feats, weights, top_k=config.top_k, references=references)
        seconds = time.perf_counter() - t0
        sub_path = workdir / f"submission_{method}.csv"
        submission.write_retrieval_submission(sub_path, query_ids, index_ids, top)
        preds = {str(qid): [str(index_ids[i]) for i in row if i >= 0]
                 for qid, row in zip(query_ids, top, strict=True)}
        results[method] = {"metrics": _score(preds, sol), "seconds": round(seconds, 2),
                           "submission": str(sub_path)}
        tops[method] = top
        log.info("%s: mAP@100 %.4f (%.1f s)", method, results[method]["metrics"]["map@100"],
                 seconds)
    chosen = config.submission_rerank
    (workdir / "submission.csv").write_bytes((workdir / f"submission_{chosen}.csv").read_bytes())
    picture = _picture(workdir / "results.png", config, val, query_ids, index_ids, tops[chosen],
                       sol)
    report = {"methods": results, "submission_rerank": chosen, "picture": picture,
              "num_queries": len(query_ids), "num_index": len(index_ids),
              "num_refs": None if references is None else len(references.landmarks),
              "missing_features": missing,
              "config": config.to_dict()}
    (workdir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True,
                                                    default=str))
    (workdir / "report.md").write_text(_markdown(results, chosen, missing))
    summary = dict(results[chosen]["metrics"])
    for method, r in results.items():
        summary[f"map@100_{method}"] = r["metrics"]["map@100"]
    summary["workdir"] = str(workdir)
    return summary
