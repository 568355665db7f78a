"""Extraction and evaluation faults: every kind of bad image, the failure cap, a full disk while
writing a shard, and images without a feature in the evaluation report."""

import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lmr_jax.data.lists import ImageList, ValidationSet
from lmr_jax.data.store import open_source
from lmr_jax.models import create
from lmr_jax.retrieval import extract, features, offline_evaluation
from tests.faults import bad_files

REPO = Path(__file__).resolve().parents[2]
SIZE = 16


@pytest.fixture(scope="module")
def model():
    return create("resnet_tiny", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def image_list(tmp_path_factory):
    """4 good images, then one file of every bad kind."""
    d = tmp_path_factory.mktemp("extract_faults")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
        (d / f"good{i}.png").write_bytes(buf.getvalue())
        paths.append(d / f"good{i}.png")
    for kind in bad_files.IMAGE_KINDS:
        (d / f"z_{kind}.jpg").write_bytes(bad_files.make(kind))
        paths.append(d / f"z_{kind}.jpg")
    return ImageList.from_files([str(p) for p in paths])


def _opts(**kw):
    return extract.ExtractOptions(**{"size": SIZE, "batch_size": 2, "shard_size": 4,
                                     "read_threads": 1, **kw})


def test_every_bad_kind_is_listed_with_its_reason(tmp_path, model, image_list):
    out = tmp_path / "f"
    meta = extract.extract(model, open_source(image_list, None), image_list.ids, str(out),
                           options=_opts(max_bad_fraction=1.0), progress=False)
    assert meta["num_images"] == 4 and meta["num_failed"] == len(bad_files.IMAGE_KINDS)
    failed = dict(features.failed_images(out))
    assert set(failed) == {f"z_{k}" for k in bad_files.IMAGE_KINDS}
    assert "empty data" in failed["z_zero_byte"]
    assert "decompression bomb" in failed["z_bomb_png"]
    assert failed["z_bomb_png"].startswith("ImageTooLarge")
    assert all(r.startswith("ImageDecodeError") for k, r in failed.items() if k != "z_bomb_png")


def test_too_many_failures_stop_naming_the_first_and_keep_finished_shards(tmp_path, model,
                                                                          image_list):
    src = open_source(image_list, None)
    out = tmp_path / "capped"
    # shard 0 = the 4 good images; shard 1 = 4 bad: 4 > 0.2 * 10 after shard 1
    with pytest.raises(extract.TooManyFailures,
                       match=r"4 of 10 images.*max_bad_fraction=0\.2\. First: z_truncated_jpeg: "):
        extract.extract(model, src, image_list.ids, str(out), options=_opts(max_bad_fraction=0.2),
                        progress=False)
    assert len(features.failed_images(out)) == 4 and not features.is_done(out)
    stamp = features.shard_path(out, 0).stat().st_mtime_ns
    done = []
    extract.extract(model, src, image_list.ids, str(out), options=_opts(max_bad_fraction=1.0),
                    on_shard=done.append, progress=False)
    assert done == [2] and features.shard_path(out, 0).stat().st_mtime_ns == stamp
    full = tmp_path / "full"
    extract.extract(model, src, image_list.ids, str(full), options=_opts(max_bad_fraction=1.0),
                    progress=False)
    a, b = features.load_features(full), features.load_features(out)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.feats, b.feats)
    assert features.failed_images(full) == features.failed_images(out)


def test_full_disk_while_writing_a_shard_keeps_the_finished_ones(tmp_path, model, image_list,
                                                                 monkeypatch):
    src = open_source(image_list, None)
    out = tmp_path / "enospc"
    opts = _opts(max_bad_fraction=1.0)
    real_savez = np.savez
    calls = []

    def savez_disk_full(path, *args, **kw):
        calls.append(path)
        if len(calls) == 2:  # shard 1: half written, then the disk is full
            Path(path).write_bytes(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_savez(path, *args, **kw)

    monkeypatch.setattr(features.np, "savez", savez_disk_full)
    with pytest.raises(OSError, match="No space left"):
        extract.extract(model, src, image_list.ids, str(out), options=opts, progress=False)
    monkeypatch.undo()
    assert features.shard_done(out, 0) and not features.shard_done(out, 1)
    with np.load(features.shard_path(out, 0)) as z:
        assert len(z["rows"]) == 4
    extract.extract(model, src, image_list.ids, str(out), options=opts, progress=False)
    full = tmp_path / "full"
    extract.extract(model, src, image_list.ids, str(full), options=opts, progress=False)
    np.testing.assert_array_equal(features.load_features(full).feats,
                                  features.load_features(out).feats)


def test_evaluation_reports_images_without_a_feature(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evalbase", REPO / "configs/eval/gldv2_val.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    rng = np.random.default_rng(0)
    q_ids = [f"q{i:03d}ab" for i in range(4)]
    x_ids = [f"x{i:03d}ab" for i in range(8)]
    gt = [[x_ids[2 * i], x_ids[2 * i + 1]] for i in range(4)]
    val = ValidationSet.from_ground_truth(q_ids, ["Public", "Private"] * 2, gt, x_ids)
    val.save(tmp_path / "validation.npz")
    feats = rng.standard_normal((12, 8)).astype(np.float32)
    # one query and two index images failed at extraction: no feature
    features.save_features(tmp_path / "query", q_ids[1:], feats[1:4], "float32")
    features.save_features(tmp_path / "index", x_ids[:6], feats[4:10], "float32")
    c = base.get_config()
    c.workdir = str(tmp_path / "work")
    c.validation = str(tmp_path / "validation.npz")
    c.images = ""
    m = base.model("toy", size=16)
    m.query_features, m.index_features = str(tmp_path / "query"), str(tmp_path / "index")
    c.models = [m]
    c.rerank = ("off",)
    c.submission_rerank = "off"
    c.picture.num_queries = 0
    offline_evaluation.run_evaluation(c)
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["missing_features"] == {"query": 1, "index": 2}
    assert "1 query, 2 index" in (tmp_path / "work" / "report.md").read_text()
