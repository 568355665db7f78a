"""Image store (every image once, each file's original bytes in array_record files) and sources.

Store layout (``write_store``)::

    store/plan.npz              keys (K,) sorted ``split/id`` planned, shard size, options
    store/shards/00007/...      one tensorflow-datasets dataset per shard (array_record files)
    store/shards/00007.done.json  written atomically once shard 7 is written and verified
    store/index.npz             keys (M,) sorted, shard (M,), pos (M,): where each good image is

Each shard is an independent tfds ``GeneratorBasedBuilder`` run (manual_dir = the image root,
``file_format='array_record'``), so shards are written in parallel processes and an interrupted
preparation skips the shards whose ``.done.json`` exists. A shard is verified before it is marked
done: record count, key order and a content hash of every record, and a full decode of a sample.

Every image is checked by decoding it the way training and extraction will
(:func:`lmr_jax.data.augment.decode_image`, OpenCV, the reference's ``cv2.imread``). A missing,
unreadable or empty file, or one OpenCV cannot decode (not an image, truncated, corrupt), is
*bad*: it is left out and reported with the reason. Every good image is stored byte for byte,
whatever its format (JPEG, PNG, GIF, WebP, grayscale or CMYK JPEG, EXIF orientation tag
included), so decoding from the store gives exactly the array ``cv2.imread`` gives for the file.

``max_side`` (off by default) is a speed option that changes pixels: an image whose long side
(after EXIF rotation) is larger is decoded with OpenCV, shrunk with ``cv2.INTER_AREA`` to a long
side of ``max_side`` and re-encoded as an upright JPEG of ``jpeg_quality``; every later epoch
then decodes and resizes less, but the pixels are no longer the reference's.

Sources (``open_source``) follow grain's ``RandomAccessDataSource`` protocol and return
``{"image": encoded bytes, "index": row in the ImageList}``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lmr_jax.data.augment import ImageDecodeError, ImageTooLarge, decode_image
from lmr_jax.data.lists import ImageList

_STORE_VERSION = 2  # 1: non-RGB-JPEG images were re-encoded; 2: original bytes kept
_BUILDER_VERSION = "1.0.0"


class BadImage(Exception):
    """An image that cannot be used; ``str(e)`` is the reason."""


class StoreError(RuntimeError):
    """A store that cannot be written, resumed or read (message names the path)."""


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How images are written.

    Attributes:
      max_side: re-encode images whose long side exceeds this many pixels (None: keep every
        file's original bytes); changes pixels, see the module docstring.
      jpeg_quality: JPEG quality of re-encoded images.
      shard_size: planned images per shard (the unit of parallelism and of resumption).
      verify_fraction: share of each shard's records fully decoded again after writing (the
        first and last record always are; every record's bytes are hash-checked).
    """

    max_side: int | None = None
    jpeg_quality: int = 90
    shard_size: int = 10_000
    verify_fraction: float = 0.01

    def identity(self) -> dict[str, Any]:
        """The options that determine the stored bytes (a resumed store must match them)."""
        return {"max_side": self.max_side, "jpeg_quality": self.jpeg_quality,
                "shard_size": self.shard_size, "version": _STORE_VERSION}


def key_relpath(key: str) -> str:
    """``train/abc123`` -> ``train/a/b/c/abc123.jpg`` (GLDv2 layout)."""
    split, image_id = key.split("/", 1)
    return f"{split}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def check_image(data: bytes, max_side: int | None = None, quality: int = 90
                ) -> tuple[bytes, str | None]:
    """Validates encoded image bytes by decoding them with OpenCV as training will.

    Returns:
      (bytes to store, what was changed or None): ``data`` itself unless ``max_side`` is set and
      the decoded image's long side exceeds it; then an upright JPEG with that long side.

    Raises:
      BadImage: empty, not an image, truncated, corrupt, or a format OpenCV does not read.
    """
    if not data:
        raise BadImage("empty file")
    try:
        image = decode_image(data)
    except ImageTooLarge as e:
        raise BadImage(e.reason) from None
    except ImageDecodeError:
        fmt = _image_format(data)
        if fmt is None:
            raise BadImage("not an image (unrecognised format)") from None
        raise BadImage(f"truncated or corrupt {fmt} (OpenCV cannot decode it)") from None
    h, w = image.shape[:2]
    if max_side is None or max(w, h) <= max_side:
        return data, None
    scale = max_side / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadImage(f"OpenCV could not re-encode the {w}x{h} image as JPEG")
    return encoded.tobytes(), f"resized {w}x{h}->{new_w}x{new_h} (re-encoded as JPEG)"


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _image_format(data: bytes) -> str | None:
    """The image format named by the first bytes (for error messages), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


# ----------------------------------------------------------------------------- writing


_BUILDER = None


def _shard_builder_cls():
    """The tfds builder class (created lazily so that importing this module stays light)."""
    global _BUILDER
    if _BUILDER is None:
        import tensorflow_datasets as tfds

        class LmrImageShard(tfds.core.GeneratorBasedBuilder):
            """One shard of an lmr-jax image store: encoded image bytes plus their store key."""

            VERSION = tfds.core.Version(_BUILDER_VERSION)
            MANUAL_DOWNLOAD_INSTRUCTIONS = "The image root folder (GLDv2 layout)."

            def __init__(self, *, keys: Sequence[str] = (), options: StoreOptions | None = None,
                         **kwargs):
                self._keys = list(keys)
                self._options = options or StoreOptions()
                self.bad: list[tuple[str, str, str]] = []
                self.changed: list[tuple[str, str]] = []
                self.digests: list[bytes] = []
                self.bytes_in = 0
                super().__init__(**kwargs)

            def _info(self):
                return tfds.core.DatasetInfo(
                    builder=self,
                    features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(),  # the bytes as given
                        "key": tfds.features.Text()}),
                    disable_shuffling=True)

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(Path(dl_manager.manual_dir))}

            def _generate_examples(self, root: Path):
                opt = self._options
                for i, key in enumerate(self._keys):
                    path = root / key_relpath(key)
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        self.bad.append((key, str(path), "missing file"))
                        continue
                    except OSError as e:
                        self.bad.append((key, str(path), f"unreadable: {e.strerror or e}"))
                        continue
                    try:
                        out, change = check_image(data, opt.max_side, opt.jpeg_quality)
                    except BadImage as e:
                        self.bad.append((key, str(path), str(e)))
                        continue
                    if change:
                        self.changed.append((key, change))
                    self.bytes_in += len(data)
                    self.digests.append(hashlib.sha1(out).digest())
                    yield i, {"image": out, "key": key}

        _BUILDER = LmrImageShard
    return _BUILDER


def _done_path(store: Path, shard: int) -> Path:
    return store / "shards" / f"{shard:05d}.done.json"


def _shard_dir(store: Path, shard: int) -> Path:
    return store / "shards" / f"{shard:05d}"


def _dataset_dir(store: Path, shard: int) -> Path:
    return _shard_dir(store, shard) / "lmr_image_shard" / _BUILDER_VERSION


def _quiet_tfds() -> None:
    import absl.logging
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    absl.logging.set_verbosity(absl.logging.WARNING)


def _open_shard(store: Path, shard: int, decode: bool = False):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(_dataset_dir(store, shard)))
    decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split="train", decoders=decoders)


def _write_shard(task: tuple[str, int, list[str], str, StoreOptions]) -> dict[str, Any]:
    """Write, verify and mark one shard (runs in a worker process)."""
    store_s, shard, keys, root, options = task
    store = Path(store_s)
    _quiet_tfds()
    import tensorflow_datasets as tfds

    t0 = time.perf_counter()
    shutil.rmtree(_shard_dir(store, shard), ignore_errors=True)  # partial leftovers
    builder = _shard_builder_cls()(
        keys=keys, options=options, data_dir=str(_shard_dir(store, shard)),
        file_format="array_record")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints a banner per dataset
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=root))
    except Exception:
        if len(builder.bad) != len(keys):  # tfds refuses an empty split; anything else is real
            raise
        shutil.rmtree(_shard_dir(store, shard), ignore_errors=True)
    bad_keys = {b[0] for b in builder.bad}
    kept = [k for k in keys if k not in bad_keys]
    _verify_shard(store, shard, kept, builder.digests, options.verify_fraction)
    info = {
        "shard": shard, "planned": len(keys), "count": len(kept),
        "bad": [{"key": k, "path": p, "reason": r} for k, p, r in builder.bad],
        "changed": [{"key": k, "change": c} for k, c in builder.changed],
        "bytes_in": builder.bytes_in, "seconds": time.perf_counter() - t0,
    }
    done = _done_path(store, shard)
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, done)
    return info


def _verify_shard(store: Path, shard: int, kept: list[str], digests: list[bytes],
                  fraction: float) -> None:
    """Re-read a written shard: count, key order, content hashes, and a decoded sample."""
    where = _dataset_dir(store, shard)
    if not kept:
        if where.exists():
            raise StoreError(f"{where}: shard {shard} should be empty but has data")
        return
    ds = _open_shard(store, shard)
    if len(ds) != len(kept):
        raise StoreError(f"{where}: wrote {len(ds)} records, expected {len(kept)}")
    n = len(kept)
    sample = {0, n - 1}
    if fraction > 0:
        rng = np.random.default_rng(shard)
        k = min(n, int(np.ceil(fraction * n)))
        sample.update(rng.choice(n, size=k, replace=False).tolist())
    for i in range(n):
        rec = ds[i]
        key = rec["key"].decode() if isinstance(rec["key"], bytes) else str(rec["key"])
        if key != kept[i] or hashlib.sha1(rec["image"]).digest() != digests[i]:
            raise StoreError(f"{where}: record {i} does not hold what was written "
                             f"(key {key!r}, expected {kept[i]!r})")
        if i in sample:
            try:
                decode_image(rec["image"])
            except ImageDecodeError as e:
                raise StoreError(f"{where}: record {i} ({key}) does not decode: {e.reason}") from e


@dataclasses.dataclass
class StoreResult:
    """What :func:`write_store` did.

    Attributes:
      num_images: good images in the store.
      bad: [{"key", "path", "reason", "shard"}] images left out, over the whole store.
      changed: number of images re-encoded because of ``max_side``.
      shards_written, shards_skipped: this run's shards and the ones already done.
      images_written: images planned in this run's shards; seconds: wall time of this run.
    """

    num_images: int
    bad: list[dict[str, Any]]
    changed: int
    shards_written: int
    shards_skipped: int
    images_written: int
    seconds: float

    @property
    def bad_keys(self) -> set[str]:
        return {b["key"] for b in self.bad}


def _load_plan(store: Path, keys: np.ndarray, options: StoreOptions) -> None:
    plan = store / "plan.npz"
    if plan.is_file():
        with np.load(plan, allow_pickle=False) as z:
            old_keys, old_opts = z["keys"], json.loads(str(z["options"]))
        if old_opts != options.identity():
            raise StoreError(f"{store}: store was started with options {old_opts}, now "
                             f"{options.identity()}; use a new output folder or delete it")
        if not np.array_equal(old_keys, keys):
            raise StoreError(f"{store}: store was planned for a different set of images "
                             f"({len(old_keys)} planned, {len(keys)} now); use a new output "
                             "folder or delete it")
        return
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / "plan.tmp.npz"
    np.savez(tmp, keys=keys, options=np.array(json.dumps(options.identity())),
             version=np.array(_STORE_VERSION))
    os.replace(tmp, plan)


def _is_done(store: Path, shard: int) -> dict[str, Any] | None:
    done = _done_path(store, shard)
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    if info["count"] and not (_dataset_dir(store, shard) / "dataset_info.json").is_file():
        return None  # marker without data (data deleted): redo the shard
    return info


def write_store(store_dir: str | os.PathLike, keys: Sequence[str], image_root: str | os.PathLike,
                options: StoreOptions = StoreOptions(), workers: int = 1,
                progress: bool = True) -> StoreResult:
    """Write (or resume writing) the images ``keys`` (``split/id``) found under ``image_root``.

    Shards already marked done are not redone. ``workers`` > 1 writes shards in that many
    spawned processes. Bad images are left out and listed in the result (and in each shard's
    ``.done.json``); to retry a bad image after fixing the file, delete that marker.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    store = Path(store_dir)
    keys = np.unique(np.asarray(keys, dtype=str))
    if not len(keys):
        raise StoreError(f"{store}: nothing to write")
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise StoreError(f"{image_root}: image root folder not found")
    _load_plan(store, keys, options)
    ss = options.shard_size
    num_shards = -(-len(keys) // ss)
    infos = {s: info for s in range(num_shards) if (info := _is_done(store, s)) is not None}
    pending = [s for s in range(num_shards) if s not in infos]
    todo = sum(min(ss, len(keys) - s * ss) for s in pending)
    (store / "shards").mkdir(parents=True, exist_ok=True)

    def task(s: int) -> tuple[str, int, list[str], str, StoreOptions]:
        return str(store), s, keys[s * ss:(s + 1) * ss].tolist(), str(image_root), options

    with tqdm(total=todo, unit="img", desc=f"store {store.name}", disable=not progress,
              smoothing=0.1) as bar:
        def done(info: dict[str, Any]) -> None:
            infos[info["shard"]] = info
            bar.update(info["planned"])
            bar.set_postfix(bad=sum(len(i["bad"]) for i in infos.values()), refresh=False)

        if workers <= 1 or len(pending) <= 1:
            for s in pending:
                done(_write_shard(task(s)))
        else:
            _run_parallel(task, pending, workers, done)
    bad = [dict(b, shard=s) for s in range(num_shards) for b in infos[s]["bad"]]
    _write_index(store, keys, ss, num_shards, infos)
    return StoreResult(
        num_images=len(keys) - len(bad), bad=bad,
        changed=sum(len(infos[s]["changed"]) for s in range(num_shards)),
        shards_written=len(pending), shards_skipped=num_shards - len(pending), images_written=todo,
        seconds=time.perf_counter() - t0)


def _run_parallel(task, pending: list[int], workers: int, done) -> None:
    """Run ``_write_shard(task(s))`` for the pending shards in spawned worker processes.

    At most 2 x workers shards are in flight (their key lists are built lazily); a dying worker
    raises ``BrokenProcessPool`` instead of hanging, and an error cancels what has not started.
    """
    ctx = multiprocessing.get_context("spawn")
    todo = iter(pending)
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(pending)),
                                                mp_context=ctx) as pool:
        running: set[concurrent.futures.Future] = set()
        try:
            while True:
                for s in todo:
                    running.add(pool.submit(_write_shard, task(s)))
                    if len(running) >= 2 * workers:
                        break
                if not running:
                    return
                finished, running = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    done(fut.result())
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


def _write_index(store: Path, keys: np.ndarray, ss: int, num_shards: int,
                 infos: dict[int, dict[str, Any]]) -> None:
    out_keys, shard, pos = [], [], []
    for s in range(num_shards):
        part = keys[s * ss:(s + 1) * ss]
        kept = part[~np.isin(part, [b["key"] for b in infos[s]["bad"]])]
        if len(kept) != infos[s]["count"]:
            raise StoreError(f"{_done_path(store, s)}: says {infos[s]['count']} images, plan "
                             f"gives {len(kept)}")
        out_keys.append(kept)
        shard.append(np.full(len(kept), s, np.int32))
        pos.append(np.arange(len(kept), dtype=np.int32))
    tmp = store / "index.tmp.npz"
    np.savez(tmp, keys=np.concatenate(out_keys), shard=np.concatenate(shard),
             pos=np.concatenate(pos))
    os.replace(tmp, store / "index.npz")


# ----------------------------------------------------------------------------- reading


class StoreSource:
    """Random access to the images of an :class:`ImageList` in a prepared store.

    Picklable (for grain worker processes): shard readers are opened lazily per process.
    """

    def __init__(self, image_list: ImageList, store_dir: str | os.PathLike):
        self._store = Path(store_dir)
        self._name = image_list.name
        index_path = self._store / "index.npz"
        if not index_path.is_file():
            raise StoreError(f"{index_path}: not found (store not finished?)")
        with np.load(index_path, allow_pickle=False) as z:
            keys, shard, pos = z["keys"], z["shard"], z["pos"]
        want = image_list.keys()
        loc = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
        found = keys[loc] == want if len(keys) else np.zeros(len(want), bool)
        if not found.all():
            missing = want[~found]
            raise StoreError(f"{self._store}: {len(missing)} of {len(want)} images of list "
                             f"{self._name!r} are not in the store (first: "
                             f"{missing[:3].tolist()}); was the list prepared with this store?")
        self._shard = shard[loc]
        self._pos = pos[loc]
        self._readers: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._shard)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not 0 <= i < len(self._shard):
            raise IndexError(f"{self!r}: index {i} out of range")
        s = int(self._shard[i])
        reader = self._readers.get(s)
        if reader is None:
            reader = self._readers[s] = _open_shard(self._store, s)
        return {"image": reader[int(self._pos[i])]["image"], "index": i}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}

    def __repr__(self) -> str:
        return f"StoreSource({self._name!r}, {len(self)} images, {self._store})"


class FileSource:
    """Random access to image files on disk (direct mode, no preparation).

    Row ``i`` is read from ``root / image_list.relpath(i)``: the GLDv2 ``split/a/b/c/id.jpg``
    path, or the list's explicit ``paths`` (absolute paths ignore ``root``). The bytes are
    returned as they are on disk.
    """

    def __init__(self, image_list: ImageList, root: str | os.PathLike | None):
        self._list = image_list
        self._root = Path(root) if root is not None else Path()

    def __len__(self) -> int:
        return len(self._list)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not 0 <= i < len(self._list):
            raise IndexError(f"{self!r}: index {i} out of range")
        path = self._root / self._list.relpath(i)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OSError(f"{path}: cannot read image {i} of list {self._list.name!r}: "
                          f"{e.strerror or e}") from e
        return {"image": data, "index": i}

    def __repr__(self) -> str:
        return f"FileSource({self._list.name!r}, {len(self)} images, {self._root})"


def open_source(image_list: ImageList, store_dir_or_image_root: str | os.PathLike | None
                ) -> StoreSource | FileSource:
    """A grain-compatible random-access source of ``image_list``'s encoded images.

    ``store_dir_or_image_root`` is a prepared store (``.../store`` or the preparation output
    folder holding ``store/``), or an image root folder in GLDv2 layout (direct mode), or None
    for a list of absolute ``paths``.
    """
    if store_dir_or_image_root is None:
        return FileSource(image_list, None)
    p = Path(store_dir_or_image_root)
    if (p / "plan.npz").is_file():
        return StoreSource(image_list, p)
    if (p / "store" / "plan.npz").is_file():
        return StoreSource(image_list, p / "store")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: neither a prepared store nor an image folder")
    return FileSource(image_list, p)
