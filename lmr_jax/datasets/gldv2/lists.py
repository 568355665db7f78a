"""Google Landmarks Dataset v2: the training lists and the validation set built from the metadata.

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

Malformed input raises :class:`~lmr_jax.datasets.gldv2.csv_files.GldFormatError` with
``file:line``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lmr_jax.data import geo
from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.datasets.gldv2.csv_files import (
    GldFormatError,
    SolutionRow,
    read_id_list,
    read_image_to_landmark,
    read_label_to_category,
    read_retrieval_solution,
    read_train_clean,
    read_train_csv,
)

LIST_NAMES = ("clean", "c2x", "full", "all")
# Size of the Kaggle 2021 retrieval index that the reference validation index extends.
DEFAULT_VAL_DISTRACTORS = 76_176


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

