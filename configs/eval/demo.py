"""Evaluation of the demo model on the synthetic dataset (what `make demo` runs).

  python scripts/eval.py --config configs/eval/demo.py:runs/demo/train/stage4/export \
      --config.workdir=runs/demo/eval

The text after ``:`` is the model checkpoint to evaluate (default: the last demo stage's export).

Queries and index come from the prepared synthetic validation set; the reference set of the
Landmark-Country re-ranking is the labelled ``full`` training list (as on GLDv2). Every
re-ranking is run and reported; the submission uses the Landmark-Country re-ranking.
"""

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "gldv2_val", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gldv2_val.py"))
gldv2_val = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gldv2_val)


def get_config(checkpoint: str | None = None) -> ml_collections.ConfigDict:
    c = gldv2_val.get_config()
    c.workdir = "runs/demo/eval"
    c.validation = "data/demo_prepared/validation.npz"
    c.images = "data/demo_prepared/store"
    c.reference.list = "data/demo_prepared/lists/full.npz"
    c.models = [gldv2_val.model("demo", size=64, checkpoint=checkpoint or "runs/demo/train/stage4/export")]
    c.models[0].dtype = "float32"
    c.models[0].batch_size = 64
    c.rerank = ("off", "landmark_country", "kreciprocal")
    c.submission_rerank = "landmark_country"
    return c
