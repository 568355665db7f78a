"""Building blocks of the training configurations in ``configs/*.py``.

A training config is an ``ml_collections.ConfigDict``; every field can be overridden on the
command line (``--config.stage1.base_lr=0.01``, ``--config.stages=3,4``). Its fields:

* ``stages``: which stages to run, e.g. ``"1,2,3,4"`` or ``"3,4"``; stage k is ``stage<k>``.
* ``stage<k>``: one training stage (:func:`stage`).
* ``model``: the model architecture, the fields of :class:`lmr_jax.models.ModelConfig`
  (``arch`` = backbone name, head settings).
* ``init_checkpoint``: model checkpoint the first stage starts from (an ImageNet backbone
  converted with ``scripts/convert_weights.py``); empty = random initialisation.
* ``loss``: classification loss: ``name`` (:data:`lmr_jax.train.losses.LOSSES`) and a
  sub-dict of options per loss (``loss.<name>``); the scale and margin are per stage.
* ``classifier``: ``name`` (``cosine``: a cosine classifier feeds the loss; ``none``: the loss
  takes the model's output) and the cosine classifier's ``num_subcenters``.
* ``optim``: SGD momentum, bias group and schedule factors (:mod:`lmr_jax.train.optim`).
* ``precision``: ``auto`` (float32 on CPU, bfloat16 on GPU/TPU), ``float32``, ``bfloat16`` or
  ``float16`` (dynamic loss scaling, ``loss_scale``).
* ``bn_mode``: ``sync`` (BatchNorm statistics over the global batch) or ``per_device``.
* ``data``: prepared data folder (``dir`` with ``lists/<list>.npz`` and ``store/``), the
  input pipeline settings (``train``, see ``lmr_jax.data.pipeline.default_train_config``).
* ``checkpoint``, ``log``, ``eval``: checkpoint period and retention, logging period,
  optional periodic retrieval evaluation (mAP@100 on a ``ValidationSet``).
"""

from __future__ import annotations

import json

import ml_collections

from lmr_jax.data import pipeline
from lmr_jax.models.model_config import ModelConfig


def stage(name: str, image_list: str, *, image_size: int, epochs: float, base_lr: float,
          batch_size: int, warmup_epochs: float, weight_decay: float,
          weight_decay_bias: float | None = None, sampler: str = "softmax",
          logit_scale: float = 30.0, margin: float = 0.3,
          init_from: str = "") -> ml_collections.ConfigDict:
    """One training stage.

    Args:
      name: a short name (``clean``, ``c2x``, ``full``, ``all``).
      image_list: list name (``<data.dir>/lists/<name>.npz``) or a path ending in ``.npz``.
      image_size: training resolution (square, px).
      epochs: epochs (the cosine period T).
      base_lr: base learning rate (biases get ``optim.bias_lr_factor`` times it).
      batch_size: global batch over all devices and processes.
      warmup_epochs: linear warmup length (0: none).
      weight_decay: coupled L2 decay of the weights; ``weight_decay_bias`` of the biases
        (default: the same).
      sampler: ``softmax`` (shuffle), ``pk`` or ``continent`` (continent-aware).
      logit_scale, margin: s and m of the ArcFace / CosFace loss.
      init_from: model checkpoint to start from instead of the previous stage's export.
    """
    return ml_collections.ConfigDict({
        "name": name,
        "list": image_list,
        "image_size": int(image_size),
        "epochs": float(epochs),
        "base_lr": float(base_lr),
        "batch_size": int(batch_size),
        "warmup_epochs": float(warmup_epochs),
        "weight_decay": float(weight_decay),
        "weight_decay_bias": float(weight_decay if weight_decay_bias is None
                                   else weight_decay_bias),
        "sampler": sampler,
        "logit_scale": float(logit_scale),
        "margin": float(margin),
        "init_from": init_from,
    })


def base_config(arch: str) -> ml_collections.ConfigDict:
    """Defaults shared by every training config (reference values where they exist)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = "1"
    c.init_checkpoint = ""
    c.precision = "auto"
    c.bn_mode = "sync"
    c.model = ml_collections.ConfigDict(ModelConfig(arch=arch).to_dict())
    # The selected loss (lmr_jax.train.losses.LOSSES) and each loss's options; the logit
    # scale and the margin are per stage (stage<k>.logit_scale, stage<k>.margin).
    c.loss = ml_collections.ConfigDict({
        "name": "arcface",           # arcface | cosface | subcenter_arcface | softmax |
                                     # arcmargin | npairs | linear_softmax
        "arcface": {"label_smoothing": 0.0},
        "cosface": {"label_smoothing": 0.0},
        "subcenter_arcface": {
            "dynamic_margin_min": 0.05,  # margin of the most frequent class
            "dynamic_margin_range": 0.45,
            "label_smoothing": 0.0,
        },
        "softmax": {"label_smoothing": 0.0},
        # Baidu GLR2019 losses (scale and margin of arcmargin: the stage's).
        "arcmargin": {"easy_margin": False},
        "npairs": {"reg_lambda": 0.01},
        "linear_softmax": {"label_smoothing": 0.0},
    })
    c.classifier = ml_collections.ConfigDict({
        # cosine: a CosineClassifier between the model and the loss (arcface, cosface,
        # subcenter_arcface, softmax, arcmargin); none: the loss takes the model's output
        # (npairs: embeddings; linear_softmax: a classifier head's logits).
        "name": "cosine",
        "num_subcenters": 1,         # classifier sub-centres (3 for sub-center ArcFace)
    })
    c.loss_scale = ml_collections.ConfigDict({"init": 2.0**16, "growth_interval": 2000})
    c.optim = ml_collections.ConfigDict({
        "momentum": 0.9,
        "bias_lr_factor": 2.0,       # reference BIAS_LR_FACTOR (GLDv2_base.yml)
        "warmup_factor": 0.01,       # warmup starts at 0.01 * base_lr
        "min_lr_factor": 0.002,      # cosine floor 0.002 * base_lr
        "frozen": (),                # substrings of parameter paths never updated
    })
    c.data = ml_collections.ConfigDict({
        "dir": "data/gldv2_prepared",
        "images": "",                # store or image folder; default <dir>/store
        "train": pipeline.default_train_config(),
    })
    # data.train.max_bad_fraction: share of a stage's samples that may be unreadable images,
    # skipped (lmr_jax.data.pipeline) and listed in <workdir>/bad_images.tsv; past it, an error.
    c.data.train.num_workers = 8
    c.data.train.read_threads = 4
    c.checkpoint = ml_collections.ConfigDict({
        "every_steps": 1000, "max_to_keep": 3, "async_save": True,
    })
    c.log = ml_collections.ConfigDict({"every_steps": 50, "tensorboard": True})
    c.eval = ml_collections.ConfigDict({
        "every_epochs": 0,           # 0: none; else every N epochs and at each stage end
        "at_start": False,           # also evaluate the initial model of the first stage
        "validation": "",            # ValidationSet .npz; default <data.dir>/validation.npz
        "images": "",                # store holding its images; default the training store
        "image_size": 0,             # 0: the stage's training size
        "batch_size": 32,            # per process
        "scales": (1.0,),            # test-time views; the reference's multi-scale: 0.707,1,1.414
        "flip": False,               # lmr-jax extra: also embed mirrored views (not the reference)
    })
    return c


def reference_four_stages(c: ml_collections.ConfigDict, *, size_low: int, batch_low: tuple[int, int],
                          batch_high: int, epochs_high: float, high_wd: float = 1e-5,
                          high_scale: float = 30.0, high_margin: float = 0.3,
                          num_gpus: int = 8) -> None:
    """Adds the reference's four stages (clean -> c2x -> full -> all) to ``c``.

    The reference's ``IMS_PER_BATCH`` is the batch of each of its 8 DDP processes (one
    ``DataLoader(batch_size=IMS_PER_BATCH)`` per GPU), so the global batch here is
    ``num_gpus * IMS_PER_BATCH``; ``batch_low`` are the per-GPU batches of stages 1 and 2,
    ``batch_high`` that of stages 3 and 4.
    """
    c.stages = "1,2,3,4"
    c.stage1 = stage("clean", "clean", image_size=size_low, epochs=10, base_lr=0.08,
                     batch_size=num_gpus * batch_low[0], warmup_epochs=1, weight_decay=5e-4)
    c.stage2 = stage("c2x", "c2x", image_size=size_low, epochs=6, base_lr=0.008,
                     batch_size=num_gpus * batch_low[1], warmup_epochs=0, weight_decay=5e-4)
    high = dict(image_size=512, epochs=epochs_high, base_lr=0.0008,
                batch_size=num_gpus * batch_high, warmup_epochs=0, weight_decay=high_wd,
                logit_scale=high_scale, margin=high_margin)
    c.stage3 = stage("full", "full", **high)
    c.stage4 = stage("all", "all", sampler="continent", **high)


def baidu_config(head: str, loss: str) -> ml_collections.ConfigDict:
    """The base of Baidu's GLR2019 ResNet-152-vd recipes (``configs/baidu/res152_*.py``).

    Known from Baidu's metric-learning code (docs/baidu.md, Training): ResNet-152-vd at output
    stride 32 (``last_stride`` 2), Momentum 0.9 SGD with L2 decay 1e-4 on every parameter
    (Paddle has no separate bias learning rate: ``bias_lr_factor`` 1). Not published, and
    chosen here: the image list (GLDv2 ``full``, in the configs), the augmentation (lmr_jax's
    training augmentation) and the schedule (lmr_jax's warmup + cosine decay to 0 in place of
    Baidu's piecewise steps, whose GLDv2 values are unknown).

    Args:
      head: ``baidu_embedding`` or a classifier head (``baidu_softmax_v1`` / ``_v2``).
      loss: a registered loss (``arcmargin``, ``npairs``, ``linear_softmax``).
    """
    c = base_config("resnet152_vd")
    c.model.last_stride = 2
    c.model.head = head
    c.loss.name = loss
    c.optim.bias_lr_factor = 1.0
    c.optim.min_lr_factor = 0.0
    return c
# Keys that do not change what a stage computes: they may differ between a run and its resumption.
# ``stages`` selects which stages run now; how often to log, checkpoint and evaluate, how many
# checkpoints to keep, the evaluation settings, the input pipeline's parallelism and the bad-image
# cap are operational too. Everything else (model, data, optimiser, schedule, stages' settings,
# loss, precision, seed, initial checkpoint) changes the result.
OPERATIONAL_KEYS: tuple[str, ...] = (
    "stages", "log", "checkpoint", "eval", "data.train.num_workers", "data.train.read_threads",
    "data.train.worker_buffer_size", "data.train.max_bad_fraction",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples become lists (as in JSON)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = list(value) if isinstance(value, tuple) else value
    return out


def result_config(config: ml_collections.ConfigDict | dict, stage: int) -> dict[str, object]:
    """The flattened settings that determine stage ``stage``'s result: every key except the
    :data:`OPERATIONAL_KEYS` and the settings of later stages (``stage<j>``, j > ``stage``)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    flat = flatten(tree)

    def kept(key: str) -> bool:
        if any(key == k or key.startswith(k + ".") for k in OPERATIONAL_KEYS):
            return False
        head = key.split(".", 1)[0]
        return not (head.startswith("stage") and head[5:].isdigit() and int(head[5:]) > stage)
    return json.loads(json.dumps({k: v for k, v in flat.items() if kept(k)}, default=str))


def config_differences(old: dict[str, object], new: dict[str, object]
                       ) -> dict[str, tuple[object, object]]:
    """``{key: (old value, new value)}`` of the keys whose values differ (missing: None)."""
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}
