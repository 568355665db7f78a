"""Staged training (docs/reference.md, Recipe): each stage starts from the previous stage's weights.

``train(config, workdir)`` runs the stages named by ``config.stages`` (e.g. ``"1,2,3,4"``) in
order. Stage k is ``config.stage<k>``; its outputs live in ``<workdir>/stage<k>/``:

* ``checkpoints/<step>/``: orbax training checkpoints (every ``checkpoint.every_steps``
  iterations, at every epoch end and at the stage end; the last ``checkpoint.max_to_keep``
  are kept), from which a re-run of the same command resumes mid-stage;
* ``export/``: the stage's final model and classifier
  (:func:`lmr_jax.models.saved_model.save_model`), written when the stage is complete. A stage
  whose export exists is skipped on a re-run.

Config drift: checkpoints and exports record the settings that determine their stage's result
(:func:`lmr_jax.train.config.result_config`: everything but logging, checkpointing, evaluation,
pipeline parallelism and later stages); ``config.json`` is compared as well (up to the last
stage started in the workdir) before it is replaced. Resuming a stage, or re-running a finished
one, with any of them changed is a :class:`ConfigChanged` error listing the differing keys, unless
``allow_config_change`` (``scripts/train.py --allow_config_change``) is given: then a resumed
stage continues with the new settings and a finished stage is kept as it is (with a warning).

Bad images (direct-file mode): an image that cannot be read or decoded is skipped (the
pipeline's zero image with label -1, see :mod:`lmr_jax.data.pipeline`), counted (``bad_images``
in metrics.jsonl and the progress bar) and listed in ``bad_images.tsv``
(:mod:`lmr_jax.train.bad_images`); more than ``data.train.max_bad_fraction`` of a stage's
samples (steps x batch) is a :class:`TooManyBadImages` error.

Stage 1 starts from ``config.init_checkpoint`` (an ImageNet backbone converted with
``scripts/convert_weights.py``; empty = random initialisation); stage k > 1 from
``<workdir>/stage<k-1>/export`` unless ``stage<k>.init_from`` names another model checkpoint.
When the new stage has more classes than the checkpoint's classifier, the first rows are kept
and the others initialised (81,313 -> 203,094 on GLDv2).

Written in the workdir as well: ``config.json`` (the resolved configuration), ``metrics.jsonl``
(rewound to the restored step on resume) and ``tensorboard/`` (see
:mod:`lmr_jax.train.metrics_logger`). A damaged latest checkpoint is named and skipped for the
previous one (:meth:`lmr_jax.train.train_checkpoints.Checkpointer.restore_latest`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmr_jax import models
from lmr_jax.data import pipeline, store
from lmr_jax.data.augment import decode_image
from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.models import heads, saved_model
from lmr_jax.retrieval import embedding
from lmr_jax.train import config as train_config
from lmr_jax.train import distributed, evaluation, losses, optim, precision
from lmr_jax.train.bad_images import BadImageLog
from lmr_jax.train.metrics_logger import MetricsLogger
from lmr_jax.train.state import TrainModule, create_train_state, grow_rows
from lmr_jax.train.step import make_train_step
from lmr_jax.train.train_checkpoints import Checkpointer

MAX_STAGES = 9
# config.classifier.name: what sits between the model and the loss (see lmr_jax.train.config).
CLASSIFIERS = ("cosine", "none")
# Logged steps are numbered stage * STAGE_STEP_OFFSET + step, increasing over the stages.
STAGE_STEP_OFFSET = 10_000_000


def global_step(stage: int, step: int) -> int:
    """A step number increasing over stages (TensorBoard, metrics.jsonl)."""
    return stage * STAGE_STEP_OFFSET + step


def stage_seed(config: ml_collections.ConfigDict, stage: int) -> int:
    """The seed of stage ``stage`` (data order, augmentation, initialisation): distinct per
    stage and per ``config.seed``."""
    return config.seed * 1000 + stage


@dataclasses.dataclass
class _RunningMetrics:
    """Loss and accuracy summed over the steps since the last log line, and the stage's first
    and last loss."""

    start_time: float
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None

    def add(self, loss: float, accuracy: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss
        self.loss_sum += loss
        self.accuracy_sum += accuracy
        self.steps += 1

    def restart(self) -> None:
        """Start a new logging window (the first and last loss are kept)."""
        self.loss_sum, self.accuracy_sum, self.steps = 0.0, 0.0, 0
        self.start_time = time.perf_counter()


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite."""


class ConfigChanged(ValueError):
    """A stage is resumed or re-run with settings that change its result."""


class TooManyBadImages(RuntimeError):
    """More than ``data.train.max_bad_fraction`` of a stage's samples could not be decoded."""


@dataclasses.dataclass
class StageSummary:
    """What one stage did (returned by :func:`train`, also written to metrics.jsonl)."""

    stage: int
    name: str
    steps: int
    steps_per_epoch: int
    num_classes: int
    first_loss: float | None
    last_loss: float | None
    skipped_steps: int
    export: str
    resumed_from: int | None
    seconds: float
    eval: dict[str, float] = dataclasses.field(default_factory=dict)


def parse_stages(config: ml_collections.ConfigDict) -> list[int]:
    """The stage numbers to run, from ``config.stages`` ("1,2,3,4", "3,4", "2" or an int)."""
    spec = config.stages
    items = [spec] if isinstance(spec, int) else [s for s in str(spec).replace(" ", "").split(",")
                                                  if s]
    try:
        stages = sorted({int(s) for s in items})
    except ValueError as e:
        raise ValueError(f"config.stages={spec!r}: expected stage numbers like '1,2,3,4'") from e
    if not stages:
        raise ValueError(f"config.stages={spec!r} selects no stage")
    for k in stages:
        if f"stage{k}" not in config:
            known = [s for s in range(1, MAX_STAGES + 1) if f"stage{s}" in config]
            raise ValueError(f"config.stages={spec!r}: there is no config.stage{k} "
                             f"(this config defines stages {known})")
    return stages


def stage_dir(workdir: str, k: int) -> str:
    return os.path.join(workdir, f"stage{k}")


def export_dir(workdir: str, k: int) -> str:
    return os.path.join(stage_dir(workdir, k), "export")


def list_path(config: ml_collections.ConfigDict, name: str) -> str:
    """An image list path: ``name`` itself if it ends with ``.npz``, else
    ``<data.dir>/lists/<name>.npz``."""
    if name.endswith(".npz"):
        return name
    return os.path.join(config.data.dir, "lists", f"{name}.npz")


def image_root(config: ml_collections.ConfigDict) -> str:
    """The prepared store (or image folder) holding the images: ``data.images`` or
    ``<data.dir>/store``."""
    return config.data.images or os.path.join(config.data.dir, "store")


def model_config(config: ml_collections.ConfigDict,
                 num_classes: int | None = None) -> models.ModelConfig:
    """The model architecture of a training config (its ``model`` sub-dict).

    A classifier head (one that takes ``num_classes``) left at ``num_classes`` 0 gets the
    stage list's ``num_classes``.
    """
    mc = models.ModelConfig.from_dict(config.model.to_dict(), where="config.model")
    if (num_classes is not None and mc.num_classes == 0
            and "num_classes" in heads.HEADS.accepted_kwargs(mc.head)):
        mc = dataclasses.replace(mc, num_classes=int(num_classes))
    return mc


def pipeline_config(config: ml_collections.ConfigDict, sc: ml_collections.ConfigDict,
                    k: int, dtype: str) -> ml_collections.ConfigDict:
    """The data pipeline settings of stage k: ``config.data.train`` with the stage's batch,
    sampler, image size and a per-stage seed."""
    pcfg = ml_collections.ConfigDict(config.data.train.to_dict())
    pcfg.global_batch_size = sc.batch_size
    pcfg.seed = stage_seed(config, k)
    pcfg.sampler.name = sc.sampler
    pcfg.augment.size = sc.image_size
    pcfg.augment.dtype = dtype
    return pcfg


def _load_init(path: str, config: ml_collections.ConfigDict, compute_dtype: Any,
               num_classes: int | None = None):
    """(model, classifier or None, meta) of a model checkpoint, checked against the config."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: model checkpoint not found")
    want = model_config(config, num_classes)
    model, classifier, meta = saved_model.load_model(path, dtype=compute_dtype, arch=want.arch)
    saved = saved_model.model_config_of(meta, where=path).to_dict()
    diff = {k: (v, want.to_dict()[k]) for k, v in saved.items() if v != want.to_dict()[k]}
    if diff:
        raise ValueError(f"{path}: model settings differ from config.model "
                         f"(checkpoint, config): {diff}")
    return model, classifier, meta


def build_module(config: ml_collections.ConfigDict, k: int, num_classes: int,
                 compute_dtype: Any, workdir: str) -> tuple[TrainModule, str]:
    """The stage-k model + classifier, initialised from the stage's starting checkpoint.

    Returns:
      (module in train mode, description of the initialisation).
    """
    sc = config[f"stage{k}"]
    if sc.init_from:
        src = sc.init_from
    elif k == min(s for s in range(1, MAX_STAGES + 1) if f"stage{s}" in config):
        src = config.init_checkpoint
    else:
        prev = max(s for s in range(1, k) if f"stage{s}" in config)
        src = export_dir(workdir, prev)
        if not os.path.isdir(src):
            raise FileNotFoundError(
                f"stage {k} starts from stage {prev}'s final model {src}, which does not exist: "
                f"run stage {prev} first (--config.stages={prev},{k}) or set "
                f"--config.stage{k}.init_from=<model checkpoint>")
    seed = stage_seed(config, k)
    cls_cfg = dict(num_subcenters=config.classifier.num_subcenters, dtype=jnp.float32)
    if src:
        model, old_cls, _ = _load_init(src, config, compute_dtype, num_classes)
        how = f"from {src}"
    else:
        model = models.create(model_config(config, num_classes), dtype=compute_dtype,
                              rngs=nnx.Rngs(seed))
        old_cls, how = None, "from random initialisation"
    if config.classifier.name not in CLASSIFIERS:
        raise ValueError(f"config.classifier.name {config.classifier.name!r}: expected one of "
                         f"{CLASSIFIERS}")
    classifier = (None if config.classifier.name == "none" else heads.CosineClassifier(
        config.model.embed_dim, num_classes, rngs=nnx.Rngs(seed + 1), **cls_cfg))
    if old_cls is not None and classifier is not None:
        if old_cls.num_subcenters != config.classifier.num_subcenters:
            raise ValueError(f"{src}: classifier has {old_cls.num_subcenters} sub-centres, "
                             f"config.classifier.num_subcenters is "
                             f"{config.classifier.num_subcenters}")
        if old_cls.num_classes > num_classes:
            raise ValueError(f"{src}: classifier has {old_cls.num_classes} classes, more than "
                             f"the {num_classes} of stage {k}'s list")
        classifier.weight[...] = jnp.asarray(grow_rows(np.asarray(old_cls.weight[...]),
                                                       np.asarray(classifier.weight[...])))
        how += (f" (classifier {old_cls.num_classes} -> {num_classes} classes)"
                if old_cls.num_classes < num_classes else "")
    module = TrainModule(model, classifier)
    module.train()
    return module, how


def _host(tree: Any) -> Any:
    """Local numpy copies of replicated global arrays (works across processes)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)


class _StageRun:
    """The training loop of one stage (kept in an object to share the many settings)."""

    def __init__(self, config, workdir, k, mesh, logger, allow_config_change=False):
        self.config, self.workdir, self.k, self.mesh, self.logger = config, workdir, k, mesh, logger
        self.sc = config[f"stage{k}"]
        self.allow_config_change = allow_config_change
        self.process_index, self.process_count = distributed.process_info()
        self.bad_log = BadImageLog(os.path.join(workdir, "bad_images.tsv"),
                                   enabled=self.process_index == 0)
        self.bad_count = 0

    def run(self) -> StageSummary:
        config, sc, k = self.config, self.sc, self.k
        t0 = time.time()
        compute_dtype = precision.resolve_dtype(config.precision)
        lpath = list_path(config, sc.list)
        if not os.path.isfile(lpath):
            raise FileNotFoundError(f"stage {k} ({sc.name}): image list {lpath} not found "
                                    "(prepare the data, or set config.data.dir / "
                                    f"config.stage{k}.list)")
        image_list = ImageList.load(lpath)
        source = store.open_source(image_list, image_root(config))
        self.source, self.image_list = source, image_list
        data_dtype = "bfloat16" if compute_dtype == jnp.bfloat16 else "float32"
        pcfg = pipeline_config(config, sc, k, data_dtype)
        it = pipeline.make_train_iterator(source, image_list, pcfg,
                                          device_count=self.mesh.devices.size)
        try:
            return self._train(image_list, it, compute_dtype, t0)
        finally:
            it.close()

    def _train(self, image_list, it, compute_dtype, t0) -> StageSummary:
        config, sc, k = self.config, self.sc, self.k
        spe = it.steps_per_epoch
        total = int(round(sc.epochs * spe))
        num_classes = image_list.num_classes
        module, how = build_module(config, k, num_classes, compute_dtype, self.workdir)
        self.logger.message(f"stage {k} ({sc.name}): {len(image_list)} images, {num_classes} "
                            f"classes, {spe} steps/epoch x {sc.epochs} epochs = {total} steps "
                            f"of {sc.batch_size} images at {sc.image_size}px; model {how}")

        schedule_args = dict(
            steps_per_epoch=spe, base_lr=sc.base_lr, epochs=sc.epochs,
            warmup_epochs=sc.warmup_epochs, bias_lr_factor=config.optim.bias_lr_factor,
            warmup_factor=config.optim.warmup_factor, min_factor=config.optim.min_lr_factor)
        tx = optim.make_optimizer(
            weight_decay=sc.weight_decay, weight_decay_bias=sc.weight_decay_bias,
            momentum=config.optim.momentum, frozen=tuple(config.optim.frozen), **schedule_args)
        # The weight group's schedule, which make_optimizer uses: what the logs report as lr.
        lr_schedule = optim.lr_schedules(**schedule_args)["weight"]
        labels = image_list.labels[image_list.labels >= 0]
        loss_fn = losses.LOSSES.build_selected(config.loss, context={
            "scale": sc.logit_scale, "margin": sc.margin,
            "class_counts": np.bincount(labels, minlength=num_classes)})
        loss_scale = (precision.LossScale.create(config.loss_scale.init,
                                                 growth_interval=config.loss_scale.growth_interval)
                      if compute_dtype == jnp.float16 else None)
        graphdef, state = create_train_state(module, tx, loss_scale=loss_scale)
        del module
        state = distributed.replicate(state, self.mesh)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        step_fn = make_train_step(graphdef, loss_fn, tx, self.mesh, state_sharding=shardings,
                                  compute_dtype=compute_dtype, bn_mode=config.bn_mode)

        ckpt = Checkpointer(os.path.join(stage_dir(self.workdir, k), "checkpoints"),
                            max_to_keep=config.checkpoint.max_to_keep,
                            async_save=config.checkpoint.async_save)
        try:
            resumed, state, meta = ckpt.restore_latest(state, it, report=self.logger.message)
            if resumed is not None:
                check_config_change(meta, config, k, f"checkpoint {ckpt.directory}/{resumed}",
                                    self.allow_config_change, self.logger.message)
                self.logger.message(f"stage {k}: resumed at step {resumed} of {total}")
            # Steps a killed run logged after its checkpoint are logged again: drop them.
            self.logger.rewind(global_step(k, resumed) if resumed else global_step(k, 0) - 1)
            self.bad_log.rewind(k, resumed or 0)
            self.bad_count = self.bad_log.count(k, resumed or 0)
            state, first, last, evals = self._loop(state, step_fn, it, ckpt, spe, total,
                                                   resumed or 0, graphdef, compute_dtype,
                                                   lr_schedule)
            ckpt.wait()
        finally:
            ckpt.close()
        export = export_dir(self.workdir, k)
        self._export(graphdef, state, export, num_classes)
        skipped = int(_host(state.skipped))
        return StageSummary(stage=k, name=sc.name, steps=total, steps_per_epoch=spe,
                            num_classes=num_classes, first_loss=first, last_loss=last,
                            skipped_steps=skipped, export=export, resumed_from=resumed,
                            seconds=time.time() - t0, eval=evals)

    def _meta(self, step: int, spe: int) -> dict[str, Any]:
        return {"stage": self.k, "stage_name": self.sc.name, "step": step, "epoch": step / spe,
                "seed": self.config.seed,
                "result_config": train_config.result_config(self.config, self.k),
                "process_count": self.process_count}

    def _loop(self, state, step_fn, it, ckpt, spe, total, start, graphdef, compute_dtype,
              lr_schedule):
        """Steps ``start`` .. ``total`` of the stage; returns (final state, first loss, last
        loss, evaluation results)."""
        config, sc, k = self.config, self.sc, self.k
        every = config.checkpoint.every_steps
        self.logger.start_stage(f"stage {k} {sc.name}", total_images=total * sc.batch_size,
                                done_images=start * sc.batch_size)
        running = _RunningMetrics(start_time=time.perf_counter())
        evals: dict[str, float] = {}
        if config.eval.every_epochs and config.eval.at_start and start == 0 and k == min(
                parse_stages(config)):
            evals.update(self._evaluate(graphdef, state, compute_dtype, start, spe, "untrained"))

        pending = None
        for step in range(start, total):
            batch = next(it)
            self._count_bad(batch, step + 1, total)
            gb = distributed.global_batch({"image": batch["image"], "label": batch["label"]},
                                          self.mesh)
            state, metrics = step_fn(state, gb)
            if pending is not None:
                self._record_step(*pending, running, ckpt, spe, total, start, lr_schedule,
                                  fp16=state.loss_scale is not None)
            pending = (step, metrics)
            done = step + 1
            epoch_end = done % spe == 0
            if (every and done % every == 0) or epoch_end or done == total:
                self._record_step(*pending, running, ckpt, spe, total, start, lr_schedule,
                                  fp16=state.loss_scale is not None)
                pending = None
                ckpt.save(done, state, self._meta(done, spe), it)
            every_eval = config.eval.every_epochs
            if every_eval and (done == total or (epoch_end and (done // spe) % every_eval == 0)):
                evals.update(self._evaluate(graphdef, state, compute_dtype, done, spe,
                                            f"epoch {done / spe:g}"))
        if pending is not None:
            self._record_step(*pending, running, ckpt, spe, total, start, lr_schedule,
                              fp16=state.loss_scale is not None)
        self.logger.close_bar()
        return state, running.first_loss, running.last_loss, evals

    def _count_bad(self, batch: dict, step: int, total: int) -> None:
        """Lists the skipped (unreadable) images of step ``step``'s global batch and stops past
        ``data.train.max_bad_fraction`` of the stage's samples."""
        rows = np.asarray(batch["index"])[np.asarray(batch["bad"])].astype(np.int64)
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            padded = np.full(len(batch["bad"]), -1, np.int64)
            padded[:len(rows)] = rows
            rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1)
            rows = rows[rows >= 0]
        if not len(rows):
            return
        for row in rows.tolist():
            image_id = (self.image_list.ids[row] if self.image_list.ids is not None
                        else str(row))
            reason = self._bad_reason(row)
            self.logger.message(f"stage {self.k} step {step}: skipped unreadable image {image_id} "
                                f"(list row {row}): {reason}")
            self.bad_log.add(self.k, step, row, image_id, reason)
        self.bad_count += len(rows)
        samples = total * self.sc.batch_size
        cap = float(self.config.data.train.max_bad_fraction) * samples
        if self.bad_count > cap:
            first = "; ".join(self.bad_log.first(self.k)) or "see the log"
            raise TooManyBadImages(
                f"stage {self.k} ({self.sc.name}): {self.bad_count} unreadable images skipped by "
                f"step {step}, more than data.train.max_bad_fraction="
                f"{self.config.data.train.max_bad_fraction} of the stage's {samples} samples. "
                f"First: {first}. All are listed in {self.bad_log.path}. Fix or remove the files "
                "(or prepare a store, which leaves them out), or raise "
                "--config.data.train.max_bad_fraction; re-running resumes from the last "
                "checkpoint.")

    def _bad_reason(self, row: int) -> str:
        """Why list row ``row`` cannot be used (read and decoded again: rare, and the worker
        processes do not pass strings back)."""
        try:
            decode_image(self.source[row]["image"], row=row)
        except Exception as e:  # noqa: BLE001 - the reason is what is reported
            return f"{type(e).__name__}: {e}"
        return "failed in the input pipeline, decodes now"

    def _record_step(self, step: int, metrics: dict, running: _RunningMetrics, ckpt, spe: int,
                     total: int, start: int, lr_schedule, *, fp16: bool) -> None:
        """Checks step ``step``'s metrics, adds them to ``running`` and logs every
        ``config.log.every_steps`` steps (the first step, which compiles, is not timed)."""
        sc, k = self.sc, self.k
        m = jax.device_get(metrics)
        if not bool(m["finite"]) and not fp16:
            raise TrainingDiverged(
                f"stage {k} ({sc.name}): loss or gradients are not finite at step {step} "
                f"(epoch {step / spe:.3f}, loss {float(m['loss'])}); the update was not "
                f"applied and nothing after step {ckpt.latest_step()} was saved. The last "
                f"checkpoint in {ckpt.directory} is usable: lower the learning rate or use "
                "another precision, then re-run to resume from it.")
        running.add(float(m["loss"]), float(m["accuracy"]))
        done = step + 1
        if step == start:  # the first step includes compilation: not timed
            self.logger.message(f"stage {k}: first step (with compilation) took "
                                f"{time.perf_counter() - running.start_time:.1f} s")
            self.logger.advance(sc.batch_size)
            running.restart()
            return
        if done % max(1, self.config.log.every_steps) == 0 or done == total:
            dt = time.perf_counter() - running.start_time
            n = running.steps
            values = {"loss": running.loss_sum / n, "accuracy": running.accuracy_sum / n,
                      "lr": float(lr_schedule(step)), "images_per_s": n * sc.batch_size / dt,
                      "step_time_s": dt / n, "loss_scale": float(m["loss_scale"]),
                      "skipped_steps": int(m["skipped"]), "bad_images": self.bad_count}
            self.logger.scalars(global_step(k, done), values,
                                {"stage": k, "step": done, "epoch": done / spe})
            self.logger.advance(n * sc.batch_size, {
                "loss": f"{values['loss']:.3f}", "acc": f"{values['accuracy']:.3f}",
                "lr": f"{values['lr']:.2e}", "img/s": f"{values['images_per_s']:.1f}",
                "bad": self.bad_count})
            running.restart()

    def _evaluate(self, graphdef, state, compute_dtype, step, spe, when) -> dict[str, float]:
        config = self.config
        vpath = config.eval.validation or os.path.join(config.data.dir, "validation.npz")
        if not os.path.isfile(vpath):
            raise FileNotFoundError(f"config.eval.every_epochs is set but the validation set "
                                    f"{vpath} does not exist (set config.eval.validation)")
        validation = ValidationSet.load(vpath)
        ecfg = pipeline.default_eval_config(config.eval.image_size or self.sc.image_size)
        ecfg.batch_size = config.eval.batch_size
        ecfg.num_workers = config.data.train.num_workers
        ecfg.read_threads = config.data.train.read_threads
        module = nnx.merge(graphdef, state.params, state.rest)
        embed = embedding.make_embed_fn(module.model, self.mesh,
                                        scales=tuple(config.eval.scales),
                                        flip=bool(config.eval.flip),
                                        compute_dtype=compute_dtype)
        t = time.time()
        result = evaluation.retrieval_map(embed, validation,
                                          config.eval.images or image_root(config), ecfg,
                                          self.mesh)
        values = {f"val/{name}": float(v) for name, v in result.items()}
        self.logger.scalars(global_step(self.k, step), values,
                            {"stage": self.k, "step": step, "epoch": step / spe, "eval": when})
        self.logger.message(f"stage {self.k} {when}: validation mAP@100 "
                            f"{result['map@100']:.4f} ({time.time() - t:.1f} s)")
        prefix = "untrained_" if when == "untrained" else ""
        return {f"{prefix}map@100": float(result["map@100"])}

    def _export(self, graphdef, state, path: str, num_classes: int) -> None:
        # Host copies: the export must not record this run's device topology.
        module = nnx.merge(graphdef, _host(state.params), _host(state.rest))
        module.eval()
        meta = {"stage": self.k, "stage_name": self.sc.name, "num_classes": num_classes,
                "image_size": self.sc.image_size,
                "result_config": train_config.result_config(self.config, self.k)}
        saved_model.save_model(path, module.model, module.classifier,
                               config=model_config(self.config, num_classes), metadata=meta,
                               overwrite=True)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved configuration to ``<workdir>/config.json`` (process 0)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_config_change(meta: dict[str, Any], config: ml_collections.ConfigDict, k: int,
                        what: str, allow: bool, report) -> None:
    """Compares the result settings recorded in ``meta`` (a checkpoint's or an export's) with
    ``config``'s for stage ``k``: a difference is a :class:`ConfigChanged` error naming the
    keys, or a warning when ``allow``. Records without them (older versions) are not checked."""
    saved = meta.get("result_config")
    if saved is None:
        return
    diff = train_config.config_differences(saved, train_config.result_config(config, k))
    if not diff:
        return
    lines = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in diff.items())
    if not allow:
        raise ConfigChanged(
            f"stage {k}: {what} was written with other settings that change the result "
            f"(saved -> now):\n{lines}\nUse the saved settings, another workdir, or pass "
            "--allow_config_change to continue with the new ones.")
    report(f"warning: stage {k}: {what} was written with other settings "
           f"(--allow_config_change given):\n{lines}")


def _check_saved_config(config: ml_collections.ConfigDict, workdir: str, allow: bool) -> None:
    """Compares ``<workdir>/config.json`` with ``config`` up to the last stage started there
    (before config.json is replaced); each stage's checkpoints and export are checked again
    when the stage is reached."""
    path = os.path.join(workdir, "config.json")
    started = [k for k in range(1, MAX_STAGES + 1) if os.path.isdir(stage_dir(workdir, k))]
    if not started or not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    last = max(started)
    check_config_change({"result_config": train_config.result_config(saved, last)}, config,
                        last, f"the run in {workdir} (config.json)", allow, print)


def train(config: ml_collections.ConfigDict, workdir: str,
          mesh: jax.sharding.Mesh | None = None, *,
          allow_config_change: bool = False) -> list[StageSummary]:
    """Runs (or resumes) the stages selected by ``config.stages``; see the module docstring.

    Args:
      config: a configuration from ``configs/*.py`` (``get_config()``), overrides applied.
      workdir: output directory (created).
      mesh: data mesh (default: every device of every process).
      allow_config_change: accept result-changing settings that differ from those a stage's
        checkpoint or export was written with (see the module docstring).

    Returns:
      One :class:`StageSummary` per stage run now (skipped, already exported stages excluded).
    """
    stages = parse_stages(config)
    mesh = mesh or distributed.make_mesh()
    for k in stages:
        distributed.local_batch_size(config[f"stage{k}"].batch_size, mesh)
    workdir = os.path.abspath(workdir)
    _check_saved_config(config, workdir, allow_config_change)
    save_config(config, workdir)
    logger = MetricsLogger(workdir, enabled=jax.process_index() == 0,
                           tensorboard=config.log.tensorboard)
    summaries = []
    try:
        logger.message(f"training on {mesh.devices.size} {jax.default_backend()} device(s) in "
                       f"{jax.process_count()} process(es); workdir {workdir}")
        for k in stages:
            export = export_dir(workdir, k)
            if os.path.isdir(export):
                check_config_change(saved_model.read_metadata(export), config, k,
                                    f"the finished model {export}", allow_config_change,
                                    logger.message)
                logger.message(f"stage {k} ({config[f'stage{k}'].name}) is complete ({export}); "
                               "skipping it")
                continue
            summary = _StageRun(config, workdir, k, mesh, logger, allow_config_change).run()
            logger.scalars(global_step(k, summary.steps), {},
                           {"stage_summary": dataclasses.asdict(summary)})
            logger.message(f"stage {k} ({summary.name}) done in {summary.seconds:.0f} s: loss "
                           f"{summary.first_loss} -> {summary.last_loss}; model {summary.export}")
            summaries.append(summary)
    finally:
        logger.close()
    return summaries
