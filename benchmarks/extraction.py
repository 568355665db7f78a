"""Extraction speed: the lmr_jax model forward (and the whole extract()) against PyTorch.

    python -m benchmarks.extraction --arch resnet50 --size 384 --batch 8 [--folder JPEGS]

The PyTorch side is the independent reference model of the tests (tests/torch_reference),
channels_last, float32 and, on CUDA, float16/bfloat16 autocast
(:func:`benchmarks.torch_side.torch_forward_images_per_second`). Prints one JSON object.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from benchmarks.timing import images_per_second


def bench_jax_forward(arch: str = "resnet50", batch: int = 8, size: int = 384,
                      dtype: str = "float32", repeats: int = 10) -> float:
    """Images/s of the jitted lmr_jax model forward (eval mode) on the default JAX device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax.models import create

    model = create(arch, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.dtype(dtype))
    return images_per_second(lambda: fwd(state, x).block_until_ready(), batch, repeats)


def bench_extract_end_to_end(folder: str, out_dir: str, arch: str = "resnet50",
                             size: int = 384, batch: int = 8, dtype: str = "float32") -> dict:
    """Images/s of :func:`lmr_jax.retrieval.extract.extract` (decode + forward + write) over
    every file of ``folder``."""
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax.data.lists import ImageList
    from lmr_jax.data.store import open_source
    from lmr_jax.models import create
    from lmr_jax.retrieval import extract

    files = sorted(str(p) for p in Path(folder).iterdir())
    image_list = ImageList.from_files(files)
    model = create(arch, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    options = extract.ExtractOptions(size=size, batch_size=batch, dtype=dtype,
                                     shard_size=len(files))
    t0 = time.perf_counter()
    extract.extract(model, open_source(image_list, None), image_list.ids, out_dir,
                    options=options, progress=False)
    dt = time.perf_counter() - t0
    return {"images": len(files), "seconds": round(dt, 2), "img_s": round(len(files) / dt, 2)}


def main(argv: list[str]) -> None:
    del argv
    import jax

    from benchmarks.torch_side import torch_forward_images_per_second

    f = flags.FLAGS
    res = {"arch": f.arch, "size": f.size, "batch": f.batch,
           "jax_backend": jax.default_backend()}
    for dt in ("float32", "bfloat16"):
        res[f"jax_{dt}_img_s"] = round(bench_jax_forward(f.arch, f.batch, f.size, dt,
                                                         f.repeats), 2)
    res.update(torch_forward_images_per_second(f.arch, f.batch, f.size, f.repeats))
    if f.folder:
        with tempfile.TemporaryDirectory() as tmp:
            res["extract_end_to_end"] = bench_extract_end_to_end(f.folder, tmp, f.arch, f.size,
                                                                 f.batch)
    print(json.dumps(res, sort_keys=True, default=float))


if __name__ == "__main__":
    flags.DEFINE_enum("arch", "resnet50", ["resnet50", "resnet101_ibn_a", "resnext101_ibn_a",
                                           "se_resnet101_ibn_a"], "Backbone.")
    flags.DEFINE_integer("size", 384, "Input side.")
    flags.DEFINE_integer("batch", 8, "Batch size.")
    flags.DEFINE_integer("repeats", 10, "Timed batches (median reported).")
    flags.DEFINE_string("folder", None, "Images for the end-to-end extract() timing.")
    app.run(main)
