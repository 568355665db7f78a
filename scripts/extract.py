"""Embed a list of images with a checkpoint: L2-normalised features + ids, resumable.

  python scripts/extract.py --checkpoint CKPT --list data/gldv2/index.npz --images STORE \
      --out features/index --size 512 --dtype bfloat16 [--scales 0.707,1,1.414] [--flip]
  python scripts/extract.py --checkpoint CKPT --folder my_photos/ --out features/photos

Images are decoded and resized to SIZE x SIZE, normalised and embedded by the one embedding
path of lmr_jax.retrieval.embedding (the same as the validation during training).
Writes OUT/features.npy (float16 by default, memory-mappable), OUT/ids.txt, OUT/failed.txt
(images that could not be read, with the reason) and OUT/meta.json; more failures than
--max_bad_fraction (default 0.1 %) is an error naming the first reasons. Run it again after a kill
and it continues with the first missing shard; a finished folder is left as it is.
"""

import json
import os
from pathlib import Path

from absl import app, flags, logging

_CKPT = flags.DEFINE_string("checkpoint", None, "Model checkpoint (lmr_jax.models.saved_model).")
_ARCH = flags.DEFINE_string("arch", None, "Without --checkpoint: a registered model with "
                            "random weights (timing and demos only).")
_LIST = flags.DEFINE_string("list", None, "ImageList .npz to embed.")
_IMAGES = flags.DEFINE_string("images", None, "Prepared store or image root of --list "
                              "(omit when the list has absolute paths).")
_FOLDER = flags.DEFINE_string("folder", None, "Embed every image file of this folder instead.")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SIZE = flags.DEFINE_integer("size", 384, "Input side in pixels.")
_SCALES = flags.DEFINE_list("scales", ["1"], "Test-time scales; 0.707,1,1.414 is the reference's "
                            "multi-scale (views of floor(S*s/16)*16 px, raw outputs summed).")
_FLIP = flags.DEFINE_bool("flip", False, "Also embed the horizontal mirror of every view (an "
                          "lmr-jax extra; the reference does not flip).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_OUT_DTYPE = flags.DEFINE_enum("out_dtype", "float16", ["float16", "float32"], "Stored dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step on this host.")
_SHARD = flags.DEFINE_integer("shard_size", 4096, "Images per resumable shard.")
_THREADS = flags.DEFINE_integer("read_threads", 4, "Image decoding threads.")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.001, "Fail when more than this share of "
                              "the images cannot be read or decoded (they are listed in "
                              "OUT/failed.txt either way).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port for multi-host runs.")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Hosts in a multi-host run.")
_PROC = flags.DEFINE_integer("process_id", 0, "This host's index in a multi-host run.")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp

    if _COORD.value:
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PROC.value)
    from lmr_jax.data.lists import ImageList
    from lmr_jax.data.store import open_source
    from lmr_jax.retrieval.extract import ExtractOptions, extract

    if bool(_LIST.value) == bool(_FOLDER.value):
        raise app.UsageError("give exactly one of --list and --folder")
    if bool(_CKPT.value) == bool(_ARCH.value):
        raise app.UsageError("give exactly one of --checkpoint and --arch")
    dtype = jnp.dtype(_DTYPE.value)
    if _CKPT.value:
        from lmr_jax.models.saved_model import load_model

        model, _, meta = load_model(_CKPT.value, dtype=dtype)
        run_config = {"checkpoint": os.path.abspath(_CKPT.value), "arch": meta["arch"]}
    else:
        from flax import nnx

        from lmr_jax.models import create

        logging.warning("--arch %s: random weights, the features mean nothing", _ARCH.value)
        model = create(_ARCH.value, dtype=dtype, rngs=nnx.Rngs(0))
        run_config = {"arch": _ARCH.value, "random_weights": True}
    if _FOLDER.value:
        files = sorted(p for p in Path(_FOLDER.value).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise app.UsageError(f"{_FOLDER.value}: no image files")
        image_list = ImageList.from_files([str(p.resolve()) for p in files], name="folder")
        source = open_source(image_list, None)
    else:
        image_list = ImageList.load(_LIST.value)
        source = open_source(image_list, _IMAGES.value)
    run_config["list"] = os.path.abspath(_LIST.value or _FOLDER.value)
    options = ExtractOptions(size=_SIZE.value, scales=[float(s) for s in _SCALES.value],
                             flip=_FLIP.value, dtype=_DTYPE.value, out_dtype=_OUT_DTYPE.value,
                             batch_size=_BATCH.value, shard_size=_SHARD.value,
                             read_threads=_THREADS.value, max_bad_fraction=_MAX_BAD.value)
    meta = extract(model, source, image_list.ids, _OUT.value, options=options,
                   run_config=run_config)
    if meta is not None:
        summary = {k: v for k, v in meta.items() if k != "config"}
        summary["local_devices"] = jax.local_device_count()
        print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
