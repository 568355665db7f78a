"""Synthetic GLDv2-format dataset: layout and formats, determinism, view difficulty, and the list
semantics of lmr_jax.datasets.gldv2 against a straightforward re-implementation of
docs/reference.md (Lists)."""

import csv
import hashlib
import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmr_jax.data import geo, store
from lmr_jax.data.lists import ImageList, gldv2_relpath
from lmr_jax.datasets.gldv2 import lists as gld_lists
from lmr_jax.datasets.gldv2 import prepare as gld_prepare
from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset

CFG = SyntheticConfig(num_landmarks=24, size=64, seed=3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "demo"
    manifest = make_dataset(root, CFG)
    return root, manifest


def read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_whatever_the_workers(demo, tmp_path):
    root, manifest = demo
    make_dataset(tmp_path / "again", CFG, workers=2)
    assert tree_digest(tmp_path / "again") == tree_digest(root)
    make_dataset(tmp_path / "other", SyntheticConfig(num_landmarks=24, size=64, seed=4))
    other = tree_digest(tmp_path / "other")
    assert other["train/train.csv"] != tree_digest(root)["train/train.csv"]


def test_layout_and_formats(demo):
    root, manifest = demo
    train = read(root / "train/train.csv")
    index = read(root / "index/index.csv")
    solution = read(root / "test/retrieval_solution_v2.1.csv")
    assert [r[0] for r in read(root / "test/test.csv")] == [r[0] for r in solution]
    ids = [("train", r[0]) for r in train] + [("index", r[0]) for r in index] + [
        ("test", r[0]) for r in solution]
    assert manifest["images"] == {s: sum(1 for sp, _ in ids if sp == s)
                                  for s in ("train", "index", "test")}
    for split, image_id in ids:
        path = root / gldv2_relpath(split, image_id)
        kind = manifest["corrupt"].get(image_id)
        assert path.is_file() == (kind != "missing"), (path, kind)
        if kind is None:
            im = Image.open(path)
            im.load()
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) == CFG.size
    formats = {"png": ("PNG", None), "gif": ("GIF", None), "cmyk": ("JPEG", "CMYK"),
               "grayscale": ("JPEG", "L")}
    for image_id, kind in manifest["corrupt"].items():
        path = root / gldv2_relpath("train", image_id)
        if kind in formats:
            im = Image.open(path)
            assert im.format == formats[kind][0] and formats[kind][1] in (None, im.mode)
        elif kind != "missing":
            with pytest.raises(Exception):  # noqa: B017 - any PIL error
                Image.open(path).load()
    assert sorted(manifest["corrupt"].values()) == sorted(
        ["truncated", "empty", "missing", "html", "png", "gif", "cmyk", "grayscale"])

    usages = {r[2] for r in solution}
    assert usages == {"Public", "Private", "Ignored"}
    assert all((r[1] == "None") == (r[2] == "Ignored") for r in solution)
    index_lm = dict(read(root / "index/index_image_to_landmark.csv"))
    multi = [r for r in solution if r[1] != "None" and len({index_lm[i] for i in r[1].split()}) > 1]
    assert multi, "no multi-landmark query"
    cats = [r[1] for r in read(root / "train/train_label_to_category.csv")]
    assert all(c.startswith("http://commons.wikimedia.org/wiki/Category:") for c in cats)
    assert any("%" in c for c in cats) and any("," in c for c in cats)
    raw = (root / "train/train_label_to_category.csv").read_text()
    assert '"http://commons' in raw  # categories with commas are quoted


def reference_lists(root: Path) -> dict[str, list[tuple]]:
    """docs/reference.md (Lists) written out plainly, with its own CSV and category handling."""
    def norm(cat: str) -> str:
        s = urllib.parse.unquote(cat)
        s = s.split("Category:", 1)[1] if "Category:" in s else s
        return s.replace("_", " ").strip()

    codes = json.loads((root / "train/country/country_codes.json").read_text())
    cat_country = {}
    for code in codes:
        for e in json.loads((root / f"train/country/{code}.json").read_text()):
            cat_country[norm(e if isinstance(e, str) else e["name"])] = code
    clean_rows = [(int(lid), imgs.split()) for lid, imgs in read(root / "train/train_clean.csv")]
    label = {lid: g for g, (lid, _) in enumerate(clean_rows)}
    num_clean = len(label)
    train = [(i, int(lid)) for i, _, lid in read(root / "train/train.csv")]
    for _, lid in train:
        label.setdefault(lid, len(label))
    train_cat = {}
    for lid, cat in read(root / "train/train_label_to_category.csv"):
        train_cat[norm(cat)] = int(lid)
    country = {label[lid]: cat_country.get(c, "") for c, lid in train_cat.items() if lid in label}
    clean_pairs = {(i, lid) for lid, imgs in clean_rows for i in imgs}

    def row(image_id, lab, noisy, split):
        c = country.get(lab, "") if lab >= 0 else ""
        return (image_id, lab, noisy, split, c, geo.continent_of(c) if lab >= 0 else "OTHER")

    clean = [row(i, g, False, "train") for g, (_, imgs) in enumerate(clean_rows) for i in imgs]
    full = [row(i, label[lid], (i, lid) not in clean_pairs, "train") for i, lid in train]
    c2x = [r for r, (_, lid) in zip(full, train, strict=True) if label[lid] < num_clean]
    index_cat = {int(lid): norm(c) for lid, c in read(root / "index/index_label_to_category.csv")}
    index_label, index = {}, []
    for i, lid in read(root / "index/index_image_to_landmark.csv"):
        tl = train_cat.get(index_cat[int(lid)])
        if tl is not None:
            index_label[i] = label[tl]
            index.append(row(i, label[tl], False, "index"))
    test = []
    for q, imgs, usage in read(root / "test/retrieval_solution_v2.1.csv"):
        if usage == "Ignored":
            test.append(row(q, -1, False, "test"))
            continue
        labs = []
        for g in imgs.split():
            if g in index_label and index_label[g] not in labs:
                labs.append(index_label[g])
        test += [row(q, lab, False, "test") for lab in labs]
    return {"clean": clean, "c2x": c2x, "full": full, "all": full + index + test}


def as_rows(lst: ImageList) -> list[tuple]:
    return list(zip(lst.ids.tolist(), lst.labels.tolist(), lst.noisy.tolist(),
                    lst.splits.tolist(), lst.countries.tolist(), lst.continents.tolist(),
                    strict=True))


def test_lists_match_reference(demo):
    root, manifest = demo
    built = gld_lists.build_lists(root, country_by_category=geo.load_country_dir(
        gld_lists.default_country_dir(root)))
    ref = reference_lists(root)
    for name in ("clean", "c2x", "full", "all"):
        assert as_rows(built.lists[name]) == ref[name], name
    full, all_ = built.lists["full"], built.lists["all"]
    assert full.num_classes == CFG.num_landmarks
    assert built.lists["clean"].num_classes == manifest["landmarks"]["clean"]
    # The mix the generator promises: noisy images, non-landmark rows, several continents,
    # landmarks without country, index images and multi-landmark queries in `all`.
    assert 0 < built.lists["c2x"].noisy.sum() < len(built.lists["c2x"])
    assert (all_.labels == -1).sum() == sum(
        1 for r in read(root / "test/retrieval_solution_v2.1.csv") if r[2] == "Ignored")
    assert len(set(full.continents.tolist()) - {"OTHER"}) >= 4
    assert built.notes["labels_without_country"] == manifest["landmarks"]["without_country"]
    assert (all_.splits == "index").sum() > 0
    test_rows = all_.ids[all_.splits == "test"]
    assert len(test_rows) > len(set(test_rows.tolist()))  # a query with two landmarks


def test_views_are_related_but_not_trivial(demo):
    """A trivial matcher (8x8 thumbnails, nearest neighbour) must be far from solving the clean
    set, yet above chance: views of a landmark share its structure."""
    root, manifest = demo
    feats, labels = [], []
    for g, (_, imgs) in enumerate(read(root / "train/train_clean.csv")):
        for i in imgs.split():
            if i in manifest["corrupt"]:
                continue
            im = Image.open(root / gldv2_relpath("train", i)).convert("RGB")
            t = np.asarray(im.resize((8, 8), Image.Resampling.BILINEAR), np.float32).ravel()
            feats.append((t - t.mean()) / (t.std() + 1e-6))
            labels.append(g)
    f, labels = np.stack(feats), np.asarray(labels)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    top1 = (labels[sim.argmax(1)] == labels).mean()
    chance = 1 / labels.max()
    print(f"thumbnail top-1 {top1:.3f}, chance {chance:.3f}")
    assert 2 * chance < top1 < 0.6, (top1, chance)
    # No two views of a landmark are near-copies.
    assert (sim.max(1) / f.shape[1]).max() < 0.97


def test_prepare_synthetic_end_to_end(demo, tmp_path):
    root, manifest = demo
    # 4 bad files are ~1.5% of this small set's train images: allow 2%.
    summary = gld_prepare.prepare(root, tmp_path, store_options=store.StoreOptions(shard_size=64),
                            workers=2, max_bad_fraction=0.02, progress=False)
    bad = {k: v for k, v in manifest["corrupt"].items()
           if v in ("truncated", "empty", "missing", "html")}
    report = json.loads((tmp_path / "report.json").read_text())
    assert {b["key"] for b in report["bad_images"]} == {f"train/{k}" for k in bad}
    assert summary["store"]["reencoded"] == 0  # PNG, GIF, CMYK, grayscale: kept as they are
    all_ = ImageList.load(tmp_path / "lists/all.npz")
    assert not set(all_.ids.tolist()) & set(bad)
    src = store.open_source(all_, tmp_path)
    for i in range(0, len(all_), 7):
        path = root / gldv2_relpath(all_.splits[i], all_.ids[i])
        assert src[i]["image"] == path.read_bytes()
