"""grain pipelines: epoch structure, process sharding, exact resume, bad input, eval padding."""

import io
import json
import os
import subprocess
import sys
import textwrap
import types

import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from lmr_jax.data import pipeline as P
from lmr_jax.data.augment import EvalPreprocess, ImageDecodeError
from lmr_jax.data.samplers import SAMPLERS

N = 46
SIZE = 24


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def records():
    return [{"image": _jpeg(i), "index": i} for i in range(N)]


@pytest.fixture(scope="module")
def image_list():
    labels = (np.arange(N) % 6).astype(np.int32)
    labels[[4, 20]] = -1                                     # non-landmark rows: never sampled
    return types.SimpleNamespace(labels=labels, noisy=np.arange(N) % 3 == 0,
                                 continents=np.where(np.arange(N) < 30, "Asia", "Europe"),
                                 ids=np.array([f"id{i:04d}" for i in range(N)]))


def _config(**overrides):
    cfg = P.default_train_config(SIZE)
    cfg.global_batch_size = 8
    cfg.read_threads = 2
    cfg.seed = 5
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def test_batches_follow_the_sampler_epoch_after_epoch(records, image_list):
    cfg = _config()
    with P.make_train_iterator(records, image_list, cfg, process_index=0, process_count=1,
                               device_count=2) as it:
        spe = it.steps_per_epoch
        assert spe == 44 // 8                     # 44 labelled rows; last 4 of an epoch dropped
        batches = _take(it, 2 * spe)
    sampler = SAMPLERS.build("softmax", image_list, batch_size=8, seed=cfg.seed)
    for epoch in range(2):
        got = np.concatenate([b["index"] for b in batches[epoch * spe:(epoch + 1) * spe]])
        np.testing.assert_array_equal(got, sampler.epoch_indices(epoch)[:spe * 8])
    for b in batches:
        assert b["image"].shape == (8, SIZE, SIZE, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32
        np.testing.assert_array_equal(b["label"], image_list.labels[b["index"]])
        assert len(np.unique(b["index"])) == 8
    # A second pipeline with the same seed repeats itself; another seed does not.
    with P.make_train_iterator(records, image_list, cfg, process_index=0, process_count=1,
                               device_count=1) as again:
        _assert_same_batches(_take(again, 3), batches[:3])
    with P.make_train_iterator(records, image_list, _config(seed=6), process_index=0,
                               process_count=1, device_count=1) as other:
        assert not np.array_equal(next(other)["image"], batches[0]["image"])
    with P.make_train_iterator(records, image_list, cfg, num_epochs=1, process_index=0,
                               process_count=1, device_count=1) as one_epoch:
        _assert_same_batches(list(one_epoch), batches[:spe])


def test_bfloat16_batches(records, image_list):
    cfg = _config(read_threads=0)
    cfg.augment.dtype = "bfloat16"
    with P.make_train_iterator(records, image_list, cfg, process_index=0, process_count=1,
                               device_count=1) as it:
        assert next(it)["image"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("sampler", ["softmax", "continent"])
def test_process_shards_tile_the_global_batch(records, image_list, sampler):
    cfg = _config()
    cfg.sampler.name = sampler

    def run(index, count):
        with P.make_train_iterator(records, image_list, cfg, process_index=index,
                                   process_count=count, device_count=4) as it:
            return _take(it, 7)

    whole = run(0, 1)
    shards = [run(p, 2) for p in range(2)]
    for b, (s0, s1) in enumerate(zip(*shards, strict=True)):
        assert len(s0["index"]) == len(s1["index"]) == 4
        for k in ("image", "label", "index"):
            np.testing.assert_array_equal(np.concatenate([s0[k], s1[k]]), whole[b][k])
        if sampler == "softmax":                  # no image twice in one global batch
            assert len(np.unique(whole[b]["index"])) == 8


def test_batch_size_and_source_errors(records, image_list):
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by the 3 devices"):
        P.make_train_iterator(records, image_list, _config(), process_index=0, process_count=1,
                              device_count=3)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        P.make_train_iterator(records, image_list, _config(), process_index=0, process_count=3,
                              device_count=1)
    with pytest.raises(ValueError, match="45 records but the image list has 46 rows"):
        P.make_train_iterator(records[:-1], image_list, _config(), process_index=0,
                              process_count=1, device_count=1)
    shifted = records[1:] + records[:1]
    it = P.make_train_iterator(shifted, image_list, _config(read_threads=0), process_index=0,
                               process_count=1, device_count=1)
    with pytest.raises(ValueError, match="not aligned"), it:
        next(it)


def test_resume_from_saved_state_is_exact(records, image_list, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = _config()
    kw = dict(process_index=0, process_count=1, device_count=1)
    with P.make_train_iterator(records, image_list, cfg, **kw) as it:
        _take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
            mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
            mngr.wait_until_finished()
        expected = _take(it, 5)                   # crosses the epoch boundary after batch 5
    with P.make_train_iterator(records, image_list, cfg, **kw) as fresh:
        fresh.set_state(state)
        _assert_same_batches(_take(fresh, 5), expected)
    with P.make_train_iterator(records, image_list, cfg, **kw) as fresh:
        with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
            mngr.restore(3, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(fresh)))
        _assert_same_batches(_take(fresh, 5), expected)


def test_rewinding_an_iterator_replays_the_same_batches(records, image_list):
    with P.make_train_iterator(records, image_list, _config(), process_index=0, process_count=1,
                               device_count=1) as it:
        _take(it, 1)
        state = it.get_state()
        later = _take(it, 11)                     # into the third epoch (5 batches per epoch)
        it.set_state(state)
        _assert_same_batches(_take(it, 11), later)


def test_resume_with_worker_processes_is_exact(records, image_list):
    cfg = _config(num_workers=2, read_threads=1, worker_buffer_size=1)
    kw = dict(process_index=0, process_count=1, device_count=1)
    with P.make_train_iterator(records, image_list, cfg, **kw) as it:
        first = _take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        expected = _take(it, 4)
    # Worker processes do not change the data: same batches as the in-process pipeline.
    with P.make_train_iterator(records, image_list, _config(), **kw) as local:
        _assert_same_batches(_take(local, 7), first + expected)
    with P.make_train_iterator(records, image_list, cfg, **kw) as fresh:
        fresh.set_state(state)
        _assert_same_batches(_take(fresh, 4), expected)


class _CorruptSource:
    """In-memory source whose record ``bad_row`` holds bytes that are not an image."""

    def __init__(self, records, bad_row):
        self.records, self.bad_row = records, bad_row

    def __len__(self):
        return len(self.records)

    def __getitem__(self, row):
        if row == self.bad_row:
            return {"image": b"\xff\xd8 truncated", "index": row}
        return self.records[row]


class _DyingSource(_CorruptSource):
    """Kills the worker process that reads ``bad_row`` (as the OOM killer would)."""

    def __init__(self, records, bad_row):
        super().__init__(records, bad_row)
        self.parent_pid = os.getpid()

    def __getitem__(self, row):
        if row == self.bad_row and os.getpid() != self.parent_pid:
            os._exit(3)
        return self.records[row]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_raises_an_error_naming_the_record(records, image_list, num_workers):
    cfg = _config(num_workers=num_workers, max_bad_fraction=0.0)  # strict: no skipping
    kw = dict(process_index=0, process_count=1, device_count=1)
    source = _CorruptSource(records, bad_row=9)
    with pytest.raises(ImageDecodeError, match="list row 9") as info, \
            P.make_train_iterator(source, image_list, cfg, **kw) as it:
        _take(it, it.steps_per_epoch)
    assert "image id: id0009" in "\n".join(getattr(info.value, "__notes__", []))
    if num_workers == 0:                          # excluded at preparation: never read
        with P.make_train_iterator(source, image_list, cfg, exclude_rows=np.array([9]),
                                   **kw) as it:
            seen = np.concatenate([b["index"] for b in _take(it, 2 * it.steps_per_epoch)])
        assert 9 not in seen and len(seen) == 2 * 5 * 8


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_is_skipped_with_label_minus_one(records, image_list, num_workers):
    """Skipping keeps the batch shape and positions: only the bad row's slot changes."""
    kw = dict(process_index=0, process_count=1, device_count=1)
    with P.make_train_iterator(records, image_list, _config(), **kw) as it:
        good = _take(it, it.steps_per_epoch)
    with P.make_train_iterator(_CorruptSource(records, bad_row=9), image_list,
                               _config(num_workers=num_workers), **kw) as it:
        got = _take(it, it.steps_per_epoch)
    hits = 0
    for g, b in zip(good, got, strict=True):
        np.testing.assert_array_equal(g["index"], b["index"])
        assert not g["bad"].any()
        slot = b["index"] == 9
        hits += slot.sum()
        np.testing.assert_array_equal(b["bad"], slot)
        np.testing.assert_array_equal(b["label"], np.where(slot, -1, g["label"]))
        np.testing.assert_array_equal(b["image"][~slot], g["image"][~slot])
        assert not np.asarray(b["image"][slot], np.float32).any()
    assert hits == 1


def test_dead_worker_raises_a_clear_error(records, image_list):
    cfg = _config(num_workers=1, read_threads=1, worker_buffer_size=1)
    first_row = SAMPLERS.build("softmax", image_list, batch_size=8, seed=cfg.seed).epoch_indices(0)[0]
    source = _DyingSource(records, bad_row=int(first_row))
    with pytest.raises(P.DataWorkerError, match="worker process died.*exit code 3"), \
            P.make_train_iterator(source, image_list, cfg, process_index=0, process_count=1,
                                  device_count=1) as it:
        _take(it, it.steps_per_epoch)


def test_worker_pipelines_leave_no_shared_memory_at_exit():
    """An eval stream read to its end and a train iterator left open at exit clean up."""
    script = textwrap.dedent(f"""
        import io, types, numpy as np
        from PIL import Image
        from lmr_jax.data import pipeline as P
        buf = io.BytesIO()
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buf, "JPEG")
        records = [{{"image": buf.getvalue(), "index": i}} for i in range(16)]
        lst = types.SimpleNamespace(labels=np.arange(16) % 4, noisy=np.zeros(16, bool),
                                    continents=np.full(16, "Asia"))
        kw = dict(process_index=0, process_count=1, device_count=1)
        cfg = P.default_train_config({SIZE})
        cfg.global_batch_size, cfg.num_workers, cfg.worker_buffer_size = 4, 1, 2
        train = P.make_train_iterator(records, lst, cfg, **kw)
        for _ in range(3):
            batch = next(train)
        del batch
        ecfg = P.default_eval_config({SIZE})
        ecfg.batch_size, ecfg.num_workers = 8, 1
        with P.make_eval_iterator(records, ecfg, **kw) as it:
            assert sum(len(b["index"]) for b in it) == 16
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr
    assert "leaked shared_memory" not in out.stderr, out.stderr
    assert "Exception ignored" not in out.stderr, out.stderr


def test_eval_batches_cover_rows_in_order_with_marked_padding(records):
    cfg = P.default_eval_config(SIZE)
    cfg.batch_size = 4
    rows = np.arange(3, 24)                       # 21 rows: 11 + 10 over two processes
    per_process = []
    for p in range(2):
        with P.make_eval_iterator(records, cfg, rows=rows, process_index=p, process_count=2,
                                  device_count=8) as it:
            batches = list(it)
        assert len(batches) == it.num_batches == 3
        per_process.append(batches)
    valid = []
    pre = EvalPreprocess(cfg.preprocess)
    for batches in per_process:
        index = np.concatenate([b["index"] for b in batches])
        mask = np.concatenate([b["mask"] for b in batches])
        np.testing.assert_array_equal(mask, index >= 0)
        assert np.all(np.diff(index[mask]) == 1)                 # contiguous, in order
        assert not mask[-1]                                      # padded at the end
        for b in batches:
            for i, row in enumerate(b["index"]):
                expected = pre(records[row])["image"] if row >= 0 else 0
                np.testing.assert_array_equal(b["image"][i], expected)
        valid.append(index[mask])
    np.testing.assert_array_equal(np.concatenate(valid), rows)
    with pytest.raises(ValueError, match="not divisible by the 3 devices"):
        P.make_eval_iterator(records, cfg, process_index=0, process_count=2, device_count=3)
    with pytest.raises(ValueError, match="eval rows must lie in"):
        P.make_eval_iterator(records, cfg, rows=[0, N], process_index=0, process_count=1,
                             device_count=1)
