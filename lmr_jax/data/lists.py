"""Image lists (training / reference lists) and the retrieval validation set.

An :class:`ImageList` is a small table of images that points into an image store (or into the
GLDv2 folders / explicit files in direct mode); it never holds pixels. Rows are addressed by their
position (the ``index`` of a source record). A :class:`ValidationSet` holds retrieval queries, an
index and the ground truth per query. Both save to and load from a compressed ``.npz`` file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmr_jax.data.geo import CONTINENTS, OTHER

SPLITS: tuple[str, ...] = ("train", "index", "test")
_FORMAT_VERSION = 1


def _str_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros((0,), dtype="<U1")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.dtype.kind == "S":
        a = np.char.decode(a, "utf-8")
    if a.dtype.kind != "U":
        a = a.astype(str)
    return a


def _read_npz(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read {kind} file: {e}") from e
    if "__meta__" not in arrays:
        raise ValueError(f"{path}: not a {kind} file (no metadata)")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: holds a {meta.get('kind')!r}, expected a {kind!r}")
    if meta.get("version", 0) > _FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta['version']} is newer than this code")
    return meta, arrays


def _write_npz(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, __meta__=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def gldv2_relpath(split: str, image_id: str) -> str:
    """Path of an image inside the official GLDv2 layout: ``train/a/b/c/abc123.jpg``."""
    return f"{split}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


@dataclasses.dataclass(eq=False)
class ImageList:
    """A list of images with labels, noisy flags and geography; ``N`` rows.

    Attributes:
      ids: (N,) str image ids (GLDv2: 16 hex characters).
      labels: (N,) int32 global labels in [0, num_classes); -1 = non-landmark.
      noisy: (N,) bool, True for images outside the cleaned GLDv2 subset.
      countries: (N,) str two-letter country code of the label's landmark, '' when unknown.
      continents: (N,) str one of :data:`lmr_jax.data.geo.CONTINENTS`.
      num_classes: number of labels of the classifier trained on this list.
      name: list name (``clean``, ``c2x``, ``full``, ``all``, ...).
      splits: (N,) str GLDv2 folder of each image (``train``, ``index`` or ``test``); defaults to
        ``train``. Together with ``ids`` it names the image in a store (:meth:`keys`).
      paths: optional (N,) str explicit image files for direct mode (absolute, or relative to the
        root given to :func:`lmr_jax.data.store.open_source`); None for GLDv2 images.
    """

    ids: np.ndarray
    labels: np.ndarray
    noisy: np.ndarray
    countries: np.ndarray
    continents: np.ndarray
    num_classes: int
    name: str
    splits: np.ndarray | None = None
    paths: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = _str_array(self.ids, "ids")
        n = len(self.ids)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        self.noisy = np.asarray(self.noisy, dtype=bool).reshape(-1)
        self.countries = _str_array(self.countries, "countries")
        self.continents = _str_array(self.continents, "continents")
        if self.splits is None:
            self.splits = np.full((n,), "train")
        self.splits = _str_array(self.splits, "splits")
        if self.paths is not None:
            self.paths = _str_array(self.paths, "paths")
        self.num_classes = int(self.num_classes)
        fields = {"labels": self.labels, "noisy": self.noisy, "countries": self.countries,
                  "continents": self.continents, "splits": self.splits}
        if self.paths is not None:
            fields["paths"] = self.paths
        for k, v in fields.items():
            if len(v) != n:
                raise ValueError(f"ImageList {self.name!r}: {k} has {len(v)} rows, ids has {n}")
        if n:
            if self.labels.min() < -1 or self.labels.max() >= max(self.num_classes, 0):
                raise ValueError(f"ImageList {self.name!r}: labels must lie in [-1, "
                                 f"{self.num_classes}), got [{self.labels.min()}, "
                                 f"{self.labels.max()}]")
            bad = np.setdiff1d(np.unique(self.continents), CONTINENTS)
            if bad.size:
                raise ValueError(f"ImageList {self.name!r}: unknown continents {bad.tolist()}")
            bad = np.setdiff1d(np.unique(self.splits), SPLITS)
            if bad.size:
                raise ValueError(f"ImageList {self.name!r}: unknown splits {bad.tolist()}")

    def __len__(self) -> int:
        return len(self.ids)

    def keys(self) -> np.ndarray:
        """(N,) str store keys ``split/id``."""
        return np.char.add(np.char.add(self.splits, "/"), self.ids)

    def relpath(self, row: int) -> str:
        """Path of row ``row`` relative to the image root (GLDv2 layout, or its explicit path)."""
        if self.paths is not None:
            return str(self.paths[row])
        return gldv2_relpath(str(self.splits[row]), str(self.ids[row]))

    def select(self, rows: np.ndarray | Sequence[int], name: str | None = None) -> ImageList:
        """The sub-list of the given rows (a boolean mask or integer positions), same labels."""
        rows = np.asarray(rows)
        return ImageList(
            ids=self.ids[rows], labels=self.labels[rows], noisy=self.noisy[rows],
            countries=self.countries[rows], continents=self.continents[rows],
            num_classes=self.num_classes, name=name or self.name, splits=self.splits[rows],
            paths=None if self.paths is None else self.paths[rows])

    def labelled(self) -> ImageList:
        """Rows with a landmark label (drops the label -1 non-landmark rows)."""
        return self.select(self.labels >= 0)

    def stats(self) -> dict[str, int]:
        """Counts: images, distinct labels, noisy images, label -1 rows, rows without country."""
        return {
            "images": len(self),
            "labels": int(np.unique(self.labels[self.labels >= 0]).size),
            "num_classes": self.num_classes,
            "noisy": int(self.noisy.sum()),
            "non_landmark": int((self.labels < 0).sum()),
            "no_country": int((self.countries == "").sum()),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the list to ``path`` (compressed .npz, written atomically)."""
        arrays = {"ids": self.ids, "labels": self.labels, "noisy": self.noisy,
                  "countries": self.countries, "continents": self.continents,
                  "splits": self.splits}
        if self.paths is not None:
            arrays["paths"] = self.paths
        meta = {"kind": "ImageList", "version": _FORMAT_VERSION, "name": self.name,
                "num_classes": self.num_classes}
        _write_npz(path, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageList:
        """Read a list written by :meth:`save`."""
        meta, a = _read_npz(path, "ImageList")
        return cls(ids=a["ids"], labels=a["labels"], noisy=a["noisy"], countries=a["countries"],
                   continents=a["continents"], num_classes=meta["num_classes"],
                   name=meta["name"], splits=a["splits"], paths=a.get("paths"))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], labels: Sequence[int] | None = None,
                   name: str = "files") -> ImageList:
        """A direct-mode list of image files (no preparation needed); ids are the file stems.

        Labels default to -1 (unlabelled); countries '' and continents OTHER.
        """
        paths = np.asarray([os.fspath(p) for p in paths], dtype=str)
        n = len(paths)
        labels = np.full((n,), -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        return cls(ids=[Path(p).stem for p in paths], labels=labels, noisy=np.zeros(n, bool),
                   countries=np.full(n, ""), continents=np.full(n, OTHER),
                   num_classes=int(labels.max()) + 1 if n else 0, name=name, paths=paths)


@dataclasses.dataclass(eq=False)
class ValidationSet:
    """Retrieval validation: Q queries, an index of M images and the ground truth per query.

    Attributes:
      query_ids: (Q,) str test image ids of the queries.
      usage: (Q,) str ``Public`` or ``Private``.
      index_ids: (M,) str index image ids (every ground-truth image is among them).
      gt_offsets: (Q+1,) int64; the ground truth of query q is
        ``index_ids[gt_rows[gt_offsets[q]:gt_offsets[q+1]]]``.
      gt_rows: (K,) int32 rows into ``index_ids``.
      name: a name for messages.
    """

    query_ids: np.ndarray
    usage: np.ndarray
    index_ids: np.ndarray
    gt_offsets: np.ndarray
    gt_rows: np.ndarray
    name: str = "validation"

    def __post_init__(self) -> None:
        self.query_ids = _str_array(self.query_ids, "query_ids")
        self.usage = _str_array(self.usage, "usage")
        self.index_ids = _str_array(self.index_ids, "index_ids")
        self.gt_offsets = np.asarray(self.gt_offsets, dtype=np.int64).reshape(-1)
        self.gt_rows = np.asarray(self.gt_rows, dtype=np.int32).reshape(-1)
        q = len(self.query_ids)
        if len(self.usage) != q or len(self.gt_offsets) != q + 1:
            raise ValueError(f"ValidationSet {self.name!r}: {q} queries but {len(self.usage)} "
                             f"usages and {len(self.gt_offsets)} offsets (expected {q + 1})")
        if self.gt_offsets[0] != 0 or self.gt_offsets[-1] != len(self.gt_rows) or (
                np.diff(self.gt_offsets) < 0).any():
            raise ValueError(f"ValidationSet {self.name!r}: gt_offsets are not a valid CSR index")
        if len(self.gt_rows) and (self.gt_rows.min() < 0
                                  or self.gt_rows.max() >= len(self.index_ids)):
            raise ValueError(f"ValidationSet {self.name!r}: gt_rows point outside the index")

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    def ground_truth_rows(self, q: int) -> np.ndarray:
        """Rows into ``index_ids`` of query ``q``'s ground truth."""
        return self.gt_rows[self.gt_offsets[q]:self.gt_offsets[q + 1]]

    def ground_truth(self, q: int) -> np.ndarray:
        """(K_q,) str index ids of query ``q``'s ground truth."""
        return self.index_ids[self.ground_truth_rows(q)]

    def gt_dict(self) -> dict[str, list[str]]:
        """{query id: [ground-truth index ids]}."""
        return {str(qid): self.ground_truth(q).tolist() for q, qid in enumerate(self.query_ids)}

    def query_list(self) -> ImageList:
        """The queries as an unlabelled :class:`ImageList` of the ``test`` split."""
        return _unlabelled(self.query_ids, "test", f"{self.name}_queries")

    def index_list(self) -> ImageList:
        """The index as an unlabelled :class:`ImageList` of the ``index`` split."""
        return _unlabelled(self.index_ids, "index", f"{self.name}_index")

    @classmethod
    def from_ground_truth(cls, query_ids: Sequence[str], usage: Sequence[str],
                          ground_truth: Sequence[Sequence[str]], index_ids: Sequence[str],
                          name: str = "validation") -> ValidationSet:
        """Build from per-query lists of index ids; each must be in ``index_ids``."""
        index_ids = _str_array(list(index_ids), "index_ids")
        pos = {k: i for i, k in enumerate(index_ids.tolist())}
        if len(pos) != len(index_ids):
            raise ValueError(f"ValidationSet {name!r}: index ids are not unique")
        rows, offsets = [], [0]
        for qid, gt in zip(query_ids, ground_truth, strict=True):
            missing = [g for g in gt if g not in pos]
            if missing:
                raise ValueError(f"ValidationSet {name!r}: ground truth of query {qid} is not in "
                                 f"the index: {missing[:5]}")
            rows.extend(pos[g] for g in gt)
            offsets.append(len(rows))
        return cls(query_ids=list(query_ids), usage=list(usage), index_ids=index_ids,
                   gt_offsets=offsets, gt_rows=rows, name=name)

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (compressed .npz, written atomically)."""
        meta = {"kind": "ValidationSet", "version": _FORMAT_VERSION, "name": self.name}
        _write_npz(path, meta, {"query_ids": self.query_ids, "usage": self.usage,
                                "index_ids": self.index_ids, "gt_offsets": self.gt_offsets,
                                "gt_rows": self.gt_rows})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ValidationSet:
        """Read a validation set written by :meth:`save`."""
        meta, a = _read_npz(path, "ValidationSet")
        return cls(name=meta["name"], **a)


def _unlabelled(ids: np.ndarray, split: str, name: str) -> ImageList:
    n = len(ids)
    return ImageList(ids=ids, labels=np.full(n, -1, np.int32), noisy=np.zeros(n, bool),
                     countries=np.full(n, ""), continents=np.full(n, OTHER), num_classes=0,
                     name=name, splits=np.full(n, split))


LABEL_TABLE_NAME = "labels.csv"
LABEL_TABLE_HEADER = ("label", "landmark_id", "country")


class LabelTableError(ValueError):
    """A missing or malformed label table; the message names the file and says what to do."""


@dataclasses.dataclass
class LabelTable:
    """The map from the lists' global labels to GLDv2 landmark ids (and their countries).

    Labels are lmr-jax's class numbers (0 .. C-1, the classifier rows); GLDv2, its solution
    files and Kaggle name landmarks by ``landmark_id``. Saved as ``labels.csv`` (header
    ``label,landmark_id,country``, one row per label in label order) beside the prepared lists.

    Attributes:
      landmark_ids: (C,) int64 GLDv2 train landmark id of each label.
      countries: (C,) str two-letter country code of each label, '' when unknown.
    """

    landmark_ids: np.ndarray
    countries: np.ndarray

    def __post_init__(self) -> None:
        self.landmark_ids = np.asarray(self.landmark_ids, np.int64).reshape(-1)
        self.countries = _str_array(self.countries, "countries")
        if len(self.countries) != len(self.landmark_ids):
            raise ValueError(f"label table: {len(self.landmark_ids)} landmark ids but "
                             f"{len(self.countries)} countries")

    def __len__(self) -> int:
        return len(self.landmark_ids)

    def landmark_of(self, labels: np.ndarray) -> np.ndarray:
        """GLDv2 landmark ids of ``labels`` (any shape); negative labels (no landmark) stay -1."""
        labels = np.asarray(labels, np.int64)
        if labels.size and labels.max(initial=-1) >= len(self):
            raise LabelTableError(f"label {int(labels.max())} is not in the label table "
                                  f"({len(self)} labels): the lists and the table differ")
        return np.where(labels >= 0, self.landmark_ids[np.maximum(labels, 0)], -1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the CSV at ``path`` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(LABEL_TABLE_HEADER)
            for label, (lid, country) in enumerate(zip(self.landmark_ids.tolist(),
                                                       self.countries.tolist(), strict=True)):
                w.writerow([label, lid, country])
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelTable:
        """Read a table written by :meth:`save`.

        Raises:
          LabelTableError: no such file (a folder prepared before the table existed: the
            message says to run scripts/prepare_gldv2.py again), or a malformed row
            (``file:line``).
        """
        path = Path(path)
        if not path.is_file():
            raise LabelTableError(
                f"{path}: no label table (label -> GLDv2 landmark_id). Lists prepared by an "
                "older lmr-jax lack it: run scripts/prepare_gldv2.py again with the same "
                "--gldv2 and --out (the image store is kept; only the lists are rewritten)")
        ids, countries = [], []
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is allowed
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != LABEL_TABLE_HEADER:
                raise LabelTableError(f"{path}:1: expected header "
                                      f"{','.join(LABEL_TABLE_HEADER)!r}, got {header}")
            for line, row in enumerate(reader, start=2):
                try:
                    if len(row) != len(LABEL_TABLE_HEADER):
                        raise ValueError(f"{len(row)} columns")
                    label, lid = int(row[0]), int(row[1])
                    country = row[2]
                except ValueError:
                    raise LabelTableError(f"{path}:{line}: expected label,landmark_id,country, "
                                          f"got {row}") from None
                if label != len(ids):
                    raise LabelTableError(f"{path}:{line}: label {label} out of order "
                                          f"(expected {len(ids)})")
                ids.append(lid)
                countries.append(country)
        return cls(np.asarray(ids, np.int64), np.asarray(countries, dtype=str))

    @classmethod
    def beside(cls, list_path: str | os.PathLike) -> LabelTable:
        """The table saved with the prepared list at ``list_path`` (``lists/labels.csv``)."""
        return cls.load(Path(list_path).parent / LABEL_TABLE_NAME)
