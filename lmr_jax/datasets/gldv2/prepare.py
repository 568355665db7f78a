"""Preparation of a GLDv2 copy for training: lists, validation set, image store and report.

:func:`prepare` (``scripts/prepare_gldv2.py``) writes into an output folder::

    store/                 every image of the lists and of the validation set once
                           (:mod:`lmr_jax.data.store`; resumable, parallel, verified)
    lists/{clean,c2x,full,all}.npz   ImageLists without the bad images
    lists/labels.csv       label -> GLDv2 landmark_id and country (lists.LabelTable)
    validation.npz         ValidationSet without bad queries / index images
    report.json            summary, losses per list and every bad image with path and reason

and stops with :class:`PreparationError` (keeping the store and the report, writing no lists)
when a list or the validation set loses more than ``max_bad_fraction`` of its images.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmr_jax.data import geo
from lmr_jax.data.lists import LABEL_TABLE_NAME, LabelTable, ValidationSet
from lmr_jax.data.store import StoreOptions, write_store
from lmr_jax.datasets.gldv2.lists import (
    DEFAULT_VAL_DISTRACTORS,
    LIST_NAMES,
    build_lists,
    default_country_dir,
)


class PreparationError(RuntimeError):
    """Preparation stopped (too many bad images, ...); what was written is kept."""


def _drop_from_validation(val: ValidationSet, bad: np.ndarray) -> tuple[ValidationSet, int, int]:
    """The validation set without bad query / index images; returns (set, lost q, lost idx)."""
    q_ok = ~np.isin(np.char.add("test/", val.query_ids), bad)
    i_ok = ~np.isin(np.char.add("index/", val.index_ids), bad)
    index_ids = val.index_ids[i_ok]
    ok_ids = set(index_ids.tolist())
    gts = [[g for g in val.ground_truth(q).tolist() if g in ok_ids] for q in np.flatnonzero(q_ok)]
    out = ValidationSet.from_ground_truth(val.query_ids[q_ok].tolist(), val.usage[q_ok].tolist(),
                                          gts, index_ids, name=val.name)
    return out, int((~q_ok).sum()), int((~i_ok).sum())


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    country_dir: str | os.PathLike | None = None,
    country_csv: str | os.PathLike | None = None,
    store_options: StoreOptions | None = None,
    workers: int = 1,
    max_bad_fraction: float = 0.01,
    val_index_ids: Sequence[str] | None = None,
    val_distractors: int = DEFAULT_VAL_DISTRACTORS,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build the lists and the image store of the GLDv2 copy at ``root`` into ``out``.

    Writes ``out/store/`` (:func:`lmr_jax.data.store.write_store`; resumable), then
    ``out/report.json`` (bad images with path and reason, losses per list, notes), and, unless a
    list or the validation set loses more than ``max_bad_fraction`` of its images to bad images,
    ``out/lists/{clean,c2x,full,all}.npz`` and ``out/validation.npz`` without the bad images.

    Countries come from ``country_csv`` (``landmark_id,country``) if given, else from the GLDv2
    country files in ``country_dir`` (default ``root/train/country`` when present).

    Returns the summary written to the report
    (see :func:`lmr_jax.datasets.gldv2.report.format_summary`).

    Raises:
      lmr_jax.datasets.gldv2.csv_files.GldFormatError: malformed metadata (``file:line``).
      PreparationError: too many bad images (the store and the report are kept).
    """
    root, out = Path(root), Path(out)
    options = store_options or StoreOptions()
    t0 = time.perf_counter()
    if country_csv is not None:
        by_landmark, by_category, country_source = geo.load_country_csv(country_csv), None, \
            str(country_csv)
    else:
        cdir = Path(country_dir) if country_dir is not None else default_country_dir(root)
        by_landmark, by_category = None, (geo.load_country_dir(cdir) if cdir else None)
        country_source = str(cdir) if cdir else "none (every landmark without country)"
    built = build_lists(root, country_by_category=by_category, country_by_landmark=by_landmark,
                        val_index_ids=val_index_ids, val_distractors=val_distractors, seed=seed)
    t_lists = time.perf_counter() - t0
    val = built.validation
    keys = np.unique(np.concatenate([
        built.lists["all"].keys(), built.lists["clean"].keys(),
        np.char.add("test/", val.query_ids), np.char.add("index/", val.index_ids)]))
    result = write_store(out / "store", keys, root, options, workers=workers, progress=progress)
    bad = np.asarray(sorted(result.bad_keys), dtype=str)

    lists, losses = {}, {}
    for name in LIST_NAMES:
        lst = built.lists[name]
        keep = ~np.isin(lst.keys(), bad)
        lists[name] = lst.select(keep)
        losses[name] = {"lost": int((~keep).sum()), "total": len(lst)}
    val_ok, lost_q, lost_i = _drop_from_validation(val, bad)
    losses["validation queries"] = {"lost": lost_q, "total": val.num_queries}
    losses["validation index"] = {"lost": lost_i, "total": len(val.index_ids)}
    for v in losses.values():
        v["fraction"] = v["lost"] / max(v["total"], 1)

    summary = {
        "root": str(root), "out": str(out), "countries": country_source,
        "lists": {n: lists[n].stats() for n in LIST_NAMES},
        "validation": {"queries": val_ok.num_queries, "index": len(val_ok.index_ids),
                       "gt_pairs": len(val_ok.gt_rows)},
        "notes": built.notes, "losses": losses,
        "store": {"images": result.num_images, "bad": len(result.bad),
                  "reencoded": result.changed, "shards_written": result.shards_written,
                  "shards_skipped": result.shards_skipped, **options.identity()},
        "bad_by_reason": _count_reasons(result.bad),
        "seconds": {"lists": round(t_lists, 2), "store": round(result.seconds, 2),
                    "images_per_second": round(result.images_written / max(result.seconds, 1e-9),
                                               1)},
    }
    report = out / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"summary": summary, "bad_images": result.bad}, indent=1))
    over = {n: v for n, v in losses.items() if v["fraction"] > max_bad_fraction}
    if over:
        what = "; ".join(f"{n}: {v['lost']} of {v['total']} images ({v['fraction']:.2%})"
                         for n, v in over.items())
        raise PreparationError(
            f"too many bad images ({what}), more than the allowed {max_bad_fraction:.2%}; see "
            f"{report}. The store in {out / 'store'} is kept: fix or remove the bad files and "
            "delete their shards' .done.json markers to retry them, or allow more with "
            "--max_bad_fraction.")
    for name, lst in lists.items():
        lst.save(out / "lists" / f"{name}.npz")
    LabelTable(built.label_landmark, built.label_country).save(out / "lists" / LABEL_TABLE_NAME)
    val_ok.save(out / "validation.npz")
    return summary


def _count_reasons(bad: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in bad:
        reason = b["reason"].split(":")[0]
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))

