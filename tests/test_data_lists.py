"""GLDv2 list semantics on the hand-written miniature (tests/data/mini_gldv2), file formats and
bad metadata. Expected rows are derived by hand from docs/reference.md (Lists) (see the
miniature's README)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmr_jax.data import geo
from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.datasets.gldv2 import csv_files as gld_csv
from lmr_jax.datasets.gldv2 import lists as gld_lists

MINI = Path(__file__).parent / "data" / "mini_gldv2"


@pytest.fixture(scope="module")
def mini():
    return gld_lists.build_lists(MINI, country_by_category=geo.load_country_dir(MINI / "train/country"),
                             val_distractors=1, seed=0)


def rows(lst: ImageList):
    return list(zip(lst.ids.tolist(), lst.labels.tolist(), lst.noisy.tolist(),
                    lst.splits.tolist(), strict=True))


def test_clean_c2x_full(mini):
    clean, c2x, full = (mini.lists[k] for k in ("clean", "c2x", "full"))
    assert rows(clean) == [("tr09", 0, False, "train"), ("tr06", 0, False, "train"),
                           ("tr01", 1, False, "train"), ("tr08", 1, False, "train"),
                           ("tr11", 2, False, "train"), ("tr13", 2, False, "train")]
    assert clean.num_classes == 3 and c2x.num_classes == 3
    assert rows(c2x) == [("tr01", 1, False, "train"), ("tr03", 1, True, "train"),
                         ("tr04", 2, True, "train"), ("tr06", 0, False, "train"),
                         ("tr08", 1, False, "train"), ("tr09", 0, False, "train"),
                         ("tr11", 2, False, "train")]
    assert full.num_classes == 6
    assert [(i, lab, n) for i, lab, n, _ in rows(full)] == [
        ("tr01", 1, False), ("tr02", 3, True), ("tr03", 1, True), ("tr04", 2, True),
        ("tr05", 4, True), ("tr06", 0, False), ("tr07", 3, True), ("tr08", 1, False),
        ("tr09", 0, False), ("tr10", 4, True), ("tr11", 2, False), ("tr12", 5, True)]
    assert mini.label_landmark.tolist() == [15, 7, 3, 42, 99, 50]
    assert mini.notes["clean_images_not_in_train_csv"] == 1  # tr13


def test_all_list(mini):
    full, all_ = mini.lists["full"], mini.lists["all"]
    assert all_.num_classes == 6
    assert rows(all_)[:12] == rows(full)
    assert rows(all_)[12:] == [
        ("ix01", 1, False, "index"), ("ix03", 3, False, "index"), ("ix04", 1, False, "index"),
        ("ix05", 2, False, "index"),
        ("te01", 1, False, "test"), ("te02", -1, False, "test"),
        ("te03", 3, False, "test"), ("te03", 1, False, "test"),  # one row per GT landmark
        ("te05", 2, False, "test"), ("te06", -1, False, "test")]
    assert mini.notes["index_images_with_unknown_landmark"] == 1  # ix07
    assert mini.notes["queries_without_train_landmark"] == 1  # te04 (Big Ben)
    assert mini.notes["index_images_in_all"] == 4
    lab = all_.labelled()
    assert len(lab) == len(all_) - 2 and (lab.labels >= 0).all()


def test_countries_and_continents(mini):
    assert mini.label_country.tolist() == ["ZA", "FR", "PL", "JP", "XK", ""]
    assert mini.notes["labels_without_country"] == 1
    full = mini.lists["full"]
    expect = {0: ("ZA", "Africa"), 1: ("FR", "Europe"), 2: ("PL", "Europe"), 3: ("JP", "Asia"),
              4: ("XK", "Europe"), 5: ("", "OTHER")}
    for lab, c, k in zip(full.labels, full.countries, full.continents, strict=True):
        assert (c, k) == expect[lab]
    all_ = mini.lists["all"]
    neg = all_.labels == -1
    assert (all_.countries[neg] == "").all() and (all_.continents[neg] == "OTHER").all()


def test_country_csv_overrides(tmp_path):
    csv = tmp_path / "countries.csv"
    csv.write_text("landmark_id,country\n7,it\n3,PL\n42,\n15,OTHER\n")
    out = gld_lists.build_lists(MINI, country_by_landmark=geo.load_country_csv(csv))
    assert out.label_country.tolist() == ["", "IT", "PL", "", "", ""]
    assert out.lists["clean"].continents.tolist() == ["OTHER"] * 2 + ["Europe"] * 4


def test_validation(mini):
    val = mini.validation
    assert val.query_ids.tolist() == ["te01", "te03", "te04", "te05"]
    assert val.usage.tolist() == ["Public", "Private", "Public", "Private"]
    assert [val.ground_truth(q).tolist() for q in range(4)] == [
        ["ix01", "ix04"], ["ix03", "ix01"], ["ix02", "ix06"], ["ix05", "ix02"]]
    # Every GT image plus one distractor sampled from index.csv's other images.
    gt = {f"ix0{i}" for i in range(1, 7)}
    assert gt < set(val.index_ids.tolist()) and len(val.index_ids) == 7
    assert set(val.index_ids.tolist()) - gt <= {"ix07", "ix08", "ix09"}
    given = gld_lists.build_lists(MINI, val_index_ids=["ix08", "ix01"]).validation
    assert given.index_ids.tolist() == sorted(gt | {"ix08"})


def test_save_load_roundtrip(mini, tmp_path):
    for name, lst in mini.lists.items():
        lst.save(tmp_path / f"{name}.npz")
        back = ImageList.load(tmp_path / f"{name}.npz")
        assert back.name == name and back.num_classes == lst.num_classes
        for f in ("ids", "labels", "noisy", "countries", "continents", "splits"):
            np.testing.assert_array_equal(getattr(back, f), getattr(lst, f))
    mini.validation.save(tmp_path / "val.npz")
    back = ValidationSet.load(tmp_path / "val.npz")
    assert back.gt_dict() == mini.validation.gt_dict()
    assert back.usage.tolist() == mini.validation.usage.tolist()
    with pytest.raises(ValueError, match="holds a 'ValidationSet'"):
        ImageList.load(tmp_path / "val.npz")


def test_image_list_checks():
    with pytest.raises(ValueError, match="labels has 1 rows"):
        ImageList(ids=["a01", "a02"], labels=[0], noisy=[0, 0], countries=["", ""],
                  continents=["OTHER"] * 2, num_classes=1, name="x")
    with pytest.raises(ValueError, match="unknown continents"):
        ImageList(ids=["a01"], labels=[0], noisy=[0], countries=[""], continents=["Atlantis"],
                  num_classes=1, name="x")
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 2\)"):
        ImageList(ids=["a01"], labels=[2], noisy=[0], countries=[""], continents=["OTHER"],
                  num_classes=2, name="x")
    files = ImageList.from_files(["/x/a.jpg", "/y/b.png"], labels=[0, 1])
    assert files.ids.tolist() == ["a", "b"] and files.relpath(1) == "/y/b.png"
    assert ImageList.from_files([]).num_classes == 0


def test_category_key_and_continents():
    key = geo.category_key
    a = key("http://commons.wikimedia.org/wiki/Category:Church_of_St._Mary,_Gda%C5%84sk")
    assert a == key("Church of St. Mary, Gdańsk") == key("Category:Church_of_St._Mary,_Gdańsk")
    assert key("eiffel_Tower") == key("Eiffel Tower") != key("Eiffel tower")
    table = geo.continent_table()
    assert len(table) == 250 and set(table.values()) <= set(geo.CONTINENTS)
    assert geo.continent_of("xk") == "Europe" and geo.continent_of("") == "OTHER"
    assert geo.continent_of("ZZ") == "OTHER" and geo.continent_of("AQ") == "Antarctica"
    assert [geo.continent_of(c) for c in ("JP", "BR", "US", "AU", "EG", "RU")] == [
        "Asia", "South America", "North America", "Oceania", "Africa", "Europe"]


@pytest.mark.parametrize("codes", [["FR"], {"FR": "France"}, {"France": "FR"},
                                   [{"alpha2": "fr", "name": "France"}]])
def test_country_codes_forms(tmp_path, codes):
    (tmp_path / "country_codes.json").write_text(json.dumps(codes))
    (tmp_path / "fr.json").write_text(json.dumps([{"name": "Eiffel_Tower"}, "Louvre"]))
    assert geo.load_country_dir(tmp_path) == {"Eiffel Tower": "FR", "Louvre": "FR"}


def test_country_file_errors(tmp_path):
    (tmp_path / "country_codes.json").write_text('["FR", "DE"]')
    (tmp_path / "FR.json").write_text("[]")
    with pytest.raises(geo.CountryFileError, match="lists DE but there is no DE.json"):
        geo.load_country_dir(tmp_path)
    (tmp_path / "DE.json").write_text("{not json")
    with pytest.raises(geo.CountryFileError, match="DE.json: cannot read"):
        geo.load_country_dir(tmp_path)
    bad = tmp_path / "c.csv"
    bad.write_text("landmark_id,country\n1,FR\nx,DE\n")
    with pytest.raises(geo.CountryFileError, match=r"c.csv:3: landmark_id 'x'"):
        geo.load_country_csv(bad)


# Each case: (file, replacement text, expected message pattern with file:line).
BAD_CSV = [
    ("train/train.csv", "id,url,landmark_id\ntr01,u,7\ntr02,u\n",
     r"train.csv:3: expected 3 fields"),
    ("train/train.csv", "id,url,landmark_id\ntr01,u,7\ntr02,u,seven\n",
     r"train.csv:3: landmark_id 'seven' is not an integer"),
    ("train/train.csv", "id,url,landmark\ntr01,u,7\n", r"train.csv:1: expected header"),
    ("train/train.csv", "id,url,landmark_id\ntr01,u,7\ntr01,u,8\n",
     r"train.csv:3: image tr01 already listed at line 2"),
    ("train/train.csv", "id,url,landmark_id\ntr01,\"u,7\n", r"train.csv:\d+: "),
    ("train/train.csv", "", r"train.csv: empty file"),
    ("train/train_clean.csv", "landmark_id,images\n15,tr09\n15,tr06\n",
     r"train_clean.csv:3: landmark 15 already listed at line 2"),
    ("train/train_clean.csv", "landmark_id,images\n15,tr/09\n", r"train_clean.csv:2: 'tr/09'"),
    ("train/train_label_to_category.csv", "landmark_id,category\n7,a,b\n",
     r"train_label_to_category.csv:2: expected 2 fields"),
    ("index/index_image_to_landmark.csv", "id,landmark_id\nix01,-3\n",
     r"index_image_to_landmark.csv:2: landmark_id -3 is negative"),
    ("test/retrieval_solution_v2.1.csv", "id,images,Usage\nte01,ix01,Secret\n",
     r"retrieval_solution_v2.1.csv:2: Usage 'Secret'"),
    ("test/retrieval_solution_v2.1.csv", "id,images,Usage\nte01,None,Public\n",
     r"retrieval_solution_v2.1.csv:2: Public query te01 has no ground-truth"),
]


@pytest.mark.parametrize("rel,text,pattern", BAD_CSV)
def test_malformed_csv(tmp_path, rel, text, pattern):
    root = tmp_path / "gld"
    shutil.copytree(MINI, root)
    (root / rel).write_text(text)
    with pytest.raises(gld_csv.GldFormatError, match=pattern):
        gld_lists.build_lists(root)


def test_missing_file(tmp_path):
    root = tmp_path / "gld"
    shutil.copytree(MINI, root)
    (root / "train/train.csv").unlink()
    with pytest.raises(gld_csv.GldFormatError, match="train/train.csv, train.csv found"):
        gld_lists.build_lists(root)
