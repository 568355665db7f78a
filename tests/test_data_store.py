"""Image store: bad-input handling, preparation of the miniature GLDv2, sources, resumption."""

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lmr_jax.data import store
from lmr_jax.data.lists import ImageList, ValidationSet, gldv2_relpath
from lmr_jax.datasets.gldv2 import lists as gld_lists
from lmr_jax.datasets.gldv2 import prepare as gld_prepare
from lmr_jax.datasets.gldv2 import report as gld_report

MINI = Path(__file__).parent / "data" / "mini_gldv2"
REPO = Path(__file__).resolve().parents[1]


def picture(seed: int, size=(48, 36), cell: int = 6) -> Image.Image:
    """A random picture: random colours on a grid of ``cell``-pixel cells, interpolated."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size[1] // cell, size[0] // cell, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- check_image

@pytest.mark.parametrize("name,make,reason", [
    ("empty", lambda j: b"", "empty file"),
    ("html", lambda j: b"<html>404 Not Found</html>", "not an image (unrecognised format)"),
    ("truncated jpeg", lambda j: j[: len(j) // 2], "truncated or corrupt JPEG"),
    ("truncated png", lambda j: encode(picture(1), "PNG")[:200], "truncated or corrupt PNG"),
    ("header only", lambda j: j[:120], "truncated or corrupt JPEG"),
])
def test_bad_images(name, make, reason):
    with pytest.raises(store.BadImage, match=re.escape(reason)):
        store.check_image(make(encode(picture(0, (96, 80)))))


@pytest.mark.parametrize("fmt,mode", [
    ("PNG", "RGB"), ("GIF", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGBA"),
    ("PNG", "P"), ("WEBP", "RGB"), ("JPEG", "RGB"),
])
def test_every_decodable_image_is_kept_byte_for_byte(fmt, mode):
    data = encode(picture(2).convert(mode), fmt)
    out, what = store.check_image(data)
    assert out is data and what is None


def test_max_side_reencodes_upright_with_opencv(tmp_path):
    im = picture(3, (300, 200), cell=25)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    im.save(path, quality=92, exif=exif.tobytes())
    data = path.read_bytes()
    out, what = store.check_image(data, max_side=120)
    assert what == "resized 200x300->80x120 (re-encoded as JPEG)"
    # The reference reads the file upright; the re-encoded file must decode to that picture
    # shrunk (cv2 INTER_AREA), up to JPEG loss, and carry no orientation tag any more.
    expected = cv2.resize(cv2.imread(str(path)), (80, 120), interpolation=cv2.INTER_AREA)
    got = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR)
    assert got.shape == (120, 80, 3)
    assert np.abs(got.astype(np.float32) - expected).mean() < 3
    assert 0x0112 not in Image.open(io.BytesIO(out)).getexif()
    assert store.check_image(data, max_side=300)[0] is data


# ----------------------------------------------------------------------------- preparation

BAD = {"train/tr07": "missing", "train/tr10": "html", "train/tr13": "missing",
       "index/ix04": "directory"}
ODD = {"train/tr02": "PNG", "train/tr05": "CMYK", "index/ix06": "L"}


def all_keys():
    keys = [f"train/tr{i:02d}" for i in range(1, 14)]
    keys += [f"index/ix{i:02d}" for i in range(1, 10)] + [f"test/te{i:02d}" for i in range(1, 7)]
    return keys


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    """The miniature GLDv2 with an image per id: four bad ones, three not RGB JPEG."""
    root = tmp_path_factory.mktemp("gld") / "gldv2"
    shutil.copytree(MINI, root)
    for n, key in enumerate(all_keys()):
        path = root / store.key_relpath(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        im = picture(100 + n)
        if key in BAD:
            if BAD[key] == "html":
                path.write_bytes(b"<html>gone</html>")
            elif BAD[key] == "directory":  # unreadable: a folder where the file should be
                path.mkdir()
            continue
        if key in ODD:
            path.write_bytes(encode(im.convert("RGB" if ODD[key] == "PNG" else ODD[key]),
                                    "PNG" if ODD[key] == "PNG" else "JPEG"))
        else:
            path.write_bytes(encode(im, quality=90))
    return root


@pytest.fixture(scope="module")
def prepared(mini_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    summary = gld_prepare.prepare(mini_root, out, store_options=store.StoreOptions(shard_size=5),
                            max_bad_fraction=0.2, val_distractors=2, progress=False)
    return out, summary


def test_prepare_outputs(prepared, mini_root):
    out, summary = prepared
    full = ImageList.load(out / "lists/full.npz")
    expect = [f"tr{i:02d}" for i in range(1, 13) if f"train/tr{i:02d}" not in BAD]
    assert full.ids.tolist() == expect
    assert ImageList.load(out / "lists/clean.npz").ids.tolist() == [
        "tr09", "tr06", "tr01", "tr08", "tr11"]  # tr13 is listed clean but has no file
    report = json.loads((out / "report.json").read_text())
    reasons = {b["key"]: (b["reason"], b["path"]) for b in report["bad_images"]}
    assert reasons == {
        "train/tr07": ("missing file", str(mini_root / "train/t/r/0/tr07.jpg")),
        "train/tr10": ("not an image (unrecognised format)",
                       str(mini_root / "train/t/r/1/tr10.jpg")),
        "train/tr13": ("missing file", str(mini_root / "train/t/r/1/tr13.jpg")),
        "index/ix04": ("unreadable: Is a directory", str(mini_root / "index/i/x/0/ix04.jpg"))}
    assert summary["store"]["reencoded"] == 0
    assert summary["losses"]["full"] == {"lost": 2, "total": 12, "fraction": 2 / 12}
    assert summary["losses"]["clean"] == {"lost": 1, "total": 6, "fraction": 1 / 6}
    val = ValidationSet.load(out / "validation.npz")
    assert val.num_queries == 4 and {"ix01", "ix06"} <= set(val.index_ids.tolist())
    assert "ix04" not in val.index_ids and val.ground_truth(0).tolist() == ["ix01"]
    assert summary["losses"]["validation index"] == {"lost": 1, "total": 8, "fraction": 1 / 8}
    all_ = ImageList.load(out / "lists/all.npz")
    assert all_.ids[all_.splits == "index"].tolist() == ["ix01", "ix03", "ix05"]
    text = gld_report.format_summary(summary)
    assert ("bad images 4 (missing file 2, not an image (unrecognised format) 1, unreadable 1)"
            in text)


def test_store_source_reads_what_was_prepared(prepared, mini_root):
    out, _ = prepared
    all_ = ImageList.load(out / "lists/all.npz")
    src = store.open_source(all_, out)
    assert isinstance(src, store.StoreSource) and len(src) == len(all_)
    src = pickle.loads(pickle.dumps(src))  # grain workers receive a pickled source
    for i in range(len(all_)):
        rec = src[np.int64(i)]
        assert rec["index"] == i
        key = f"{all_.splits[i]}/{all_.ids[i]}"
        original = (mini_root / store.key_relpath(key)).read_bytes()
        assert rec["image"] == original  # PNG, CMYK and grayscale included
    with pytest.raises(IndexError):
        src[len(all_)]
    outsider = ImageList(ids=["tr07"], labels=[0], noisy=[0], countries=[""],
                         continents=["OTHER"], num_classes=1, name="outsider")
    with pytest.raises(store.StoreError, match="1 of 1 images of list 'outsider' are not in"):
        store.open_source(outsider, out / "store")


def test_direct_mode(mini_root, tmp_path):
    val = gld_lists.build_lists(mini_root, val_distractors=0).validation
    src = store.open_source(val.query_list(), mini_root)
    assert isinstance(src, store.FileSource)
    rec = src[1]
    assert rec == {"image": (mini_root / "test/t/e/0/te03.jpg").read_bytes(), "index": 1}
    files = [mini_root / gldv2_relpath("index", "ix01"), mini_root / "index/i/x/0/ix03.jpg"]
    src = store.open_source(ImageList.from_files(files), None)
    assert src[1]["image"] == files[1].read_bytes()
    broken = ImageList.from_files([tmp_path / "nothing.jpg"])
    with pytest.raises(OSError, match="nothing.jpg: cannot read image 0 of list 'files'"):
        store.open_source(broken, None)[0]


def test_too_many_bad_images_stops(mini_root, tmp_path):
    with pytest.raises(gld_prepare.PreparationError,
                       match=r"full: 2 of 12 images \(16.67%\).*report.json.*is kept"):
        gld_prepare.prepare(mini_root, tmp_path, store_options=store.StoreOptions(shard_size=50),
                      max_bad_fraction=0.1, val_distractors=2, progress=False)
    assert (tmp_path / "store/index.npz").is_file() and (tmp_path / "report.json").is_file()
    assert not (tmp_path / "lists").exists()


def test_resume_redoes_only_unfinished_shards(mini_root, tmp_path):
    opts = store.StoreOptions(shard_size=4)
    keys = all_keys()
    first = store.write_store(tmp_path, keys, mini_root, opts, progress=False)
    assert (first.shards_written, first.shards_skipped) == (7, 0)
    shards = tmp_path / "shards"
    stamp = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.done.json")}
    # Interrupted shard 3: marker gone and a partial tfds folder left behind.
    (shards / "00003.done.json").unlink()
    for f in (shards / "00003").rglob("*.array_record*"):
        f.write_bytes(b"partial")
    again = store.write_store(tmp_path, keys, mini_root, opts, progress=False)
    assert (again.shards_written, again.shards_skipped) == (1, 6)
    now = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.done.json")}
    assert {k for k in now if now[k] != stamp.get(k)} == {"00003.done.json"}
    assert again.num_images == first.num_images and again.bad == first.bad
    lst = ImageList(ids=["ix05"], labels=[0], noisy=[0], countries=[""], continents=["OTHER"],
                    num_classes=1, name="one", splits=["index"])
    assert store.open_source(lst, tmp_path)[0]["image"] == (
        mini_root / "index/i/x/0/ix05.jpg").read_bytes()
    with pytest.raises(store.StoreError, match="started with options"):
        store.write_store(tmp_path, keys, mini_root, store.StoreOptions(shard_size=4, max_side=9))
    with pytest.raises(store.StoreError, match="planned for a different set"):
        store.write_store(tmp_path, keys[:-1], mini_root, opts)
    # A store begun by the version that re-encoded non-JPEG files is not resumed with originals.
    with np.load(tmp_path / "plan.npz") as z:
        planned = z["keys"]
    v1 = {"max_side": None, "jpeg_quality": 90, "shard_size": 4}
    np.savez(tmp_path / "plan.npz", keys=planned, options=np.array(json.dumps(v1)),
             version=np.array(1))
    with pytest.raises(store.StoreError, match="started with options"):
        store.write_store(tmp_path, keys, mini_root, opts)


def test_verification_catches_wrong_content(mini_root, tmp_path):
    keys = ["index/ix01", "index/ix02"]
    store.write_store(tmp_path, keys, mini_root, store.StoreOptions(shard_size=8), progress=False)
    import hashlib
    good = [hashlib.sha1((mini_root / store.key_relpath(k)).read_bytes()).digest() for k in keys]
    store._verify_shard(tmp_path, 0, keys, good, 1.0)
    with pytest.raises(store.StoreError, match="record 1 does not hold what was written"):
        store._verify_shard(tmp_path, 0, keys, [good[0], good[0]], 1.0)
    with pytest.raises(store.StoreError, match="wrote 2 records, expected 1"):
        store._verify_shard(tmp_path, 0, keys[:1], good[:1], 1.0)


def test_killed_preparation_resumes(mini_root, tmp_path):
    """SIGKILL the script after its first finished shard; the rerun keeps that shard."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts/prepare_gldv2.py"), "--gldv2", str(mini_root),
           "--out", str(out), "--shard_size", "1", "--workers", "1", "--max_bad_fraction", "0.2",
           "--val_distractors", "2", "--noprogress"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "store" / "shards"
    deadline = time.time() + 60
    while time.time() < deadline and not list(shards.glob("*.done.json")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.done.json")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    total = len(np.load(out / "store/plan.npz")["keys"])  # one shard per image
    assert 1 <= len(done) < total
    assert f"({total - len(done)} written now, {len(done)} already done)" in res.stdout
    for name, mtime in done.items():
        assert (shards / name).stat().st_mtime_ns == mtime
    assert len(ImageList.load(out / "lists/full.npz")) == 10
