"""Write a synthetic dataset in the official GLDv2 layout (for the demo, tests and benchmarks).

    python scripts/make_demo_data.py --out data/demo
    python scripts/make_demo_data.py --out /tmp/gld100k --num-images 100000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/demo", help="output folder")
    p.add_argument("--num-landmarks", type=int, default=d.num_landmarks, help="train landmarks")
    p.add_argument("--num-images", type=int, default=None,
                   help="about this many images in all (sets --num-landmarks)")
    p.add_argument("--size", type=int, default=d.size, help="long side of the images (px)")
    p.add_argument("--train-images-mean", type=float, default=d.train_images_mean,
                   help="mean train images per landmark")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-corrupt", action="store_true", help="write no corrupt files")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="rendering processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = SyntheticConfig(num_landmarks=args.num_landmarks, size=args.size, seed=args.seed,
                          train_images_mean=args.train_images_mean, corrupt=not args.no_corrupt)
    if args.num_images is not None:
        n = max(4, round(args.num_images / cfg.images_per_landmark()))
        cfg = SyntheticConfig(**{**cfg.__dict__, "num_landmarks": n})
    t0 = time.perf_counter()
    manifest = make_dataset(args.out, cfg, workers=args.workers, progress=True)
    n = sum(manifest["images"].values())
    print(f"wrote {n:,} images ({json.dumps(manifest['images'])}) of "
          f"{manifest['landmarks']['train']:,} train landmarks to {args.out} in "
          f"{time.perf_counter() - t0:.1f} s; corrupt files: {len(manifest['corrupt'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
