"""Write a synthetic dataset in the official GLDv2 layout (for the demo, tests and benchmarks).

    python scripts/make_demo_data.py --out data/demo
    python scripts/make_demo_data.py --out /tmp/gld100k --num_images 100000 --workers 2
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags

from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset

_DEFAULTS = SyntheticConfig()
_OUT = flags.DEFINE_string("out", "data/demo", "Output folder.")
_NUM_LANDMARKS = flags.DEFINE_integer("num_landmarks", _DEFAULTS.num_landmarks,
                                      "Train landmarks.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "About this many images in all (sets "
                                   "--num_landmarks).")
_SIZE = flags.DEFINE_integer("size", _DEFAULTS.size, "Long side of the images (px).")
_TRAIN_IMAGES_MEAN = flags.DEFINE_float("train_images_mean", _DEFAULTS.train_images_mean,
                                        "Mean train images per landmark.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of everything.")
_CORRUPT = flags.DEFINE_bool("corrupt", True, "Write the few corrupt files (--nocorrupt: none).")
_WORKERS = flags.DEFINE_integer("workers", min(4, os.cpu_count() or 1), "Rendering processes.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = SyntheticConfig(num_landmarks=_NUM_LANDMARKS.value, size=_SIZE.value, seed=_SEED.value,
                          train_images_mean=_TRAIN_IMAGES_MEAN.value, corrupt=_CORRUPT.value)
    if _NUM_IMAGES.value is not None:
        n = max(4, round(_NUM_IMAGES.value / cfg.images_per_landmark()))
        cfg = dataclasses.replace(cfg, num_landmarks=n)
    t0 = time.perf_counter()
    manifest = make_dataset(_OUT.value, cfg, workers=_WORKERS.value, progress=True)
    n = sum(manifest["images"].values())
    print(f"wrote {n:,} images ({json.dumps(manifest['images'])}) of "
          f"{manifest['landmarks']['train']:,} train landmarks to {_OUT.value} in "
          f"{time.perf_counter() - t0:.1f} s; corrupt files: {len(manifest['corrupt'])}")


if __name__ == "__main__":
    app.run(main)
