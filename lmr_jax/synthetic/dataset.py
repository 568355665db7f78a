"""A synthetic dataset in the official GLDv2 layout, for demos, tests and benchmarks.

It writes the same folders and CSV formats as GLDv2 (see :mod:`lmr_jax.datasets.gldv2.lists`):
train, index and test images sharded ``a/b/c/id.jpg``; train.csv, train_clean.csv,
train_label_to_category.csv (some categories URL-encoded, some quoted because they hold commas),
index.csv, index_image_to_landmark.csv, index_label_to_category.csv, test.csv,
retrieval_solution_v2.1.csv (Public, Private and Ignored rows, multi-landmark queries) and the
country files (train/country/country_codes.json + one <CODE>.json per country, names written
in several of the spellings :func:`lmr_jax.data.geo.category_key` tolerates). Some landmarks have
no country. A few files are corrupt on purpose (truncated, empty, missing, not an image, PNG/GIF
named .jpg, CMYK and grayscale JPEGs); ``synthetic_manifest.json`` records which.

Images are views of procedural landmark scenes (:mod:`lmr_jax.synthetic.render`).
Noisy train images are hard views, views of another landmark (label noise) or non-landmark
images. Everything is deterministic from the seed, whatever the number of worker processes.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmr_jax.data.lists import gldv2_relpath
from lmr_jax.synthetic.render import (
    random_out_size,
    render_distractor,
    render_scene,
    render_view,
)

# (code, weight) per continent; weights ~ an Asia- and Europe-heavy landmark distribution.
COUNTRIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "Asia": (0.33, ("JP", "CN", "IN", "TH", "ID", "KR", "VN", "TR")),
    "Europe": (0.30, ("FR", "DE", "IT", "ES", "GB", "PL", "RU", "GR", "XK")),
    "North America": (0.11, ("US", "CA", "MX", "CU")),
    "Africa": (0.08, ("EG", "KE", "ZA", "MA")),
    "South America": (0.07, ("BR", "AR", "PE", "CL")),
    "Oceania": (0.06, ("AU", "NZ")),
    "Antarctica": (0.02, ("AQ",)),
    "": (0.03, ("",)),  # landmarks listed in no country file
}
COMMONS = "http://commons.wikimedia.org/wiki/Category:"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and mix of the synthetic dataset.

    Attributes:
      num_landmarks: train landmarks.
      size: long side of every image in pixels.
      seed: everything is a function of it.
      clean_fraction: share of train landmarks listed in train_clean.csv.
      train_images_mean: mean train images per landmark (long-tailed, at least 2).
      index_shared_fraction: share of train landmarks that also have index images (same
        category, other index landmark id).
      index_only_fraction: index landmarks not in train, relative to num_landmarks.
      index_distractor_fraction: non-landmark index images, relative to num_landmarks.
      nonlandmark_query_fraction: Ignored test queries, relative to num_landmarks.
      corrupt: write the few corrupt files.
    """

    num_landmarks: int = 300
    size: int = 128
    seed: int = 0
    clean_fraction: float = 0.6
    train_images_mean: float = 8.0
    index_shared_fraction: float = 0.4
    index_only_fraction: float = 0.2
    index_distractor_fraction: float = 0.5
    nonlandmark_query_fraction: float = 1 / 6
    corrupt: bool = True

    def images_per_landmark(self) -> float:
        """Expected images (all splits) per train landmark, to size a dataset by image count."""
        index_lms = self.index_shared_fraction + self.index_only_fraction
        return (self.train_images_mean + index_lms * 4.0 + self.index_distractor_fraction
                + index_lms * 0.84 + 1 / 60 + self.nonlandmark_query_fraction)


# ----------------------------------------------------------------------------- dataset plan


@dataclasses.dataclass
class _Image:
    """One image to render: ``kind`` view/hard/junk/pair; ``scenes`` the landmark uids shown."""

    id: str
    split: str
    kind: str
    scenes: tuple[int, ...]
    ordinal: int


_SYLLABLES = ("ka", "ra", "mo", "tsu", "li", "an", "zor", "ve", "qui", "dan", "sel", "po", "ru",
              "mi", "ten", "bo", "ha", "lun", "gra", "ei", "os", "tar", "ny", "cha")
_KINDS = ("Tower", "Temple", "Cathedral", "Bridge", "Palace", "Castle", "Gate", "Pagoda",
          "Mosque", "Hall", "Monument", "Lighthouse", "Basilica", "Fort", "Shrine")
_ACCENTED = ("é", "ñ", "ü", "ş", "ō", "ł", "å")


def _category_name(rng: np.random.Generator, uid: int) -> str:
    """A unique, Commons-like category title; some with accents or commas."""
    place = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))).tolist()).capitalize()
    if rng.random() < 0.12:
        i = int(rng.integers(1, len(place)))
        place = place[:i] + str(rng.choice(_ACCENTED)) + place[i:]
    name = f"{rng.choice(_KINDS)} of {place} {uid}"
    if rng.random() < 0.1:
        name = f"{name}, {''.join(rng.choice(_SYLLABLES, size=2).tolist()).capitalize()}"
    return name


def _category_url(name: str) -> str:
    return COMMONS + urllib.parse.quote(name.replace(" ", "_"), safe="_,.()'-!")


@dataclasses.dataclass
class _Plan:
    images: list[_Image]
    train_lids: np.ndarray          # train landmark id of train landmark uid
    clean_order: list[int]          # uids in train_clean.csv order
    clean_images: dict[int, list[str]]
    train_rows: list[tuple[str, int]]  # (image id, train landmark id) in train.csv order
    names: list[str]                # category title per scene uid
    countries: list[str]            # per train landmark uid
    index_lids: dict[int, int]      # scene uid -> index landmark id
    index_rows: list[tuple[str, int]]
    index_ids: list[str]
    solution: list[tuple[str, str, str]]  # (query id, images or "None", Usage)
    test_ids: list[str]


def _plan(cfg: SyntheticConfig) -> _Plan:
    rng = np.random.default_rng([cfg.seed, 0])
    n_lm = cfg.num_landmarks
    if n_lm < 4:
        raise ValueError(f"num_landmarks must be at least 4, got {n_lm}")
    used: set[str] = set()

    def new_id() -> str:
        while True:
            i = rng.bytes(8).hex()
            if i not in used:
                used.add(i)
                return i

    images: list[_Image] = []

    def add(split: str, kind: str, scenes: tuple[int, ...]) -> str:
        image_id = new_id()
        images.append(_Image(image_id, split, kind, scenes, len(images)))
        return image_id

    n_index_only = max(1, round(n_lm * cfg.index_only_fraction))
    names = [_category_name(rng, uid) for uid in range(n_lm + n_index_only)]
    train_lids = rng.choice(20 * n_lm + 100, size=n_lm, replace=False)
    conts = list(COUNTRIES)
    weights = np.array([COUNTRIES[c][0] for c in conts])
    countries = []
    for _ in range(n_lm):
        cont = conts[rng.choice(len(conts), p=weights / weights.sum())]
        countries.append(str(rng.choice(COUNTRIES[cont][1])))
    n_clean = max(1, round(n_lm * cfg.clean_fraction))
    is_clean = np.zeros(n_lm, bool)
    is_clean[rng.permutation(n_lm)[:n_clean]] = True

    train_rows, clean_images = [], {}
    p_more = 1 / max(cfg.train_images_mean - 1, 1.0)
    for uid in range(n_lm):
        n = int(min(2 + rng.geometric(p_more) - 1, 60))
        good_p = 0.75 if is_clean[uid] else 0.7
        kinds = ["view" if rng.random() < good_p else rng.choice(["hard", "hard", "wrong", "junk"])
                 for _ in range(n)]
        kinds[0] = "view"
        ids = []
        for k in kinds:
            if k == "wrong":
                other = int((uid + rng.integers(1, n_lm)) % n_lm)
                image_id = add("train", "view", (other,))
            elif k == "junk":
                image_id = add("train", "junk", ())
            else:
                image_id = add("train", k, (uid,))
            ids.append(image_id)
            train_rows.append((image_id, int(train_lids[uid])))
        if is_clean[uid]:
            clean_images[uid] = [i for i, k in zip(ids, kinds, strict=True) if k == "view"]
    order = rng.permutation(len(train_rows))
    train_rows = [train_rows[i] for i in order]
    clean_order = [int(u) for u in rng.permutation(np.flatnonzero(is_clean))]

    # Index landmarks: some train landmarks (same category) plus index-only ones.
    shared = rng.permutation(n_lm)[:round(n_lm * cfg.index_shared_fraction)].tolist()
    index_uids = shared + list(range(n_lm, n_lm + n_index_only))
    index_lid_pool = rng.choice(20 * n_lm + 100, size=len(index_uids), replace=False)
    index_lids = {int(u): int(lid) for u, lid in zip(index_uids, index_lid_pool, strict=True)}
    index_rows, by_uid = [], {}
    for uid in index_uids:
        by_uid[uid] = [add("index", "view", (uid,)) for _ in range(int(rng.integers(2, 7)))]
        index_rows.extend((i, index_lids[uid]) for i in by_uid[uid])
    n_distractors = round(n_lm * cfg.index_distractor_fraction)
    distractors = [add("index", "junk", ()) for _ in range(n_distractors)]
    index_ids = [i for i, _ in index_rows] + distractors
    index_ids = [index_ids[i] for i in rng.permutation(len(index_ids))]
    index_rows = [index_rows[i] for i in rng.permutation(len(index_rows))]

    solution = []
    for uid in index_uids:
        u = rng.random()
        for _ in range(0 if u < 0.3 else (2 if u > 0.86 else 1)):
            solution.append((add("test", "view", (uid,)), " ".join(by_uid[uid])))
    for _ in range(max(2, n_lm // 60)):
        a, b = rng.choice(len(index_uids), size=2, replace=False)
        ua, ub = index_uids[a], index_uids[b]
        solution.append((add("test", "pair", (ua, ub)), " ".join(by_uid[ua] + by_uid[ub])))
    usage = ["Public" if rng.random() < 1 / 3 else "Private" for _ in solution]
    solution = [(q, imgs, u) for (q, imgs), u in zip(solution, usage, strict=True)]
    solution += [(add("test", "junk", ()), "None", "Ignored")
                 for _ in range(max(1, round(n_lm * cfg.nonlandmark_query_fraction)))]
    solution = [solution[i] for i in rng.permutation(len(solution))]
    test_ids = [q for q, _, _ in solution]
    return _Plan(images, train_lids, clean_order, clean_images, train_rows, names, countries,
                 index_lids, index_rows, index_ids, solution, test_ids)


# ----------------------------------------------------------------------------- rendering


def _render_chunk(args: tuple[SyntheticConfig, str, list[_Image]]) -> int:
    """Render and write a chunk of images (runs in a worker process)."""
    cfg, root, chunk = args
    scenes: dict[int, Image.Image] = {}
    s = 2 * cfg.size

    def scene(uid: int) -> Image.Image:
        if uid not in scenes:
            if len(scenes) > 64:
                scenes.clear()
            scenes[uid] = render_scene((cfg.seed, 1, uid), s)
        return scenes[uid]

    for im in chunk:
        rng = np.random.default_rng([cfg.seed, 2, im.ordinal])
        size = random_out_size(rng, cfg.size)
        if im.kind == "junk":
            img = render_distractor(rng, size)
        elif im.kind == "pair":
            half = (size[0] // 2, size[1])
            img = Image.new("RGB", size)
            img.paste(render_view(scene(im.scenes[0]), rng, half), (0, 0))
            img.paste(render_view(scene(im.scenes[1]), rng, (size[0] - half[0], size[1])),
                      (half[0], 0))
        else:
            img = render_view(scene(im.scenes[0]), rng, size, hard=im.kind == "hard")
        path = Path(root) / gldv2_relpath(im.split, im.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=int(rng.integers(60, 96)))
    return len(chunk)


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _corrupt(root: Path, plan: _Plan, rng: np.random.Generator) -> dict[str, str]:
    """Damage a few train images in place; returns {image id: what was done}."""
    clean = {i for ids in plan.clean_images.values() for i in ids}
    noisy = [i for i, _ in plan.train_rows if i not in clean]
    kept = [i for i, _ in plan.train_rows if i in clean]
    bad_kinds = ["truncated", "empty", "missing", "html"]
    odd_kinds = ["png", "gif", "cmyk", "grayscale"]
    picks = rng.choice(len(noisy), size=min(len(bad_kinds), len(noisy)), replace=False)
    out: dict[str, str] = {}
    for kind, p in zip(bad_kinds, picks, strict=False):
        out[noisy[p]] = kind
    picks = rng.choice(len(kept), size=min(len(odd_kinds), len(kept)), replace=False)
    for kind, p in zip(odd_kinds, picks, strict=False):
        out[kept[p]] = kind
    for image_id, kind in out.items():
        path = root / gldv2_relpath("train", image_id)
        data = path.read_bytes()
        if kind == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "missing":
            path.unlink()
        elif kind == "html":
            path.write_bytes(b"<html><body>404 Not Found</body></html>\n")
        else:
            im = Image.open(io.BytesIO(data))
            buf = io.BytesIO()
            if kind == "png":
                im.save(buf, format="PNG")
            elif kind == "gif":
                im.save(buf, format="GIF")
            elif kind == "cmyk":
                im.convert("CMYK").save(buf, format="JPEG", quality=90)
            else:
                im.convert("L").save(buf, format="JPEG", quality=90)
            path.write_bytes(buf.getvalue())
    return out


def make_dataset(out: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig(),
                 workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Write the synthetic dataset under ``out`` (official GLDv2 layout); returns the manifest.

    The manifest (also written to ``out/synthetic_manifest.json``) holds the config, image
    counts per split and the corrupt files ``{id: kind}`` (kinds: truncated, empty, missing,
    html = bad; png, gif, cmyk, grayscale = decodable, re-encoded by preparation).
    """
    root = Path(out)
    plan = _plan(cfg)
    order = sorted(plan.images, key=lambda im: (im.scenes[:1] or (-1,), im.ordinal))
    chunk = max(16, min(500, len(order) // (8 * max(workers, 1))))
    chunks = [(cfg, str(root), order[i:i + chunk]) for i in range(0, len(order), chunk)]
    from tqdm.auto import tqdm

    with tqdm(total=len(order), unit="img", desc="render", disable=not progress) as bar:
        if workers <= 1:
            for c in chunks:
                bar.update(_render_chunk(c))
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for n in pool.imap_unordered(_render_chunk, chunks):
                    bar.update(n)

    n_lm = cfg.num_landmarks
    _write_csv(root / "train/train.csv", ("id", "url", "landmark_id"),
               [(i, f"https://upload.wikimedia.org/wikipedia/commons/{i[0]}/{i[:2]}/{i}.jpg", lid)
                for i, lid in plan.train_rows])
    _write_csv(root / "train/train_clean.csv", ("landmark_id", "images"),
               [(int(plan.train_lids[u]), " ".join(plan.clean_images[u]))
                for u in plan.clean_order])
    _write_csv(root / "train/train_label_to_category.csv", ("landmark_id", "category"),
               sorted((int(plan.train_lids[u]), _category_url(plan.names[u])) for u in range(n_lm)))
    _write_csv(root / "index/index.csv", ("id",), [(i,) for i in plan.index_ids])
    _write_csv(root / "index/index_image_to_landmark.csv", ("id", "landmark_id"), plan.index_rows)
    _write_csv(root / "index/index_label_to_category.csv", ("landmark_id", "category"),
               sorted((lid, _category_url(plan.names[u])) for u, lid in plan.index_lids.items()))
    _write_csv(root / "test/test.csv", ("id",), [(i,) for i in plan.test_ids])
    _write_csv(root / "test/retrieval_solution_v2.1.csv", ("id", "images", "Usage"), plan.solution)

    # Country files: names in several spellings (title, URL form, "Category:" title).
    rng = np.random.default_rng([cfg.seed, 3])
    by_country: dict[str, list] = {}
    for uid, code in enumerate(plan.countries):
        if code:
            name = plan.names[uid]
            form = rng.integers(3)
            entry = ({"name": name.replace(" ", "_")} if form == 0 else
                     {"name": _category_url(name)} if form == 1 else f"Category:{name}")
            by_country.setdefault(code, []).append(entry)
    cdir = root / "train" / "country"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "country_codes.json").write_text(json.dumps({c: c for c in sorted(by_country)}))
    for code, entries in by_country.items():
        (cdir / f"{code}.json").write_text(json.dumps(entries, ensure_ascii=False))

    corrupt = _corrupt(root, plan, np.random.default_rng([cfg.seed, 4])) if cfg.corrupt else {}
    counts = {sp: sum(1 for im in plan.images if im.split == sp)
              for sp in ("train", "index", "test")}
    manifest = {"config": dataclasses.asdict(cfg), "images": counts,
                "landmarks": {"train": n_lm, "clean": len(plan.clean_order),
                              "index": len(plan.index_lids),
                              "without_country": sum(1 for c in plan.countries if not c)},
                "corrupt": corrupt}
    (root / "synthetic_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
