"""Single-image inference the way Baidu's GLR2019 tools work, for any saved model.

  python scripts/infer.py similarity --checkpoint weights/res152_arcmargin a.jpg b.jpg c.jpg
  python scripts/infer.py classify --checkpoint weights/res152_softmax_v2 --top_k 5 a.jpg

``similarity`` embeds the images and prints the cosine similarity of the first against each
other one (Baidu's ``test_retrieval``; Baidu's tool clipped it to [0, 1], this prints the
plain cosine). ``classify`` prints the top-k classes of a softmax classifier (``baidu_softmax_v1``
/ ``_v2``) with their probabilities (Baidu's ``test_cls``), as GLDv2 landmark ids when a label
table (``label,landmark_id,country``; --labels) is given, else as class indices.

The preprocessing follows the checkpoint (its metadata, no flag to remember): Baidu models
(heads ``baidu_*``) get Baidu's (lmr_jax.data.baidu_preprocess: retrieval short side 448, 555
for Inception-v4, floored to multiples of 32, Lanczos; classification 224 with a centre crop),
lmr_jax models lmr_jax's evaluation preprocessing at the size they were trained at
(``image_size`` in the metadata of a trainer export; 384, the evaluation default, for a
checkpoint without it). --size overrides either.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

MODES = ("similarity", "classify")

_CKPT = flags.DEFINE_string("checkpoint", None, "Saved model directory (lmr_jax format; convert "
                            "Paddle or PyTorch weights with scripts/convert_weights.py).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "classify: classes to print.")
_LABELS = flags.DEFINE_string("labels", None, "classify: label table CSV mapping class indices "
                              "to GLDv2 landmark ids (label,landmark_id,country).")
_SIZE = flags.DEFINE_integer("size", None, "Override the preprocessing size (Baidu retrieval: "
                             "short side; lmr_jax: square side; classify: crop).")
flags.mark_flag_as_required("checkpoint")


def read_bgr(path: str) -> np.ndarray:
    """The image file as OpenCV decodes it: (H, W, 3) uint8 BGR."""
    from lmr_jax.data import augment

    try:
        with open(path, "rb") as f:
            return augment.decode_image(f.read())
    except augment.ImageDecodeError as e:
        raise app.UsageError(f"{path}: {e}") from None


def embedder(model, meta: dict):
    """``embed(path) -> (D,) raw embedding`` with the checkpoint's preprocessing."""
    from lmr_jax.data import augment, baidu_preprocess

    head = meta["model_kwargs"].get("head", "bn_neck")
    if head == "baidu_embedding":
        size = _SIZE.value or baidu_preprocess.retrieval_size(meta["arch"])
        return lambda path: np.asarray(model(baidu_preprocess.retrieval_preprocess(
            read_bgr(path), size)[None]))[0]
    if head.startswith("baidu_softmax"):
        raise app.UsageError(f"{_CKPT.value}: a classifier ({head}); use 'classify'")
    size = _SIZE.value or int(meta.get("image_size") or augment.default_eval_preprocess_config()
                              .size)
    preprocess = augment.EvalPreprocess(augment.default_eval_preprocess_config(size))

    def embed(path: str) -> np.ndarray:
        with open(path, "rb") as f:
            record = preprocess({"image": f.read(), "index": 0})
        return np.asarray(model(record["image"][None]))[0]

    return embed


def similarity(model, meta: dict, paths: list[str]) -> None:
    if len(paths) < 2:
        raise app.UsageError("similarity takes two or more images: the first is compared with "
                             "each other one")
    embed = embedder(model, meta)
    feats = [embed(p).astype(np.float64) for p in paths]
    first = feats[0] / np.linalg.norm(feats[0])
    for path, f in zip(paths[1:], feats[1:], strict=True):
        print(f"{paths[0]}\t{path}\t{float(first @ (f / np.linalg.norm(f))):.6f}")


def classify(model, meta: dict, paths: list[str]) -> None:
    from lmr_jax.data import baidu_preprocess
    from lmr_jax.data.lists import LabelTable, LabelTableError

    head = meta["model_kwargs"].get("head", "bn_neck")
    if not head.startswith("baidu_softmax"):
        raise app.UsageError(f"{_CKPT.value}: head {head!r} is not a softmax classifier "
                             "(baidu_softmax_v1 / baidu_softmax_v2)")
    table = None
    if _LABELS.value:
        try:
            table = LabelTable.load(_LABELS.value)
        except LabelTableError as e:
            raise app.UsageError(str(e)) from None
        if len(table) != model.num_classes:
            raise app.UsageError(f"{_LABELS.value}: {len(table)} labels for a classifier of "
                                 f"{model.num_classes} classes")
    size = _SIZE.value or baidu_preprocess.CLASSIFICATION_SIZE
    for path in paths:
        x = baidu_preprocess.classification_preprocess(read_bgr(path), size)
        prob = np.asarray(model.probabilities(x[None]))[0]
        top = np.argsort(-prob, kind="stable")[:max(_TOP_K.value, 1)]
        ids = table.landmark_of(top) if table is not None else top
        for rank, (cls, lid) in enumerate(zip(top, ids, strict=True), 1):
            print(f"{path}\t{rank}\t{int(lid)}\t{float(prob[cls]):.6f}")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in MODES:
        raise app.UsageError(f"usage: infer.py {{{'|'.join(MODES)}}} --checkpoint C IMAGE...")
    from lmr_jax.models.saved_model import ModelCheckpointError, load_model

    try:
        model, _, meta = load_model(_CKPT.value)
    except ModelCheckpointError as e:
        raise app.UsageError(str(e)) from None
    model.eval()
    (similarity if argv[1] == "similarity" else classify)(model, meta, argv[2:])


if __name__ == "__main__":
    app.run(main)
