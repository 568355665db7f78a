"""Export a checkpoint's embedding for serving (jax.export, CPU + CUDA, symbolic batch size).

  python scripts/export.py --checkpoint CKPT --out exported/ --size 512 \
      [--scales 0.707,1,1.414] [--flip] [--dtype bfloat16]

Writes OUT/embedding.jax_export (the function: (B, S, S, 3) uint8 RGB -> (B, D) float32
L2-normalised, with the normalisation and the test-time views inside), OUT/weights.safetensors
and OUT/metadata.json. Serve it with ``lmr_jax.serving.load(OUT)``, which needs no model code;
see docs/serving.md (compatibility window, re-exporting).
"""

import json
import os

from absl import app, flags

_CKPT = flags.DEFINE_string("checkpoint", None, "Model checkpoint (lmr_jax.models.saved_model).",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "Artefact folder to write.", required=True)
_SIZE = flags.DEFINE_integer("size", 384, "Input side in pixels (images are S x S).")
_SCALES = flags.DEFINE_list("scales", ["1"], "Test-time scales inside the function; "
                            "0.707,1,1.414 is the reference's multi-scale.")
_FLIP = flags.DEFINE_bool("flip", False, "Also embed the horizontal mirror of every view.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"], "jax.export lowering platforms.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.")


def main(argv):
    del argv
    from lmr_jax.models.saved_model import load_model
    from lmr_jax.serving.export import export_embedding

    model, _, meta = load_model(_CKPT.value, dtype=_DTYPE.value)
    model_info = {"arch": meta["arch"], "model_kwargs": meta["model_kwargs"],
                  "checkpoint": os.path.abspath(_CKPT.value)}
    metadata = export_embedding(model, _OUT.value, size=_SIZE.value,
                                scales=[float(s) for s in _SCALES.value], flip=_FLIP.value,
                                compute_dtype=_DTYPE.value, platforms=_PLATFORMS.value,
                                model_info=model_info, overwrite=_OVERWRITE.value)
    print(json.dumps({"out": os.path.abspath(_OUT.value), **metadata}, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
