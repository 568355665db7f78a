"""Readers of the official GLDv2 metadata CSVs, each row checked.

Files and columns::

    train/train.csv                     id,url,landmark_id
    train/train_clean.csv               landmark_id,images      (images: space-separated ids)
    train/train_label_to_category.csv   landmark_id,category    (Wikimedia Commons category URL)
    index/index.csv                     id                      (optional: all index images)
    index/index_image_to_landmark.csv   id,landmark_id          (index landmark ids != train ids)
    index/index_label_to_category.csv   landmark_id,category
    test/retrieval_solution_v2.1.csv    id,images,Usage         (Usage: Public, Private, Ignored)

Malformed input raises :class:`GldFormatError` with ``file:line``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

USAGES = ("Public", "Private", "Ignored")
_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{2,}")


class GldFormatError(ValueError):
    """A malformed GLDv2 metadata file; the message starts with ``file:line``."""


def _rows(path: Path, header: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each data row of a CSV, after checking its header."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise GldFormatError(f"{path}: cannot open: {e.strerror or e}") from e
    with f:
        reader = csv.reader(f, strict=True)
        try:
            first = next(reader, None)
            if first is None:
                raise GldFormatError(f"{path}: empty file, expected header {','.join(header)}")
            if [h.strip() for h in first] != list(header):
                raise GldFormatError(f"{path}:1: expected header {','.join(header)!r}, "
                                     f"got {','.join(first)!r}")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise GldFormatError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields "
                        f"({','.join(header)}), got {len(row)}: {','.join(row)[:200]!r}")
                yield reader.line_num, row
        except csv.Error as e:
            raise GldFormatError(f"{path}:{reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise GldFormatError(f"{path}: not UTF-8 text: {e}") from e


def _image_id(s: str, where: str) -> str:
    s = s.strip()
    if not _ID_RE.fullmatch(s):
        raise GldFormatError(f"{where}: {s!r} is not an image id")
    return s


def _landmark_id(s: str, where: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise GldFormatError(f"{where}: landmark_id {s!r} is not an integer") from None
    if v < 0:
        raise GldFormatError(f"{where}: landmark_id {v} is negative")
    return v


def _check_unique(ids: np.ndarray, lines: np.ndarray, path: Path) -> None:
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise GldFormatError(f"{path}:{lines[b]}: image {ids[b]} already listed at line {lines[a]}")


def _read_image_landmarks(path: str | os.PathLike, columns: tuple[str, ...]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A CSV whose first column is an image id and last a landmark id -> (ids, landmark ids)
    in file order, ids checked unique."""
    path = Path(path)
    ids, lids, lines = [], [], []
    for line, row in _rows(path, columns):
        ids.append(_image_id(row[0], f"{path}:{line}"))
        lids.append(_landmark_id(row[-1], f"{path}:{line}"))
        lines.append(line)
    ids_a = np.asarray(ids, dtype=str)
    _check_unique(ids_a, np.asarray(lines), path)
    return ids_a, np.asarray(lids, dtype=np.int64)


def read_train_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """train.csv -> ids (N,) str, landmark ids (N,) int64 in file order."""
    return _read_image_landmarks(path, ("id", "url", "landmark_id"))


def read_train_clean(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """train_clean.csv -> [(landmark id, [image ids])] in file order."""
    path = Path(path)
    out, seen = [], {}
    for line, (lid, images) in _rows(path, ("landmark_id", "images")):
        where = f"{path}:{line}"
        lid = _landmark_id(lid, where)
        if lid in seen:
            raise GldFormatError(f"{where}: landmark {lid} already listed at line {seen[lid]}")
        seen[lid] = line
        ids = [_image_id(i, where) for i in images.split()]
        if not ids:
            raise GldFormatError(f"{where}: landmark {lid} lists no images")
        out.append((lid, ids))
    return out


def read_label_to_category(path: str | os.PathLike) -> list[tuple[int, str]]:
    """*_label_to_category.csv -> [(landmark id, category URL)] in file order."""
    path = Path(path)
    out = []
    for line, (lid, category) in _rows(path, ("landmark_id", "category")):
        if not category.strip():
            raise GldFormatError(f"{path}:{line}: empty category")
        out.append((_landmark_id(lid, f"{path}:{line}"), category.strip()))
    return out


def read_image_to_landmark(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """index_image_to_landmark.csv -> ids (N,) str, index landmark ids (N,) int64."""
    return _read_image_landmarks(path, ("id", "landmark_id"))


def read_id_list(path: str | os.PathLike) -> np.ndarray:
    """A one-column ``id`` CSV (index.csv, test.csv) -> ids (N,) str."""
    path = Path(path)
    return np.asarray([_image_id(r[0], f"{path}:{line}") for line, r in _rows(path, ("id",))],
                      dtype=str)


@dataclasses.dataclass
class SolutionRow:
    """One row of retrieval_solution_v2.1.csv; ``images`` is None for Ignored queries."""

    query_id: str
    images: list[str] | None
    usage: str
    line: int


def read_retrieval_solution(path: str | os.PathLike) -> list[SolutionRow]:
    """retrieval_solution_v2.1.csv -> rows in file order."""
    path = Path(path)
    out, seen = [], {}
    for line, (qid, images, usage) in _rows(path, ("id", "images", "Usage")):
        where = f"{path}:{line}"
        qid = _image_id(qid, where)
        if qid in seen:
            raise GldFormatError(f"{where}: query {qid} already listed at line {seen[qid]}")
        seen[qid] = line
        usage = usage.strip()
        if usage not in USAGES:
            raise GldFormatError(f"{where}: Usage {usage!r} is not one of {', '.join(USAGES)}")
        images = images.strip()
        if usage == "Ignored":
            gt = None
        elif images in ("", "None"):
            raise GldFormatError(f"{where}: {usage} query {qid} has no ground-truth images")
        else:
            gt = [_image_id(i, where) for i in images.split()]
        out.append(SolutionRow(qid, gt, usage, line))
    return out

