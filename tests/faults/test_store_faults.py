"""Store preparation faults: every kind of bad image is left out with its reason, and a full
disk (ENOSPC) while a shard is being completed keeps the finished shards; the resumed store
equals one written without the fault. (SIGKILL during preparation:
tests/test_data_store.py::test_killed_preparation_resumes.)"""

import errno
import io
import json

import numpy as np
import pytest
from PIL import Image

from lmr_jax.data import store
from lmr_jax.data.lists import ImageList
from tests.faults import bad_files

GOOD = [f"{i:03x}aa{i:011x}" for i in range(5)]
BAD = {f"b{k[:2]}{i:013x}": k for i, k in enumerate(bad_files.IMAGE_KINDS)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("store_faults")
    rng = np.random.default_rng(0)
    for iid in GOOD:
        p = r / store.key_relpath(f"train/{iid}")
        p.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
        p.write_bytes(buf.getvalue())
    for iid, kind in BAD.items():
        p = r / store.key_relpath(f"train/{iid}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bad_files.make(kind))
    return r


KEYS = [f"train/{i}" for i in GOOD + list(BAD)]


def _contents(store_dir):
    """{key: stored bytes} of a finished store."""
    with np.load(store_dir / "index.npz") as z:
        keys = z["keys"]
    ids = np.array([k.split("/", 1)[1] for k in keys])
    lst = ImageList(ids=ids, labels=np.zeros(len(ids), int), noisy=np.zeros(len(ids), bool),
                    countries=np.full(len(ids), "FR"), continents=np.full(len(ids), "Europe"),
                    num_classes=1, name="all")
    src = store.StoreSource(lst, store_dir)
    return {k: bytes(src[i]["image"]) for i, k in enumerate(keys)}


def test_every_bad_kind_is_left_out_with_its_reason(root, tmp_path):
    res = store.write_store(tmp_path / "s", KEYS, root, store.StoreOptions(shard_size=4),
                            progress=False)
    reasons = {b["key"].split("/")[1]: b["reason"] for b in res.bad}
    assert set(reasons) == set(BAD) and res.num_images == len(GOOD)
    by_kind = {BAD[k]: r for k, r in reasons.items()}
    assert by_kind["zero_byte"] == "empty file"
    assert by_kind["html_as_jpg"] == "not an image (unrecognised format)"
    assert "truncated or corrupt JPEG" in by_kind["truncated_jpeg"]
    assert "truncated or corrupt PNG" in by_kind["truncated_png"]
    assert "decompression bomb" in by_kind["bomb_png"]
    assert set(_contents(tmp_path / "s")) == {f"train/{i}" for i in GOOD}


def test_full_disk_while_completing_a_shard_keeps_finished_shards(root, tmp_path, monkeypatch):
    options = store.StoreOptions(shard_size=3)
    clean = tmp_path / "clean"
    store.write_store(clean, KEYS, root, options, progress=False)
    out = tmp_path / "enospc"
    real_replace = store.os.replace
    markers = []

    def replace_disk_full(src, dst):
        if str(dst).endswith(".done.json"):
            markers.append(dst)
            if len(markers) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace_disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_store(out, KEYS, root, options, progress=False)
    monkeypatch.undo()
    done = sorted(p.name for p in (out / "shards").glob("*.done.json"))
    assert done == ["00000.done.json"] and not (out / "index.npz").exists()
    first = json.loads((out / "shards" / "00000.done.json").read_text())
    res = store.write_store(out, KEYS, root, options, progress=False)
    assert res.shards_skipped == 1 and res.shards_written == 3
    assert json.loads((out / "shards" / "00000.done.json").read_text()) == first
    assert _contents(out) == _contents(clean)
