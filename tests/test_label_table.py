"""The label -> GLDv2 landmark_id table saved with the prepared lists."""

import csv

import numpy as np
import pytest

from lmr_jax.data import store
from lmr_jax.data.lists import ImageList, LabelTable, LabelTableError
from lmr_jax.datasets.gldv2 import prepare as gld_prepare
from lmr_jax.synthetic.dataset import SyntheticConfig, make_dataset


def test_prepared_table_maps_labels_to_the_train_csv_landmark_ids(tmp_path):
    root = tmp_path / "gldv2"
    make_dataset(root, SyntheticConfig(num_landmarks=16, size=32, seed=2, corrupt=False))
    gld_prepare.prepare(root, tmp_path / "out", store_options=store.StoreOptions(shard_size=256),
                  progress=False)
    table = LabelTable.beside(tmp_path / "out" / "lists" / "full.npz")
    full = ImageList.load(tmp_path / "out" / "lists" / "full.npz")
    assert len(table) == full.num_classes
    with open(root / "train" / "train.csv", newline="") as f:
        landmark_of_image = {r["id"]: int(r["landmark_id"]) for r in csv.DictReader(f)}
    want = np.array([landmark_of_image[i] for i in full.ids])
    np.testing.assert_array_equal(table.landmark_of(full.labels), want)
    np.testing.assert_array_equal(table.countries[full.labels], full.countries)
    assert (table.landmark_of(np.array([-1, 0])) == [-1, table.landmark_ids[0]]).all()


def test_roundtrip_and_errors(tmp_path):
    t = LabelTable(np.array([5, 9, 2]), np.array(["FR", "", "JP"]))
    t.save(tmp_path / "labels.csv")
    assert (tmp_path / "labels.csv").read_text().splitlines() == [
        "label,landmark_id,country", "0,5,FR", "1,9,", "2,2,JP"]
    back = LabelTable.beside(tmp_path / "all.npz")
    np.testing.assert_array_equal(back.landmark_ids, [5, 9, 2])
    np.testing.assert_array_equal(back.countries, ["FR", "", "JP"])
    with pytest.raises(LabelTableError, match="label 3 is not in the label table"):
        back.landmark_of(np.array([3]))
    with pytest.raises(LabelTableError, match="prepare_gldv2.py again"):
        LabelTable.beside(tmp_path / "elsewhere" / "all.npz")
    (tmp_path / "labels.csv").write_text("label,landmark_id,country\n0,5,FR\n2,7,\n")
    with pytest.raises(LabelTableError, match=r"labels.csv:3: label 2 out of order"):
        LabelTable.load(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("label,landmark_id,country\n0,x,FR\n")
    with pytest.raises(LabelTableError, match=r"labels.csv:2: expected"):
        LabelTable.load(tmp_path / "labels.csv")
