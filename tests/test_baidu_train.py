"""Baidu's training recipes (configs/baidu): they load with Baidu's known settings, the softmax
classifier takes its class count from the list, and resnet152_vd at full depth trains with
N-pairs on the synthetic training images (tests/test_train.py's dataset) through
scripts/train.py: the loss falls from its first step."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from lmr_jax.models import saved_model
from lmr_jax.models.baidu_heads import BaiduClassifierModel, BaiduRetrievalModel
from lmr_jax.train import trainer
from tests.test_configs import load
from tests.test_train import make_dataset

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "baidu"


def test_baidu_configs_hold_baidus_settings():
    arc = load(str(CONFIGS / "res152_arcmargin.py"))
    assert (arc.model.arch, arc.model.last_stride, arc.model.head) == (
        "resnet152_vd", 2, "baidu_embedding")
    assert arc.loss.name == "arcmargin" and arc.classifier.name == "cosine"
    assert (arc.stage1.logit_scale, arc.stage1.margin) == (80.0, 0.15)
    assert not arc.loss.arcmargin.easy_margin
    npairs = load(str(CONFIGS / "res152_npairs.py"))
    assert npairs.loss.name == "npairs" and npairs.loss.npairs.reg_lambda == 0.01
    assert npairs.stage1.sampler == "pairs" and npairs.classifier.name == "none"
    assert npairs.stage1.base_lr == 1e-4
    soft = load(str(CONFIGS / "res152_softmax.py"))
    assert (soft.model.head, soft.loss.name, soft.stage1.image_size) == (
        "baidu_softmax_v2", "linear_softmax", 224)
    for c in (arc, npairs, soft):
        assert c.stage1.weight_decay == 1e-4 and c.optim.momentum == 0.9
        assert c.optim.bias_lr_factor == 1.0 and c.stage1.weight_decay_bias == 1e-4


def test_softmax_classifier_gets_the_list_class_count(tmp_path):
    config = load(str(CONFIGS / "res152_softmax.py"))
    config.model.arch = "resnet_tiny"  # the config path at a small size
    config.init_checkpoint = ""
    module, _ = trainer.build_module(config, 1, 11, "float32", str(tmp_path))
    assert isinstance(module.model, BaiduClassifierModel) and module.classifier is None
    assert module.model.num_classes == 11
    assert trainer.model_config(config, 11).num_classes == 11
    config.classifier.name = "other"
    with pytest.raises(ValueError, match="config.classifier.name"):
        trainer.build_module(config, 1, 11, "float32", str(tmp_path))


def test_resnet152_vd_trains_with_npairs(tmp_path):
    data = tmp_path / "data"
    make_dataset(str(data))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    workdir = tmp_path / "run"
    overrides = {
        "data.dir": str(data), "data.images": "/", "data.train.num_workers": 0,
        "data.train.read_threads": 1, "precision": "float32", "stage1.list": "clean",
        "stage1.image_size": 64, "stage1.batch_size": 8, "stage1.epochs": 0.67,
        "log.every_steps": 1, "log.tensorboard": False, "checkpoint.every_steps": 1000,
        "checkpoint.async_save": False}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config",
           str(CONFIGS / "res152_npairs.py"), "--workdir", str(workdir),
           *(f"--config.{k}={v}" for k, v in overrides.items())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "6 steps of 8 images at 64px" in log
    first, last = map(float, re.search(r"done in \d+ s: loss (\S+) -> (\S+);", log).groups())
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 5 and losses[-1] == pytest.approx(last)
    # N-pairs on 8-image batches varies a lot from batch to batch: every later loss is below the
    # first and on average less than half of it
    assert max(losses) < first and np.mean(losses) < first / 2, (first, losses)
    model, classifier, meta = saved_model.load_model(workdir / "stage1" / "export")
    assert isinstance(model, BaiduRetrievalModel) and classifier is None
    assert meta["arch"] == "resnet152_vd" and meta["model_kwargs"]["head"] == "baidu_embedding"
