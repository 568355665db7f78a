"""Google Landmarks Dataset v2: reading the official CSVs and building the training lists.

Official layout under a root folder (images sharded by the first three characters of the id)::

    train/train.csv                     id,url,landmark_id
    train/train_clean.csv               landmark_id,images      (images: space-separated ids)
    train/train_label_to_category.csv   landmark_id,category    (Wikimedia Commons category URL)
    train/country/country_codes.json    + one <CODE>.json per country (optional)
    index/index.csv                     id                      (optional: all index images)
    index/index_image_to_landmark.csv   id,landmark_id          (index landmark ids != train ids)
    index/index_label_to_category.csv   landmark_id,category
    test/retrieval_solution_v2.1.csv    id,images,Usage         (Usage: Public, Private, Ignored)
    {train,index,test}/a/b/c/abc....jpg

Lists (semantics of the reference ``tools/generate_gld_list.py``):

* ``clean``: train_clean.csv rows in file order; global label = row number; never noisy.
* ``c2x``: every train.csv image whose landmark is in clean, in train.csv order; noisy = the
  image is not listed in its landmark's train_clean row.
* ``full``: all of train.csv; landmarks not in clean get labels num_clean, num_clean+1, ... in
  order of first appearance; noisy as in c2x, and always for landmarks not in clean.
* ``all``: full, then every image of index_image_to_landmark.csv whose landmark's category is a
  train landmark's category (label of that train landmark, not noisy), then the test queries of
  retrieval_solution_v2.1.csv in file order: a Public/Private query once per distinct train
  label among its ground-truth images (first-appearance order), an Ignored (non-landmark)
  query once with label -1 (country '', continent OTHER). The reference code keeps these -1
  rows, so we do too; :meth:`ImageList.labelled` drops them.

Categories are matched with :func:`lmr_jax.data.geo.category_key`; when several train landmarks
share a category the last one in train_label_to_category.csv wins (as in the reference).

Validation: the Public and Private queries with their ground truth, against an index made of
every ground-truth image plus distractors: the index ids given by the caller (e.g. the 2021
competition's 76,176-image index), or else a seeded sample of the other GLDv2 index images.

Malformed input raises :class:`GldFormatError` with ``file:line``.

Preparation (:func:`prepare`, ``scripts/prepare_gldv2.py``) writes into an output folder::

    store/                 every image of the lists and of the validation set once
                           (:mod:`lmr_jax.data.store`; resumable, parallel, verified)
    lists/{clean,c2x,full,all}.npz   ImageLists without the bad images
    lists/labels.csv       label -> GLDv2 landmark_id and country (lists.LabelTable)
    validation.npz         ValidationSet without bad queries / index images
    report.json            summary, losses per list and every bad image with path and reason

and stops with :class:`PreparationError` (keeping the store and the report, writing no lists)
when a list or the validation set loses more than ``max_bad_fraction`` of its images.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from lmr_jax.data import geo
from lmr_jax.data.lists import LABEL_TABLE_NAME, ImageList, LabelTable, ValidationSet
from lmr_jax.data.store import StoreOptions, write_store

USAGES = ("Public", "Private", "Ignored")
LIST_NAMES = ("clean", "c2x", "full", "all")
# Size of the Kaggle 2021 retrieval index that the reference validation index extends.
DEFAULT_VAL_DISTRACTORS = 76_176
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


@dataclasses.dataclass
class GldLists:
    """Everything :func:`build_lists` derives from the metadata.

    Attributes:
      lists: {name: ImageList} for ``clean``, ``c2x``, ``full``, ``all``.
      validation: the retrieval validation set.
      label_landmark: (num_classes,) int64 train landmark id of each global label.
      label_country: (num_classes,) str country of each global label ('' unknown).
      notes: counts of things that were skipped or missing (for the summary / report).
    """

    lists: dict[str, ImageList]
    validation: ValidationSet
    label_landmark: np.ndarray
    label_country: np.ndarray
    notes: dict[str, int]


def _first(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise GldFormatError(f"{root}: none of {', '.join(candidates)} found (is this the GLDv2 "
                         "root folder with train/, index/ and test/?)")


def default_country_dir(root: str | os.PathLike) -> Path | None:
    """``train/country`` (or ``country``) under the GLDv2 root when it has country_codes.json."""
    for c in ("train/country", "country"):
        if (Path(root) / c / "country_codes.json").is_file():
            return Path(root) / c
    return None


def build_lists(
    root: str | os.PathLike,
    *,
    country_by_category: Mapping[str, str] | None = None,
    country_by_landmark: Mapping[int, str] | None = None,
    continents: Mapping[str, str] | None = None,
    val_index_ids: Sequence[str] | None = None,
    val_distractors: int = DEFAULT_VAL_DISTRACTORS,
    seed: int = 0,
) -> GldLists:
    """Read the GLDv2 metadata under ``root`` and build the lists and the validation set.

    Args:
      root: GLDv2 root folder (official layout, see the module docstring).
      country_by_category: category key -> country code (:func:`geo.load_country_dir`).
      country_by_landmark: train landmark id -> country code (:func:`geo.load_country_csv`);
        takes precedence over ``country_by_category``.
      continents: country -> continent table (default: the shipped table).
      val_index_ids: base index ids of the validation set (ground truth is always added).
      val_distractors: without ``val_index_ids``, how many other index images to sample.
      seed: seed of that sample.
    """
    root = Path(root)
    continents = geo.continent_table() if continents is None else continents
    notes: dict[str, int] = {}

    # clean: labels = row order of train_clean.csv.
    clean_rows = read_train_clean(_first(root, "train/train_clean.csv", "train_clean.csv"))
    clean_label = {lid: g for g, (lid, _) in enumerate(clean_rows)}
    num_clean = len(clean_rows)
    clean_ids = np.asarray([i for _, ids in clean_rows for i in ids], dtype=str)
    clean_lab = np.repeat(np.arange(num_clean, dtype=np.int64), [len(i) for _, i in clean_rows])
    clean_lids = np.asarray([lid for lid, _ in clean_rows], dtype=np.int64)[clean_lab]

    # full / c2x from train.csv.
    train_ids, train_lids = read_train_csv(_first(root, "train/train.csv", "train.csv"))
    uniq, first, inv = np.unique(train_lids, return_index=True, return_inverse=True)
    in_clean_u = np.isin(uniq, clean_lids)
    new_order = np.argsort(first[~in_clean_u], kind="stable")
    label_u = np.empty(len(uniq), np.int64)
    label_u[in_clean_u] = [clean_label[int(x)] for x in uniq[in_clean_u]]
    new_labels = np.empty(int((~in_clean_u).sum()), np.int64)
    new_labels[new_order] = num_clean + np.arange(len(new_order))
    label_u[~in_clean_u] = new_labels
    num_classes = num_clean + len(new_order)
    full_lab = label_u[inv]
    in_clean_landmark = in_clean_u[inv]
    # An image is clean when its own landmark's train_clean row lists it.
    clean_pairs = np.char.add(np.char.add(clean_ids, "|"), clean_lab.astype(str))
    full_pairs = np.char.add(np.char.add(train_ids, "|"), full_lab.astype(str))
    full_clean = np.isin(full_pairs, clean_pairs) & in_clean_landmark
    notes["clean_images_not_in_train_csv"] = int((~np.isin(clean_ids, train_ids)).sum())

    label_landmark = np.empty(num_classes, np.int64)
    label_landmark[label_u] = uniq
    label_landmark[:num_clean] = [lid for lid, _ in clean_rows]

    # Categories, countries and continents per global label.
    lid_to_label = dict(zip(label_landmark.tolist(), range(num_classes), strict=True))
    cat_to_label: dict[str, int] = {}
    label_category = [""] * num_classes
    train_cats = read_label_to_category(
        _first(root, "train/train_label_to_category.csv", "train_label_to_category.csv"))
    for lid, cat in train_cats:
        if lid in lid_to_label:
            key = geo.category_key(cat)
            cat_to_label[key] = lid_to_label[lid]
            label_category[lid_to_label[lid]] = key
    notes["labels_without_category"] = sum(1 for c in label_category if not c)
    label_country = np.full(num_classes, "", dtype="<U2")
    for g in range(num_classes):
        if country_by_landmark is not None:
            code = country_by_landmark.get(int(label_landmark[g]), "")
        else:
            code = (country_by_category or {}).get(label_category[g], "")
        label_country[g] = code
    notes["labels_without_country"] = int((label_country == "").sum())
    label_continent = np.asarray([geo.continent_of(c, continents) for c in label_country.tolist()],
                                 dtype="<U13")

    def make(name: str, ids, labels, noisy, splits, n_classes: int) -> ImageList:
        labels = np.asarray(labels, np.int64)
        lab = np.maximum(labels, 0)
        countries = np.where(labels >= 0, label_country[lab], "")
        conts = np.where(labels >= 0, label_continent[lab], geo.OTHER)
        return ImageList(ids=ids, labels=labels, noisy=noisy, countries=countries,
                         continents=conts, num_classes=n_classes, name=name, splits=splits)

    n_train = len(train_ids)
    lists = {
        "clean": make("clean", clean_ids, clean_lab, np.zeros(len(clean_ids), bool),
                      np.full(len(clean_ids), "train"), num_clean),
        "c2x": make("c2x", train_ids[in_clean_landmark], full_lab[in_clean_landmark],
                    ~full_clean[in_clean_landmark], np.full(int(in_clean_landmark.sum()), "train"),
                    num_clean),
        "full": make("full", train_ids, full_lab, ~full_clean, np.full(n_train, "train"),
                     num_classes),
    }

    # Index images whose category is a train landmark's.
    index_ids, index_lids = read_image_to_landmark(
        _first(root, "index/index_image_to_landmark.csv", "index_image_to_landmark.csv"))
    index_cat = {lid: geo.category_key(c) for lid, c in read_label_to_category(
        _first(root, "index/index_label_to_category.csv", "index_label_to_category.csv"))}
    index_label = np.full(len(index_ids), -1, np.int64)
    unknown = 0
    for i, lid in enumerate(index_lids.tolist()):
        if lid not in index_cat:
            unknown += 1
            continue
        index_label[i] = cat_to_label.get(index_cat[lid], -1)
    notes["index_images_with_unknown_landmark"] = unknown
    index_label_of = dict(zip(index_ids.tolist(), index_label.tolist(), strict=True))
    keep = index_label >= 0
    notes["index_images_in_all"] = int(keep.sum())

    # Test queries: one row per distinct train label of the ground truth; Ignored -> label -1.
    solution = read_retrieval_solution(
        _first(root, "test/retrieval_solution_v2.1.csv", "retrieval_solution_v2.1.csv"))
    test_ids, test_lab = [], []
    missing_gt, unmapped = 0, 0
    for row in solution:
        if row.images is None:
            test_ids.append(row.query_id)
            test_lab.append(-1)
            continue
        labels: list[int] = []
        for g in row.images:
            lab = index_label_of.get(g)
            if lab is None:
                missing_gt += 1
            elif lab >= 0 and lab not in labels:
                labels.append(lab)
        unmapped += not labels
        test_ids.extend([row.query_id] * len(labels))
        test_lab.extend(labels)
    notes["gt_images_not_in_index_csv"] = missing_gt
    notes["queries_without_train_landmark"] = unmapped
    n_idx, n_test = int(keep.sum()), len(test_ids)
    lists["all"] = make(
        "all",
        np.concatenate([train_ids, index_ids[keep], np.asarray(test_ids, dtype=str)]),
        np.concatenate([full_lab, index_label[keep], np.asarray(test_lab, np.int64)]),
        np.concatenate([~full_clean, np.zeros(n_idx + n_test, bool)]),
        np.concatenate([np.full(n_train, "train"), np.full(n_idx, "index"),
                        np.full(n_test, "test")]),
        num_classes)

    validation = _validation(root, solution, index_ids, val_index_ids, val_distractors, seed)
    return GldLists(lists=lists, validation=validation, label_landmark=label_landmark,
                    label_country=label_country, notes=notes)


def _validation(root: Path, solution: list[SolutionRow], labelled_index: np.ndarray,
                base_ids: Sequence[str] | None, distractors: int, seed: int) -> ValidationSet:
    queries = [r for r in solution if r.images is not None]
    gt_ids = np.unique(np.asarray([g for r in queries for g in r.images], dtype=str))
    if base_ids is None:
        path = root / "index" / "index.csv"
        pool = read_id_list(path) if path.is_file() else labelled_index
        pool = np.setdiff1d(pool, gt_ids)
        rng = np.random.default_rng(seed)
        base = rng.choice(pool, size=min(distractors, len(pool)), replace=False)
    else:
        base = np.asarray(list(base_ids), dtype=str)
    index_ids = np.union1d(gt_ids, base)
    # Ground truth as listed, without repeats, in file order.
    gts = [list(dict.fromkeys(r.images)) for r in queries]
    return ValidationSet.from_ground_truth(
        [r.query_id for r in queries], [r.usage for r in queries], gts, index_ids)


# ----------------------------------------------------------------------------- preparation


class PreparationError(RuntimeError):
    """Preparation stopped (too many bad images, ...); what was written is kept."""


def _drop_from_validation(val: ValidationSet, bad: np.ndarray) -> tuple[ValidationSet, int, int]:
    """The validation set without bad query / index images; returns (set, lost q, lost idx)."""
    q_ok = ~np.isin(np.char.add("test/", val.query_ids), bad)
    i_ok = ~np.isin(np.char.add("index/", val.index_ids), bad)
    index_ids = val.index_ids[i_ok]
    ok_ids = set(index_ids.tolist())
    gts = [[g for g in val.ground_truth(q).tolist() if g in ok_ids] for q in np.flatnonzero(q_ok)]
    out = ValidationSet.from_ground_truth(val.query_ids[q_ok].tolist(), val.usage[q_ok].tolist(),
                                          gts, index_ids, name=val.name)
    return out, int((~q_ok).sum()), int((~i_ok).sum())


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    country_dir: str | os.PathLike | None = None,
    country_csv: str | os.PathLike | None = None,
    store_options: StoreOptions | None = None,
    workers: int = 1,
    max_bad_fraction: float = 0.01,
    val_index_ids: Sequence[str] | None = None,
    val_distractors: int = DEFAULT_VAL_DISTRACTORS,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build the lists and the image store of the GLDv2 copy at ``root`` into ``out``.

    Writes ``out/store/`` (:func:`lmr_jax.data.store.write_store`; resumable), then
    ``out/report.json`` (bad images with path and reason, losses per list, notes), and, unless a
    list or the validation set loses more than ``max_bad_fraction`` of its images to bad images,
    ``out/lists/{clean,c2x,full,all}.npz`` and ``out/validation.npz`` without the bad images.

    Countries come from ``country_csv`` (``landmark_id,country``) if given, else from the GLDv2
    country files in ``country_dir`` (default ``root/train/country`` when present).

    Returns the summary written to the report (see :func:`format_summary`).

    Raises:
      GldFormatError: malformed metadata (``file:line``).
      PreparationError: too many bad images (the store and the report are kept).
    """
    root, out = Path(root), Path(out)
    options = store_options or StoreOptions()
    t0 = time.perf_counter()
    if country_csv is not None:
        by_landmark, by_category, country_source = geo.load_country_csv(country_csv), None, \
            str(country_csv)
    else:
        cdir = Path(country_dir) if country_dir is not None else default_country_dir(root)
        by_landmark, by_category = None, (geo.load_country_dir(cdir) if cdir else None)
        country_source = str(cdir) if cdir else "none (every landmark without country)"
    built = build_lists(root, country_by_category=by_category, country_by_landmark=by_landmark,
                        val_index_ids=val_index_ids, val_distractors=val_distractors, seed=seed)
    t_lists = time.perf_counter() - t0
    val = built.validation
    keys = np.unique(np.concatenate([
        built.lists["all"].keys(), built.lists["clean"].keys(),
        np.char.add("test/", val.query_ids), np.char.add("index/", val.index_ids)]))
    result = write_store(out / "store", keys, root, options, workers=workers, progress=progress)
    bad = np.asarray(sorted(result.bad_keys), dtype=str)

    lists, losses = {}, {}
    for name in LIST_NAMES:
        lst = built.lists[name]
        keep = ~np.isin(lst.keys(), bad)
        lists[name] = lst.select(keep)
        losses[name] = {"lost": int((~keep).sum()), "total": len(lst)}
    val_ok, lost_q, lost_i = _drop_from_validation(val, bad)
    losses["validation queries"] = {"lost": lost_q, "total": val.num_queries}
    losses["validation index"] = {"lost": lost_i, "total": len(val.index_ids)}
    for v in losses.values():
        v["fraction"] = v["lost"] / max(v["total"], 1)

    summary = {
        "root": str(root), "out": str(out), "countries": country_source,
        "lists": {n: lists[n].stats() for n in LIST_NAMES},
        "validation": {"queries": val_ok.num_queries, "index": len(val_ok.index_ids),
                       "gt_pairs": len(val_ok.gt_rows)},
        "notes": built.notes, "losses": losses,
        "store": {"images": result.num_images, "bad": len(result.bad),
                  "reencoded": result.changed, "shards_written": result.shards_written,
                  "shards_skipped": result.shards_skipped, **options.identity()},
        "bad_by_reason": _count_reasons(result.bad),
        "seconds": {"lists": round(t_lists, 2), "store": round(result.seconds, 2),
                    "images_per_second": round(result.images_written / max(result.seconds, 1e-9),
                                               1)},
    }
    report = out / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"summary": summary, "bad_images": result.bad}, indent=1))
    over = {n: v for n, v in losses.items() if v["fraction"] > max_bad_fraction}
    if over:
        what = "; ".join(f"{n}: {v['lost']} of {v['total']} images ({v['fraction']:.2%})"
                         for n, v in over.items())
        raise PreparationError(
            f"too many bad images ({what}), more than the allowed {max_bad_fraction:.2%}; see "
            f"{report}. The store in {out / 'store'} is kept: fix or remove the bad files and "
            "delete their shards' .done.json markers to retry them, or allow more with "
            "--max-bad-fraction.")
    for name, lst in lists.items():
        lst.save(out / "lists" / f"{name}.npz")
    LabelTable(built.label_landmark, built.label_country).save(out / "lists" / LABEL_TABLE_NAME)
    val_ok.save(out / "validation.npz")
    return summary


def _count_reasons(bad: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in bad:
        reason = b["reason"].split(":")[0]
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def format_summary(summary: dict) -> str:
    """Human-readable table of a :func:`prepare` summary."""
    lines = [f"GLDv2 at {summary['root']} -> {summary['out']}",
             f"{'list':<8}{'images':>12}{'labels':>10}{'noisy':>12}{'non-lmk':>9}{'no-country':>12}"
             f"{'lost (bad)':>12}"]
    for name, s in summary["lists"].items():
        lines.append(f"{name:<8}{s['images']:>12,}{s['labels']:>10,}{s['noisy']:>12,}"
                     f"{s['non_landmark']:>9,}{s['no_country']:>12,}"
                     f"{summary['losses'][name]['lost']:>12,}")
    v = summary["validation"]
    lines.append(f"validation: {v['queries']:,} queries, {v['index']:,} index images, "
                 f"{v['gt_pairs']:,} ground-truth pairs")
    n = summary["notes"]
    lines.append(f"countries from {summary['countries']}: {n['labels_without_country']:,} of "
                 f"{summary['lists']['full']['num_classes']:,} landmarks without country")
    lines.append("notes: " + ", ".join(f"{k} {v:,}" for k, v in n.items()
                                       if k != "labels_without_country"))
    st = summary["store"]
    reasons = ", ".join(f"{k} {v}" for k, v in summary["bad_by_reason"].items()) or "none"
    lines.append(f"store: {st['images']:,} images in shards of {st['shard_size']:,} "
                 f"({st['shards_written']} written now, {st['shards_skipped']} already done); "
                 f"{st['reencoded']:,} re-encoded; bad images {st['bad']:,} ({reasons})")
    sec = summary["seconds"]
    lines.append(f"time: lists {sec['lists']:.1f} s, store {sec['store']:.1f} s "
                 f"({sec['images_per_second']:,.0f} images/s this run)")
    return "\n".join(lines)
