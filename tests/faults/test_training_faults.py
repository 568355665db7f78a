"""Training faults, in-process on a tiny dataset: bad images (direct-file mode), config drift,
damaged checkpoints and metrics.jsonl after a resume.

Each case is an interrupted or changed run followed by a re-run; what must hold afterwards: the
bad images are skipped and listed once, the run stops past the cap, a changed result setting is
an error naming the key, a damaged newest checkpoint is named and the previous one used, and the
re-run ends with the same parameters as an uninterrupted run.
"""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lmr_jax.data.lists import ImageList
from lmr_jax.models import saved_model
from lmr_jax.train import trainer
from lmr_jax.train.config import base_config, stage
from tests.faults import bad_files

N_CLASSES, PER_CLASS, BATCH = 4, 8, 8      # 32 images, 4 steps per epoch
BAD = {3: "zero_byte", 9: "missing", 12: "bomb_png", 17: "html_as_jpg", 21: "truncated_png",
       26: "truncated_jpeg", 30: "corrupt_jpeg"}  # list row -> kind of bad file


def make_data(root, bad=BAD):
    """A direct-file dataset (list with absolute paths); rows in ``bad`` hold bad files."""
    os.makedirs(root / "lists", exist_ok=True)
    rng = np.random.default_rng(0)
    ids, labels, paths = [], [], []
    for row in range(N_CLASSES * PER_CLASS):
        c = row // PER_CLASS
        iid = f"{row:016x}"
        path = root / f"{iid}.jpg"
        if row in bad and bad[row] == "missing":
            pass  # listed, never written
        elif row in bad:
            path.write_bytes(bad_files.make(bad[row]))
        else:
            img = np.full((24, 24, 3), 40 * c, np.uint8) + rng.integers(0, 30, (24, 24, 3),
                                                                           dtype=np.uint8)
            Image.fromarray(img).save(path, quality=90)
        ids.append(iid)
        labels.append(c)
        paths.append(str(path))
    n = len(ids)
    ImageList(ids=np.array(ids), labels=np.array(labels), noisy=np.zeros(n, bool),
              countries=np.full(n, "FR"), continents=np.full(n, "Europe"),
              num_classes=N_CLASSES, name="clean", paths=np.array(paths)).save(
        root / "lists" / "clean.npz")
    return root


def tiny_config(data_dir, **overrides):
    c = base_config("resnet_tiny")
    c.precision = "float32"
    c.data.dir = str(data_dir)
    c.data.images = "/"
    c.data.train.num_workers = 0
    c.data.train.read_threads = 1
    c.data.train.max_bad_fraction = 0.5  # 7 of 32 rows are bad: 7 to 14 of 48 samples
    c.model.embed_dim = 16
    c.stage1 = stage("clean", "clean", image_size=16, epochs=1.5, base_lr=0.05,
                     batch_size=BATCH, warmup_epochs=0, weight_decay=5e-4)
    c.checkpoint.every_steps = 2
    c.checkpoint.max_to_keep = 3
    c.checkpoint.async_save = False
    c.log.every_steps = 1
    c.log.tensorboard = False
    for key, value in overrides.items():
        c[key] = value
    return c


def params(workdir):
    model, classifier, _ = saved_model.load_model(os.path.join(workdir, "stage1", "export"))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    out = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    out["classifier"] = np.asarray(classifier.weight[...])
    return out


def bad_rows(workdir):
    with open(workdir / "bad_images.tsv") as f:
        return [(int(r["step"]), int(r["row"]), r["reason"])
                for r in csv.DictReader(f, delimiter="\t")]


def metric_steps(workdir):
    return [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")
            if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("faults_train") / "data")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    trainer.train(tiny_config(data), str(workdir))
    return workdir, params(workdir), bad_rows(workdir)


def test_bad_images_are_skipped_counted_and_listed(uninterrupted):
    workdir, _, listed = uninterrupted
    # 6 steps x 8 = 48 samples of 32 rows: every bad row is drawn once or twice
    assert {row for _, row, _ in listed} == set(BAD)
    assert all(reason for _, _, reason in listed)
    reasons = {row: reason for _, row, reason in listed}
    assert "empty data" in reasons[3]
    assert "OSError" in reasons[9] and "No such file" in reasons[9]
    assert "decompression bomb" in reasons[12]
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    counts = [r["bad_images"] for r in records if "loss" in r]
    assert counts == sorted(counts) and counts[-1] == len(listed)


def test_too_many_bad_images_stop_with_a_clear_error(data, tmp_path):
    config = tiny_config(data)
    config.data.train.max_bad_fraction = 0.02  # 0.96 of 48 samples: the first bad one stops
    with pytest.raises(trainer.TooManyBadImages, match="max_bad_fraction=0.02.*bad_images.tsv"):
        trainer.train(config, str(tmp_path))
    assert bad_rows(tmp_path)  # listed before stopping


class _Killed(BaseException):
    """Stands for a SIGKILL in-process (BaseException: nothing in the trainer catches it)."""


@pytest.mark.slow_fault
def test_resume_after_interruption_keeps_batches_and_logs_each_step_once(data, uninterrupted,
                                                                         tmp_path, monkeypatch):
    """Stop the run before step 5 (after its step-4 checkpoint), leave behind what a killed run
    would have written after it, resume: the same parameters, the same skipped rows once, and
    every step once in metrics.jsonl."""
    ref_dir, ref_params, ref_bad = uninterrupted
    count_bad = trainer._StageRun._count_bad

    def killed_at_step_5(self, batch, step, total):
        if step == 5:
            raise _Killed
        count_bad(self, batch, step, total)

    monkeypatch.setattr(trainer._StageRun, "_count_bad", killed_at_step_5)
    with pytest.raises(_Killed):
        trainer.train(tiny_config(data), str(tmp_path))
    monkeypatch.undo()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"global_step": trainer.global_step(1, 5), "stage": 1, "step": 5,
                            "loss": 9.0}) + "\n" + '{"global_step": 1000')
    with open(tmp_path / "bad_images.tsv", "a") as f:
        f.write("1\t5\t3\tbogus\tleft by a killed run\n")
    out = trainer.train(tiny_config(data), str(tmp_path))
    assert out[0].resumed_from == 4
    got = params(tmp_path)
    for k, v in ref_params.items():
        assert np.array_equal(got[k], v), k
    assert bad_rows(tmp_path) == ref_bad
    # each step once (the resumed run's first step compiles and is not logged, as in any run)
    steps = metric_steps(tmp_path)
    assert steps == sorted(set(steps)) and set(steps) == set(metric_steps(ref_dir)) - {5}
    assert all(json.loads(line).get("loss") != 9.0 for line in open(tmp_path / "metrics.jsonl"))


def test_changed_result_setting_is_an_error_naming_the_key(data, uninterrupted, tmp_path):
    ref_dir, _, _ = uninterrupted
    work = tmp_path / "w"
    shutil.copytree(ref_dir, work)
    # a finished stage whose settings changed: an error, not a silent skip
    with pytest.raises(trainer.ConfigChanged, match=r"stage1\.base_lr: 0\.05 -> 0\.01"):
        trainer.train(tiny_config(data, stage1=stage(
            "clean", "clean", image_size=16, epochs=1.5, base_lr=0.01, batch_size=BATCH,
            warmup_epochs=0, weight_decay=5e-4)), str(work))
    assert json.load(open(work / "config.json"))["stage1"]["base_lr"] == 0.05  # not replaced
    # operational keys may change
    config = tiny_config(data)
    config.log.every_steps = 3
    config.checkpoint.every_steps = 1
    config.data.train.read_threads = 2
    assert trainer.train(config, str(work)) == []
    # resuming mid-stage with another seed: an error too, with the override it continues
    shutil.rmtree(work / "stage1" / "export")
    with pytest.raises(trainer.ConfigChanged, match=r"seed: 0 -> 1"):
        trainer.train(tiny_config(data, seed=1), str(work))
    out = trainer.train(tiny_config(data, seed=1), str(work), allow_config_change=True)
    assert out[0].resumed_from == 6


@pytest.mark.parametrize("damage", ["truncate", "garble_meta"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(data, uninterrupted, tmp_path,
                                                              damage, capsys):
    ref_dir, ref_params, _ = uninterrupted
    work = tmp_path / "w"
    shutil.copytree(ref_dir, work)
    shutil.rmtree(work / "stage1" / "export")
    ckpts = work / "stage1" / "checkpoints"
    assert sorted(os.listdir(ckpts), key=int) == ["2", "4", "6"]
    bad_files.damage_checkpoint(ckpts / "6", damage)
    out = trainer.train(tiny_config(data), str(work))
    printed = capsys.readouterr().out + capsys.readouterr().err
    assert f"{ckpts}/6 cannot be restored" in printed
    assert out[0].resumed_from == 4
    assert (work / "stage1" / "damaged_checkpoints" / "6").is_dir()
    got = params(work)
    for k, v in ref_params.items():
        assert np.array_equal(got[k], v), k


@pytest.mark.slow_fault
def test_full_disk_during_a_checkpoint_save_keeps_the_previous(data, uninterrupted, tmp_path,
                                                               monkeypatch):
    """ENOSPC while orbax writes checkpoint 4 (its meta item): the run stops with the OSError,
    checkpoint 2 stays, and the re-run resumes from it to the uninterrupted result."""
    import errno

    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    _, ref_params, _ = uninterrupted
    real_save = jch.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_4(self, x, directory):
        if isinstance(x, dict) and x.get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await real_save(self, x, directory)

    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", disk_full_at_step_4)
    # orbax passes the ENOSPC on, or (a race in its clean-up) fails on the temporary directory
    # the failed write left; either way the message names the checkpoint and the intact ones
    with pytest.raises(OSError, match=r"checkpoints/[46]: cannot write this checkpoint \(.*\); "
                                      r"the complete checkpoints \[2\] are intact"):
        trainer.train(tiny_config(data), str(tmp_path))
    monkeypatch.undo()
    ckpts = tmp_path / "stage1" / "checkpoints"
    assert [p for p in os.listdir(ckpts) if p.isdigit()] == ["2"]
    out = trainer.train(tiny_config(data), str(tmp_path))
    assert out[0].resumed_from == 2
    got = params(tmp_path)
    for k, v in ref_params.items():
        assert np.array_equal(got[k], v), k
