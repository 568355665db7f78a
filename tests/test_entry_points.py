"""The named entry points run as typed: default output folders, --help with an example."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ensemble import _config, ensemble  # noqa: F401 - the fixture is used below

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def test_train_without_workdir_defaults_to_runs_config_name(tmp_path):
    """``python scripts/train.py --config configs/ser101ibn_512.py``: no --workdir needed."""
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--config",
                          str(REPO / "configs" / "ser101ibn_512.py")], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    workdir = tmp_path / "runs" / "ser101ibn_512"
    assert f"workdir: {workdir}" in res.stdout.splitlines()[0]
    # It gets as far as the (here absent) prepared data, with the config saved in the workdir.
    assert (workdir / "config.json").is_file()
    assert res.returncode != 0 and "--workdir" not in res.stderr
    assert "lists/clean.npz" in res.stderr


def test_eval_without_workdir_defaults_to_runs_eval_config_name(ensemble, tmp_path):  # noqa: F811
    root = ensemble[0]
    cfg = _config(root, (1.0,), "before_merge", tmp_path / "unused")
    text = cfg.read_text().replace(f"c.workdir = {str(tmp_path / 'unused')!r}", 'c.workdir = ""')
    named = tmp_path / "my_eval.py"
    named.write_text(text)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), f"--config={named}"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "my_eval"
    assert res.stdout.splitlines()[0] == f"evaluation outputs: {out}"
    assert (out / "report.json").is_file() and (out / "submission.csv").is_file()


@pytest.mark.parametrize("script,flag", [("eval", "--submission"), ("extract", "--scales"),
                                         ("recognize", "--ref_list")])
def test_help_lists_flags_and_an_example(script, flag):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py"), "--help"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    assert f"python scripts/{script}.py --" in text and flag in text


def test_eval_default_workdir_ignores_the_config_argument(tmp_path):
    """``--config FILE:CHECKPOINT,SIZE``: the folder is named after FILE (no data here: it stops
    after saying where its outputs would go)."""
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), "--config",
                          f"{REPO / 'configs' / 'eval' / 'gldv2_val.py'}:runs/x/export,256"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert res.stdout.splitlines()[0] == (
        f"evaluation outputs: {tmp_path / 'runs' / 'eval' / 'gldv2_val'}")
