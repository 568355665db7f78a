"""Prepare GLDv2 for training: lists (clean, c2x, full, all), validation set and image store.

    python scripts/prepare_gldv2.py --gldv2 /data/gldv2 --out data/gldv2 [--max_side 512]

Resumable: run the same command again after an interruption; finished shards are kept.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lmr_jax.data import geo, store
from lmr_jax.datasets.gldv2 import csv_files, lists, prepare, report

_GLDV2 = flags.DEFINE_string("gldv2", None, "GLDv2 root (train/, index/, test/).")
_OUT = flags.DEFINE_string("out", "data/gldv2", "Output folder.")
_MAX_SIDE = flags.DEFINE_integer("max_side", None, "Speed option that changes pixels: re-encode "
                                 "images whose long side is larger as JPEG (default: store "
                                 "every file's original bytes).")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "Quality of re-encoded JPEGs.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 10_000, "Images per store shard.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes writing shards.")
_MAX_BAD_FRACTION = flags.DEFINE_float("max_bad_fraction", 0.01, "Stop if a list loses more "
                                       "than this share of its images.")
_VERIFY_FRACTION = flags.DEFINE_float("verify_fraction", 0.01, "Share of written images decoded "
                                      "again (all are hash-checked).")
_COUNTRY_DIR = flags.DEFINE_string("country_dir", None, "GLDv2 country files (default: "
                                   "GLDV2/train/country if present).")
_COUNTRY_CSV = flags.DEFINE_string("country_csv", None, "landmark_id,country CSV instead.")
_VAL_INDEX_IDS = flags.DEFINE_string("val_index_ids", None, "One-column 'id' CSV of the "
                                     "validation base index (e.g. the 2021 competition index); "
                                     "default: a seeded sample of the GLDv2 index.")
_VAL_DISTRACTORS = flags.DEFINE_integer("val_distractors", lists.DEFAULT_VAL_DISTRACTORS,
                                        "Size of that sample.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the validation sample.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (--noprogress: none).")
flags.mark_flag_as_required("gldv2")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = store.StoreOptions(max_side=_MAX_SIDE.value, jpeg_quality=_JPEG_QUALITY.value,
                                 shard_size=_SHARD_SIZE.value,
                                 verify_fraction=_VERIFY_FRACTION.value)
    try:
        val_ids = csv_files.read_id_list(_VAL_INDEX_IDS.value) if _VAL_INDEX_IDS.value else None
        summary = prepare.prepare(
            _GLDV2.value, _OUT.value, country_dir=_COUNTRY_DIR.value,
            country_csv=_COUNTRY_CSV.value, store_options=options, workers=_WORKERS.value,
            max_bad_fraction=_MAX_BAD_FRACTION.value, val_index_ids=val_ids,
            val_distractors=_VAL_DISTRACTORS.value, seed=_SEED.value, progress=_PROGRESS.value)
    except (csv_files.GldFormatError, prepare.PreparationError, store.StoreError,
            geo.CountryFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format_summary(summary))
    return 0


if __name__ == "__main__":
    app.run(main)
