"""grain input pipelines: training (sampler -> decode -> augment -> batch) and evaluation.

Training (:func:`make_train_iterator`), as a grain ``MapDataset``::

    positions g = 0, 1, 2, ...         global sample stream, ``steps_per_epoch * global_batch``
      -> sampler row                   per epoch (the last ``len % global_batch`` of each
                                       epoch's rows are dropped, as ``drop_last`` would)
      -> source[row] + label           {"image": bytes, "index": row, "label": label}
      -> TrainAugment (random_map)     rng from (seed, g): independent of process / worker count
      -> batch(global_batch / P)       P = process count: local batch b = positions
                                       [b * B_local, (b + 1) * B_local)
      -> [process_index :: P]          process p keeps the p-th contiguous slice of every
                                       global batch
      -> to_iter_dataset (threads) -> mp_prefetch (worker processes, optional)

Every element is a pure function of its position, so the iterator state is grain's (positions
already returned); :meth:`PipelineIterator.get_state` / ``set_state`` resume exactly, also through
orbax (``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``) or ``json``. A state restores
only into a pipeline with the same configuration, process count and ``num_workers``.

Evaluation (:func:`make_eval_iterator`): the rows (default: all) in order; process p takes the
p-th contiguous block of ceil(N / P) rows, every process is padded to the same number of full
batches, and padding has ``index`` -1 and ``mask`` False (a zero image that is never decoded).

Bad input: rows listed in ``exclude_rows`` (images found unreadable at preparation) are never
sampled. An image that cannot be read or decoded at run time (direct-file mode, a damaged file)
is *skipped* when ``max_bad_fraction`` > 0 (the default): its batch slot keeps the batch shape
with a zero image, label -1 (which the losses ignore) and ``bad`` True, so every batch has its
usual size and positions, and a resumed run sees the same batches and the same skipped rows as
an uninterrupted one. The slot still passes through the model, so BatchNorm statistics of that
step include one zero image. Counting the skipped images and stopping past the cap is the
caller's job (the trainer: ``bad_images.tsv`` in the workdir). With ``max_bad_fraction`` 0 such
an image raises :class:`ImageDecodeError` (or the read's ``OSError``) naming the list row and
image id. A dead worker process raises :class:`DataWorkerError`.

Shared memory: with worker processes, batches arrive in shared memory that is released when the
batch arrays are garbage-collected. ``close()`` (or leaving a ``with`` block) stops the workers,
unlinks what is still buffered and runs the cyclic garbage collector (grain keeps the last batch
of a finished worker stream in a reference cycle); iterators still open at interpreter exit are
closed by an ``atexit`` hook. Only batches the program itself still references at exit remain;
Python's resource tracker then reports them ("leaked shared_memory objects") and unlinks them.
"""

from __future__ import annotations

import atexit
import functools
import gc
import sys
import threading
import weakref
from typing import Any

import grain
import ml_collections
import numpy as np

from lmr_jax.data.augment import (
    EvalPreprocess,
    ImageDecodeError,
    TrainAugment,
    default_augment_config,
    default_eval_preprocess_config,
)
from lmr_jax.data.samplers import CLEAN_FRACTION, CONTINENT_SHARES, SAMPLERS, Sampler


class DataWorkerError(RuntimeError):
    """A grain worker process of the input pipeline died."""


def default_train_config(size: int = 384) -> ml_collections.ConfigDict:
    """Training-pipeline settings (reference values for stage 1); embed in trainer configs.

    Fields: global_batch_size (over all processes), seed (sampler and augmentation),
    sampler.name (a registered sampler: ``softmax``, ``pk``, ``pairs``, ``continent``) and each
    sampler's options in ``sampler.<name>`` (num_instances for pk, continent_shares and
    clean_fraction for continent; :data:`lmr_jax.data.samplers.SAMPLERS`), augment (see
    :func:`lmr_jax.data.augment.default_augment_config`), num_workers (grain worker processes;
    0 = decode in this process), read_threads (threads per process, each builds whole batches),
    worker_buffer_size (batches buffered per worker), max_bad_fraction (0: an unreadable image
    is an error; > 0: it is skipped, see the module docstring, and the trainer stops once more
    than this share of a stage's samples were skipped).
    """
    return ml_collections.ConfigDict({
        "global_batch_size": 96,
        "seed": 0,
        "sampler": {
            "name": "softmax",
            "pk": {"num_instances": 4},
            "continent": {"continent_shares": dict(CONTINENT_SHARES),
                          "clean_fraction": CLEAN_FRACTION},
        },
        "augment": default_augment_config(size),
        "num_workers": 0,
        "read_threads": 2,
        "worker_buffer_size": 2,
        "max_bad_fraction": 0.001,
    })


def default_eval_config(size: int = 384) -> ml_collections.ConfigDict:
    """Evaluation-pipeline settings: batch_size (per process), preprocess, workers, threads."""
    return ml_collections.ConfigDict({
        "batch_size": 64,
        "preprocess": default_eval_preprocess_config(size),
        "num_workers": 0,
        "read_threads": 2,
        "worker_buffer_size": 2,
    })


class _SampleStream:
    """grain data source: global sample position -> list row (epoch after epoch).

    Keeps the rows of the two latest epochs used, so that read threads working on both sides
    of an epoch boundary do not rebuild them in turn.
    """

    def __init__(self, sampler: Sampler, samples_per_epoch: int, num_epochs: int | None):
        self.sampler = sampler
        self.samples_per_epoch = samples_per_epoch
        self.num_epochs = num_epochs
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize
        return self.num_epochs * self.samples_per_epoch

    def _epoch(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                self._cache[epoch] = self.sampler.epoch_indices(epoch)
                for old in sorted(self._cache, key=lambda e: abs(e - epoch))[2:]:
                    del self._cache[old]
            return self._cache[epoch]

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.samples_per_epoch)
        return int(self._epoch(epoch)[offset])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"], state["_cache"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = {}


class _ReadTrainRecord:
    """list row -> {"image": bytes, "index": row, "label": label} from the image source.

    With ``skip_bad``, a file that cannot be read gives ``image`` None (skipped downstream).
    """

    def __init__(self, source: Any, labels: np.ndarray, skip_bad: bool = False):
        self.source = source
        self.labels = labels
        self.skip_bad = skip_bad

    def __call__(self, row: int) -> dict:
        try:
            record = _read(self.source, row)
        except OSError:
            if not self.skip_bad:
                raise
            record = {"image": None, "index": row}
        return record | {"label": self.labels[row]}


class _AugmentOrSkip:
    """TrainAugment, plus ``bad``; an unreadable image becomes a skipped slot (zero image,
    label -1, ``bad`` True) when ``skip_bad``, else its ImageDecodeError propagates."""

    def __init__(self, augment: TrainAugment, skip_bad: bool):
        self.augment = augment
        self.skip_bad = skip_bad

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        if record["image"] is not None:
            try:
                return self.augment(record, rng) | {"bad": np.bool_(False)}
            except ImageDecodeError:
                if not self.skip_bad:
                    raise
        size = self.augment.size
        return {"image": np.zeros((size, size, 3), self.augment.dtype),
                "index": np.int32(record["index"]), "label": np.int32(-1),
                "bad": np.bool_(True)}


class _ReadEvalRecord:
    """list row -> source record; row -1 -> a padding record that is never decoded."""

    def __init__(self, source: Any):
        self.source = source

    def __call__(self, row: int) -> dict:
        if row < 0:
            return {"image": None, "index": -1}
        return _read(self.source, int(row))


def _read(source: Any, row: int) -> dict:
    record = source[row]
    if int(record["index"]) != row:
        raise ValueError(f"image source returned record index {record['index']} for row {row}; "
                         "the source and the image list are not aligned")
    return record


def _close_if_alive(ref: weakref.ReferenceType) -> None:
    iterator = ref()
    if iterator is not None:
        iterator.close()


class PipelineIterator(grain.DatasetIterator):
    """A grain iterator over batches with clear errors and exit-time cleanup.

    Checkpointable like any grain ``DatasetIterator`` (``get_state`` / ``set_state``; orbax via
    ``grain.checkpoint``). Usable as a context manager; ``close()`` stops worker processes.

    Attributes:
      steps_per_epoch: training batches per epoch (None for evaluation).
      num_batches: batches per process in total (None for an endless training stream).
    """

    def __init__(self, parent: grain.DatasetIterator, *, ids: np.ndarray | None = None,
                 steps_per_epoch: int | None = None, num_batches: int | None = None,
                 uses_workers: bool = False):
        super().__init__(parent)
        self._ids = ids
        self._uses_workers = uses_workers
        self.steps_per_epoch = steps_per_epoch
        self.num_batches = num_batches
        self._atexit_close = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit_close)

    def __next__(self) -> dict:
        self._assert_not_closed()
        try:
            return next(self._parent)
        except ImageDecodeError as e:
            if self._ids is not None and 0 <= e.row < len(self._ids):
                e.add_note(f"image id: {self._ids[e.row]}")
            e.add_note("exclude unreadable images with exclude_rows (or re-prepare the store)")
            raise
        except RuntimeError as e:
            if "terminated unexpectedly" in str(e):
                raise DataWorkerError(
                    f"an input-pipeline worker process died ({e}). Common causes: out of memory "
                    "(the kernel's OOM killer; lower num_workers, worker_buffer_size or the "
                    "batch size) or a crash inside native image decoding.") from e
            raise

    def get_state(self) -> dict[str, Any]:
        self._assert_not_closed()
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._assert_not_closed()
        self._parent.set_state(state)

    def close(self) -> None:
        if self._closed:
            return
        atexit.unregister(self._atexit_close)
        super().close()
        # Release the closed grain iterators now, while the interpreter is intact: they run
        # close() again from __del__, which fails if that happens during interpreter teardown.
        self._parents = ()
        if self._uses_workers:
            # When a worker's stream ends, grain's prefetch thread keeps its last batch alive in
            # a reference cycle (exception -> traceback -> frame -> queue -> exception); collect
            # it now so that its shared memory is unlinked rather than reported leaked at exit.
            gc.collect()

    def __enter__(self) -> PipelineIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ensure_absl_flags_parsed() -> None:
    """grain's multiprocessing reads absl flags; parse them (defaults) when no absl app did."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _finish(ds: grain.MapDataset, *, num_workers: int, read_threads: int,
            worker_buffer_size: int) -> grain.IterDataset:
    if num_workers < 0 or read_threads < 0 or worker_buffer_size <= 0:
        raise ValueError(f"need num_workers >= 0, read_threads >= 0, worker_buffer_size > 0; got "
                         f"{num_workers}, {read_threads}, {worker_buffer_size}")
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=read_threads))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
    return it


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    return int(process_index), int(process_count)


def _check_devices(global_batch: int, device_count: int | None, what: str) -> None:
    if device_count is None:
        import jax

        device_count = jax.device_count()
    if global_batch % device_count:
        raise ValueError(f"{what} {global_batch} is not divisible by the {device_count} devices; "
                         f"choose a multiple of {device_count}")


def make_train_iterator(
    source: Any,
    image_list: Any,
    config: ml_collections.ConfigDict,
    *,
    exclude_rows: np.ndarray | None = None,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
) -> PipelineIterator:
    """Training batches for this process.

    Args:
      source: random-access image source, ``source[row] = {"image": bytes, "index": row}``.
      image_list: the list the source was built from (``labels``, ``noisy``, ``continents``,
        optionally ``ids`` for error messages).
      config: :func:`default_train_config`-like settings.
      exclude_rows: list rows never to sample (unreadable images).
      num_epochs: stop after this many epochs; None = endless.
      process_index, process_count: this process and the number of processes (default: JAX's).
      device_count: global device count (default ``jax.device_count()``); the global batch must
        be divisible by it.

    Returns:
      A :class:`PipelineIterator` of dicts ``{"image": (B_local, S, S, 3) float32|bfloat16,
      "label": (B_local,) int32, "index": (B_local,) int32 list rows, "bad": (B_local,) bool
      skipped unreadable images (label -1, zero image)}`` with
      ``B_local = global_batch_size / process_count``; ``steps_per_epoch`` is set.
    """
    process_index, process_count = _processes(process_index, process_count)
    global_batch = int(config.global_batch_size)
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(f"global batch size {global_batch} must be a positive multiple of the "
                         f"{process_count} processes")
    _check_devices(global_batch, device_count, "global batch size")
    labels = np.asarray(image_list.labels, dtype=np.int32)
    if len(source) != len(labels):
        raise ValueError(f"the image source has {len(source)} records but the image list has "
                         f"{len(labels)} rows")
    sampler = SAMPLERS.build_selected(config.sampler, image_list, batch_size=global_batch,
                                      seed=int(config.seed), exclude_rows=exclude_rows)
    steps_per_epoch = sampler.epoch_length // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{sampler.epoch_length} trainable images are fewer than one global "
                         f"batch of {global_batch}")
    local_batch = global_batch // process_count
    ds = grain.MapDataset.source(_SampleStream(sampler, steps_per_epoch * global_batch,
                                               num_epochs))
    skip_bad = float(config.get("max_bad_fraction", 0.0)) > 0
    ds = ds.map(_ReadTrainRecord(source, labels, skip_bad))
    ds = ds.random_map(_AugmentOrSkip(TrainAugment(config.augment), skip_bad),
                       seed=int(config.seed))
    ds = ds.batch(local_batch, drop_remainder=True)[process_index::process_count]
    it = _finish(ds, num_workers=int(config.num_workers), read_threads=int(config.read_threads),
                 worker_buffer_size=int(config.worker_buffer_size))
    return PipelineIterator(iter(it), ids=getattr(image_list, "ids", None),
                            steps_per_epoch=steps_per_epoch,
                            uses_workers=int(config.num_workers) > 0)


def eval_rows_for_process(rows: np.ndarray, batch_size: int, process_index: int,
                          process_count: int) -> np.ndarray:
    """This process's contiguous block of ``rows``, padded with -1 to a common batch count.

    Every process gets ceil(ceil(N / P) / batch_size) * batch_size entries.
    """
    n = len(rows)
    per_process = -(-n // process_count)
    padded = max(1, -(-per_process // batch_size)) * batch_size
    block = rows[process_index * per_process:(process_index + 1) * per_process]
    return np.concatenate([block, np.full(padded - len(block), -1, np.int64)])


def make_eval_iterator(
    source: Any,
    config: ml_collections.ConfigDict,
    *,
    rows: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
) -> PipelineIterator:
    """Evaluation batches for this process, in row order.

    Args:
      source: random-access image source.
      config: :func:`default_eval_config`-like settings (``batch_size`` per process).
      rows: list rows to embed (default: all rows of the source).
      ids: optional (N,) image ids for error messages.
      process_index, process_count: default JAX's.
      device_count: global device count (default ``jax.device_count()``); batch_size *
        process_count must be divisible by it.

    Returns:
      A :class:`PipelineIterator` of dicts ``{"image": (B, S, S, 3), "index": (B,) int32 list
      rows (-1 on padding), "mask": (B,) bool (False on padding)}``, ``num_batches`` long.
    """
    process_index, process_count = _processes(process_index, process_count)
    batch_size = int(config.batch_size)
    if batch_size <= 0:
        raise ValueError(f"eval batch size must be > 0, got {batch_size}")
    _check_devices(batch_size * process_count, device_count,
                   f"global eval batch (batch_size {batch_size} x {process_count} processes)")
    rows = np.arange(len(source), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(source)):
        raise ValueError(f"eval rows must lie in [0, {len(source)}), got [{rows.min()}, "
                         f"{rows.max()}]")
    local_rows = eval_rows_for_process(rows, batch_size, process_index, process_count)
    ds = grain.MapDataset.source(local_rows).map(_ReadEvalRecord(source))
    ds = ds.map(EvalPreprocess(config.preprocess)).batch(batch_size)
    it = _finish(ds, num_workers=int(config.num_workers), read_threads=int(config.read_threads),
                 worker_buffer_size=int(config.worker_buffer_size))
    return PipelineIterator(iter(it), ids=ids, num_batches=len(local_rows) // batch_size,
                            uses_workers=int(config.num_workers) > 0)
