"""On-disk feature sets: resumable shards during extraction, one memory-mappable matrix after.

Layout of a feature folder::

    config.json           what is being extracted (checked when a run resumes)
    shards/000000.npz     rows (n,) int64, feats (n, D), bad_rows (m,) int64, bad_reasons (m,)
    features.npy          (N_ok, D) float16 or float32, rows in list order, bad images left out
    ids.txt               N_ok image ids, one per line, aligned with features.npy
    failed.txt            "<id>\t<reason>" for every image that could not be embedded
    meta.json             written last: {"done": true, ...}

Every file is written to a temporary name and renamed, so a killed run leaves only complete
files behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


class FeatureStoreError(RuntimeError):
    """A feature folder that does not fit the request (other config, missing files)."""


@dataclasses.dataclass
class FeatureSet:
    """ids (N,) str and feats (N, D) (a read-only memory map when loaded with ``mmap``)."""

    ids: np.ndarray
    feats: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def shard_path(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / "shards" / f"{shard:06d}.npz"


def prepare(out_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Create ``out_dir`` for ``config``, or check that an existing run used the same config."""
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    text = json.dumps(config, sort_keys=True, indent=1)
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != json.loads(text):
            diff = {k: (old.get(k), config.get(k)) for k in set(old) | set(config)
                    if old.get(k) != config.get(k)}
            raise FeatureStoreError(f"{out}: holds a run with another configuration {diff}; "
                                    "use another output folder")
    else:
        _atomic_write_text(cfg_path, text)


def is_done(out_dir: str | os.PathLike) -> bool:
    meta = Path(out_dir) / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("done", False)


def write_shard(out_dir: str | os.PathLike, shard: int, rows: np.ndarray, feats: np.ndarray,
                bad_rows: np.ndarray, bad_reasons: list[str]) -> None:
    """Write one shard atomically (temporary file, then rename)."""
    path = shard_path(out_dir, shard)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, rows=np.asarray(rows, np.int64), feats=feats,
             bad_rows=np.asarray(bad_rows, np.int64), bad_reasons=np.asarray(bad_reasons, str))
    os.replace(tmp, path)


def shard_done(out_dir: str | os.PathLike, shard: int) -> bool:
    return shard_path(out_dir, shard).exists()


def shard_failures(out_dir: str | os.PathLike, num_shards: int) -> list[tuple[int, str]]:
    """(row, reason) of the failed images of the shards written so far."""
    out = []
    for s in range(num_shards):
        if shard_done(out_dir, s):
            with np.load(shard_path(out_dir, s)) as z:
                out.extend(zip(z["bad_rows"].tolist(), z["bad_reasons"].tolist(), strict=True))
    return out


def write_failed(out_dir: str | os.PathLike, ids: np.ndarray,
                 failures: list[tuple[int, str]]) -> None:
    """``failed.txt``: ``<id>\t<reason>`` of every (row, reason), in row order."""
    _atomic_write_text(Path(out_dir) / "failed.txt",
                       "".join(f"{ids[r]}\t{reason}\n" for r, reason in sorted(failures)))


def finalize(out_dir: str | os.PathLike, num_shards: int, ids: np.ndarray, dim: int,
             dtype: str, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Join the shards into features.npy / ids.txt / failed.txt and write meta.json last.

    Args:
      ids: (N,) image ids of the list rows (shards store row numbers).
    """
    out = Path(out_dir)
    missing = [s for s in range(num_shards) if not shard_done(out, s)]
    if missing:
        raise FeatureStoreError(f"{out}: shards {missing[:10]} are missing; run extraction again")
    counts, bad = [], []
    for s in range(num_shards):
        with np.load(shard_path(out, s)) as z:
            counts.append(len(z["rows"]))
            bad.extend(zip(z["bad_rows"].tolist(), z["bad_reasons"].tolist(), strict=True))
    total = int(sum(counts))
    tmp = out / "features.tmp.npy"
    mm = np.lib.format.open_memmap(tmp, "w+", np.dtype(dtype), (total, dim))
    kept_rows = np.empty(total, np.int64)
    pos = 0
    for s in range(num_shards):
        with np.load(shard_path(out, s)) as z:
            n = len(z["rows"])
            mm[pos:pos + n] = z["feats"]
            kept_rows[pos:pos + n] = z["rows"]
            pos += n
    mm.flush()
    del mm
    os.replace(tmp, out / "features.npy")
    _atomic_write_text(out / "ids.txt", "".join(f"{i}\n" for i in ids[kept_rows]))
    write_failed(out, ids, bad)
    meta = {"done": True, "num_images": total, "num_failed": len(bad), "dim": dim,
            "dtype": dtype, **(extra_meta or {})}
    _atomic_write_text(out / "meta.json", json.dumps(meta, sort_keys=True, indent=1))
    return meta


def load_features(path: str | os.PathLike, mmap: bool = True) -> FeatureSet:
    """Load a finished feature folder (features.npy memory-mapped by default)."""
    p = Path(path)
    if not is_done(p):
        raise FeatureStoreError(f"{p}: not a finished feature folder (no meta.json with done)")
    feats = np.load(p / "features.npy", mmap_mode="r" if mmap else None)
    ids = np.asarray((p / "ids.txt").read_text().split("\n")[:-1], dtype=str)
    if len(ids) != feats.shape[0]:
        raise FeatureStoreError(f"{p}: {len(ids)} ids for {feats.shape[0]} feature rows")
    return FeatureSet(ids, feats, json.loads((p / "meta.json").read_text()))


def failed_images(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, reason) of every image of a finished run that got no feature."""
    text = (Path(path) / "failed.txt").read_text()
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line]


def positions_of(wanted: np.ndarray, ids: np.ndarray, what: str = "ids") -> np.ndarray:
    """Positions in ``ids`` of every id of ``wanted`` (vectorised; an absent id is an error)."""
    ids = np.asarray(ids, dtype=str)
    wanted = np.asarray(wanted, dtype=str)
    order = np.argsort(ids, kind="stable")
    srt = ids[order]
    pos = np.minimum(np.searchsorted(srt, wanted), max(len(ids) - 1, 0))
    found = srt[pos] == wanted if len(ids) else np.zeros(len(wanted), bool)
    if not np.all(found):
        missing = wanted[~found]
        raise FeatureStoreError(f"{len(missing)} {what} not found, e.g. {missing[:5].tolist()}")
    return order[pos] if len(ids) else np.zeros(0, np.int64)


def save_features(out_dir: str | os.PathLike, ids: np.ndarray, feats: np.ndarray,
                  dtype: str = "float16", meta: dict[str, Any] | None = None) -> FeatureSet:
    """Write arrays as a finished feature folder (one shard); returns it loaded."""
    ids = np.asarray(ids, dtype=str)
    if len(ids) != len(feats):
        raise ValueError(f"{len(ids)} ids for {len(feats)} feature rows")
    prepare(out_dir, {"saved": True, **(meta or {})})
    write_shard(out_dir, 0, np.arange(len(ids)), np.asarray(feats).astype(dtype),
                np.zeros(0, np.int64), [])
    finalize(out_dir, 1, ids, int(np.asarray(feats).shape[1]), dtype, meta)
    return load_features(out_dir)
