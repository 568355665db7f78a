"""Embedding extraction: jitted, batched, data-parallel over local devices, resumable.

The list rows are cut into shards of ``shard_size`` images; process p of P takes the shards
s with s % P == p and embeds them with its local devices (the batch is split over a 1-D
``data`` mesh of ``jax.local_devices()``, the model replicated). Each finished shard is written
atomically (:mod:`features`), so a killed run resumes at the first missing shard, and a run
whose ``meta.json`` says done is not redone.

Images: decoded and resized straight to ``size x size`` and normalised as in training
(``lmr_jax.data.augment.EvalPreprocess``). An image that cannot be read or decoded gets no
feature: it is listed in ``failed.txt`` with the reason (never a zero vector). More failures than
``max_bad_fraction`` of the rows (default 0.1 %) stop the run with :class:`TooManyFailures`
naming the first reasons (a wrong folder or format shows up at once, not as a low mAP); the
shards written so far are kept and ``failed.txt`` lists the failures so far, so a re-run with
the files fixed or a larger fraction resumes.

Views (single scale, the reference's multi-scale, the optional flip): the one embedding path
of :mod:`lmr_jax.retrieval.embedding`, shared with the validation during training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from lmr_jax.data.augment import EvalPreprocess, default_eval_preprocess_config
from lmr_jax.retrieval import embedding, features

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractOptions:
    """size: input side; scales / flip: test-time views (:mod:`embedding`; the reference's
    multi-scale is ``embedding.REFERENCE_SCALES``, flip is an lmr-jax extra); dtype: compute dtype of the images
    (the model's own dtype is fixed when it is built); out_dtype: stored feature dtype;
    batch_size: images per step on this process (a multiple of the local device count);
    shard_size: images per resumable shard; read_threads: decoding threads; max_bad_fraction:
    share of the rows allowed to fail (more is a :class:`TooManyFailures` error)."""

    size: int = 384
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    dtype: str = "float32"
    out_dtype: str = "float16"
    batch_size: int = 32
    shard_size: int = 4096
    read_threads: int = 4
    max_bad_fraction: float = 0.001

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = [float(s) for s in self.scales]
        for k in ("batch_size", "shard_size", "read_threads", "max_bad_fraction"):
            d.pop(k)  # do not change the result: a resumed run may change them
        return d


class TooManyFailures(RuntimeError):
    """More images than ``ExtractOptions.max_bad_fraction`` could not be embedded."""


def _check_failures(out_dir: str, failures: list[tuple[int, str]], ids: np.ndarray,
                    num_rows: int, fraction: float) -> None:
    if len(failures) <= fraction * num_rows:
        return
    failures = sorted(failures)
    features.write_failed(out_dir, ids, failures)
    first = "; ".join(f"{ids[r]}: {reason}" for r, reason in failures[:3])
    raise TooManyFailures(
        f"{out_dir}: {len(failures)} of {num_rows} images could not be embedded, more than "
        f"max_bad_fraction={fraction}. First: {first}. All so far are in "
        f"{out_dir}/failed.txt; the finished shards are kept: fix the images (or the --images "
        "folder) or raise --max_bad_fraction and run again to resume.")


class _SafePreprocess:
    """row -> preprocessed record; unreadable images give mask False and the reason."""

    def __init__(self, source: Any, config: Any):
        self.source = source
        self.pre = EvalPreprocess(config)
        self.size = int(config.size)
        self.dtype = self.pre.dtype

    def __call__(self, row: int) -> dict:
        row = int(row)
        if row < 0:
            return {"image": np.zeros((self.size, self.size, 3), self.dtype), "row": row,
                    "ok": False, "error": ""}
        try:
            record = self.source[row]
        except (OSError, ValueError) as e:  # a missing or unreadable file: reported
            return self._bad(row, e)
        if int(record["index"]) != row:
            raise ValueError(f"image source returned record {record['index']} for row {row}: "
                             "the source and the id list are not aligned")
        try:
            out = self.pre(record)
        except Exception as e:  # noqa: BLE001 - any image that does not decode is reported
            return self._bad(row, e)
        return {"image": out["image"], "row": row, "ok": True, "error": ""}

    def _bad(self, row: int, error: Exception) -> dict:
        return {"image": np.zeros((self.size, self.size, 3), self.dtype), "row": row,
                "ok": False, "error": f"{type(error).__name__}: {error}".replace("\n", " ")}


def _batches(source: Any, rows: np.ndarray, batch_size: int, config: Any, threads: int):
    padded = np.concatenate([rows, np.full(-len(rows) % batch_size, -1, np.int64)])
    ds = grain.MapDataset.source(padded).map(_SafePreprocess(source, config))
    ds = ds.batch(batch_size, batch_fn=lambda items: items)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
    for items in it:
        yield (np.stack([r["image"] for r in items]), np.array([r["row"] for r in items]),
               np.array([r["ok"] for r in items]), [r["error"] for r in items])


def extract(model: nnx.Module, source: Any, ids: np.ndarray, out_dir: str, *,
            options: ExtractOptions | None = None, rows: np.ndarray | None = None,
            run_config: dict[str, Any] | None = None, process_index: int | None = None,
            process_count: int | None = None, devices: Sequence[jax.Device] | None = None,
            on_shard: Callable[[int], None] | None = None, progress: bool = True
            ) -> dict[str, Any] | None:
    """Embed ``source`` rows (default all) into ``out_dir`` (see :mod:`features`).

    Args:
      model: retrieval model ((B, S, S, 3) -> (B, D)).
      source: random-access image source (records ``{"image": bytes, "index": row}``).
      ids: (len(source),) image ids, written to ids.txt / failed.txt.
      run_config: what else identifies the run (checkpoint path, arch...), stored in
        config.json; a resumed run must match it and ``options.identity()``.
      process_index, process_count: this host's share of the shards (default JAX's).
      on_shard: called with the shard number after each shard is written.
    Returns:
      meta of the finished folder, or None on a process other than 0 of several.

    Raises:
      TooManyFailures: more than ``options.max_bad_fraction`` of the rows failed (checked after
        every shard, counting the shards of earlier runs).
    """
    options = options or ExtractOptions()
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    ids = np.asarray(ids, dtype=str)
    rows = np.arange(len(source), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if features.is_done(out_dir):
        log.info("%s is finished already: nothing to do", out_dir)
        return features.load_features(out_dir).meta
    config = {"options": options.identity(), "num_rows": int(len(rows)),
              "shard_size": int(options.shard_size), **(run_config or {})}
    features.prepare(out_dir, config)
    num_shards = max(1, -(-len(rows) // options.shard_size))
    mine = [s for s in range(num_shards) if s % pc == pi and not features.shard_done(out_dir, s)]
    failures = features.shard_failures(out_dir, num_shards)  # of shards written before
    pre_cfg = default_eval_preprocess_config(options.size)
    pre_cfg.dtype = options.dtype
    devices = list(devices) if devices is not None else jax.local_devices()
    embed = embedding.make_embed_fn(model, Mesh(np.asarray(devices), ("data",)),
                                    scales=options.scales, flip=options.flip,
                                    compute_dtype=jnp.dtype(options.dtype))
    dim = None
    bar = tqdm(total=sum(len(rows[s * options.shard_size:(s + 1) * options.shard_size])
                         for s in mine), unit="img", disable=not progress, desc="extract")
    for s in mine:
        shard_rows = rows[s * options.shard_size:(s + 1) * options.shard_size]
        feats, kept, bad, reasons = [], [], [], []
        for images, batch_rows, ok, errors in _batches(source, shard_rows, options.batch_size,
                                                       pre_cfg, options.read_threads):
            emb = np.asarray(embed(images))
            dim = emb.shape[1]
            feats.append(emb[ok])
            kept.append(batch_rows[ok])
            for r, good, err in zip(batch_rows, ok, errors, strict=True):
                if r >= 0 and not good:
                    bad.append(int(r))
                    reasons.append(err)
                    log.warning("image %s (row %d) gets no feature: %s", ids[r], r, err)
            bar.update(int((batch_rows >= 0).sum()))
        out_feats = np.concatenate(feats).astype(options.out_dtype)
        features.write_shard(out_dir, s, np.concatenate(kept), out_feats, np.asarray(bad, np.int64),
                             reasons)
        failures.extend(zip(bad, reasons, strict=True))
        _check_failures(out_dir, failures, ids, len(rows), options.max_bad_fraction)
        if on_shard is not None:
            on_shard(s)
    bar.close()
    if pc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lmr_jax.extract.shards_written")
    if pi != 0:
        return None
    if dim is None:
        with np.load(features.shard_path(out_dir, 0)) as z:
            dim = z["feats"].shape[1]
    return features.finalize(out_dir, num_shards, ids, dim,
                             options.out_dtype, {"config": config})
