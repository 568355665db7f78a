"""Prepare GLDv2 for training: lists (clean, c2x, full, all), validation set and image store.

    python scripts/prepare_gldv2.py --gldv2 /data/gldv2 --out data/gldv2 [--max-side 512]

Resumable: run the same command again after an interruption; finished shards are kept.
"""

from __future__ import annotations

import argparse
import os
import sys

from lmr_jax.data import geo, store
from lmr_jax.datasets.gldv2 import csv_files, lists, prepare, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gldv2", required=True, help="GLDv2 root (train/, index/, test/)")
    p.add_argument("--out", default="data/gldv2", help="output folder")
    p.add_argument("--max-side", type=int, default=None,
                   help="re-encode images whose long side is larger (default: keep originals)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of re-encoded JPEGs")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per store shard")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes writing shards")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="stop if a list loses more than this share of its images")
    p.add_argument("--verify-fraction", type=float, default=0.01,
                   help="share of written images decoded again (all are hash-checked)")
    p.add_argument("--country-dir", default=None,
                   help="GLDv2 country files (default: GLDV2/train/country if present)")
    p.add_argument("--country-csv", default=None, help="landmark_id,country CSV instead")
    p.add_argument("--val-index-ids", default=None,
                   help="one-column 'id' CSV of the validation base index (e.g. the 2021 "
                        "competition index); default: a seeded sample of the GLDv2 index")
    p.add_argument("--val-distractors", type=int, default=lists.DEFAULT_VAL_DISTRACTORS,
                   help="size of that sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = store.StoreOptions(max_side=args.max_side, jpeg_quality=args.jpeg_quality,
                                 shard_size=args.shard_size, verify_fraction=args.verify_fraction)
    try:
        val_ids = csv_files.read_id_list(args.val_index_ids) if args.val_index_ids else None
        summary = prepare.prepare(
            args.gldv2, args.out, country_dir=args.country_dir, country_csv=args.country_csv,
            store_options=options, workers=args.workers, max_bad_fraction=args.max_bad_fraction,
            val_index_ids=val_ids, val_distractors=args.val_distractors, seed=args.seed,
            progress=not args.no_progress)
    except (csv_files.GldFormatError, prepare.PreparationError, store.StoreError,
            geo.CountryFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
