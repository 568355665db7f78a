"""Extraction speed: lmr_jax model forward (and the whole extract()) against PyTorch.

  python scripts/bench_extract.py --arch resnet50 --size 384 --batch 8 [--folder JPEGS]

The PyTorch side is the independent reference model of the tests (tests/torch_reference),
channels_last, float32 and, on CUDA, float16/bfloat16 autocast. Prints one JSON object.
"""

import json
import sys
import tempfile
from pathlib import Path

from absl import app, flags

_ARCH = flags.DEFINE_enum("arch", "resnet50", ["resnet50", "resnet101_ibn_a", "resnext101_ibn_a",
                                               "se_resnet101_ibn_a"], "Backbone.")
_SIZE = flags.DEFINE_integer("size", 384, "Input side.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed batches (median reported).")
_FOLDER = flags.DEFINE_string("folder", None, "Images for the end-to-end extract() timing.")

REPO = Path(__file__).resolve().parents[1]


def torch_images_per_second(arch, batch, size, repeats):
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from torch_reference import common
    from torch_reference import resnet as torch_resnet

    from lmr_jax.retrieval.bench import images_per_second

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = common.RetrievalHead(getattr(torch_resnet, arch)(last_stride=1)).to(dev).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    modes = {"float32": None}
    if dev == "cuda":
        modes.update({"float16_autocast": torch.float16, "bfloat16_autocast": torch.bfloat16})
    out = {"torch_device": dev}
    for name, dt in modes.items():
        def step(dt=dt):
            with torch.no_grad(), torch.autocast(dev, dtype=dt or torch.float32,
                                                 enabled=dt is not None):
                model(x)
            if dev == "cuda":
                torch.cuda.synchronize()
        out[f"torch_{name}_img_s"] = round(images_per_second(step, batch, repeats), 2)
    return out


def main(argv):
    del argv
    import jax

    from lmr_jax.retrieval import bench

    res = {"arch": _ARCH.value, "size": _SIZE.value, "batch": _BATCH.value,
           "jax_backend": jax.default_backend()}
    for dt in ("float32", "bfloat16"):
        res[f"jax_{dt}_img_s"] = round(bench.bench_jax_forward(
            _ARCH.value, _BATCH.value, _SIZE.value, dt, _REPEATS.value), 2)
    res.update(torch_images_per_second(_ARCH.value, _BATCH.value, _SIZE.value, _REPEATS.value))
    if _FOLDER.value:
        with tempfile.TemporaryDirectory() as tmp:
            res["extract_end_to_end"] = bench.bench_extract_end_to_end(
                _FOLDER.value, tmp, _ARCH.value, _SIZE.value, _BATCH.value)
    print(json.dumps(res, sort_keys=True, default=float))


if __name__ == "__main__":
    app.run(main)
