"""Exported-artefact embedding vs the in-process path: images per second on this machine.

  python -m benchmarks.serving --arch resnet50 --size 224 --batch_size 8

Random weights. The exported path takes uint8 images (normalisation inside); the in-process
path is what extraction runs: the host LUT normalisation of EvalPreprocess, then make_embed_fn
(also timed on images normalised beforehand, to separate the host normalisation).
Both are timed after one warm-up call, as the median of --repeats timed loops of --steps calls.
"""

import json
import statistics
import tempfile
import time

from absl import app, flags

_ARCH = flags.DEFINE_string("arch", "resnet50", "Registered model (random weights).")
_SIZE = flags.DEFINE_integer("size", 224, "Input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_SCALES = flags.DEFINE_list("scales", ["1"], "Test-time scales.")
_STEPS = flags.DEFINE_integer("steps", 5, "Calls per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed loops (the median is reported).")


def _images_per_s(fn, batch: int) -> float:
    fn().block_until_ready()
    rates = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            out = fn()
        out.block_until_ready()
        rates.append(batch * _STEPS.value / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv):
    del argv
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from lmr_jax import serving
    from lmr_jax.data.augment import EvalPreprocess, default_eval_preprocess_config, normalize
    from lmr_jax.models import create
    from lmr_jax.retrieval.embedding import make_embed_fn
    from lmr_jax.serving.export import export_embedding

    scales = [float(s) for s in _SCALES.value]
    model = create(_ARCH.value, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(
        0, 256, (_BATCH.value, _SIZE.value, _SIZE.value, 3), dtype=np.uint8)
    lut = EvalPreprocess(default_eval_preprocess_config(_SIZE.value)).lut
    embed = make_embed_fn(model, Mesh(np.array(jax.devices()[:1]), ("data",)), scales=scales)
    in_process = _images_per_s(
        lambda: embed(np.stack([normalize(im, lut) for im in images])), _BATCH.value)
    normalised = np.stack([normalize(im, lut) for im in images])
    in_process_prenormalised = _images_per_s(lambda: embed(normalised), _BATCH.value)
    with tempfile.TemporaryDirectory() as tmp:
        export_embedding(model, f"{tmp}/artefact", size=_SIZE.value, scales=scales,
                         platforms=("cpu", "cuda"))
        served = serving.load(f"{tmp}/artefact")
        exported = _images_per_s(lambda: served(images), _BATCH.value)
        diff = float(np.abs(np.asarray(served(images)) - np.asarray(
            embed(np.stack([normalize(im, lut) for im in images])))).max())
    print(json.dumps({"arch": _ARCH.value, "size": _SIZE.value, "batch_size": _BATCH.value,
                      "scales": scales, "backend": jax.default_backend(),
                      "in_process_img_s": round(in_process, 2),
                      "in_process_prenormalised_img_s": round(in_process_prenormalised, 2),
                      "exported_img_s": round(exported, 2), "max_abs_diff": diff}))


if __name__ == "__main__":
    app.run(main)
