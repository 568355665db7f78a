"""Training configs: every config loads, the reference schedules are encoded as the reference
code's yml files state them, and bad settings fail with messages that name the problem."""

import glob
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from lmr_jax.train import distributed, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_and_is_consistent(path):
    config = load(path)
    stages = trainer.parse_stages(config)
    from lmr_jax import models

    assert config.model.arch in models.list_models()
    for k in stages:
        sc = config[f"stage{k}"]
        assert sc.epochs > 0 and sc.base_lr > 0 and sc.batch_size > 0
        assert sc.sampler in ("softmax", "pk", "continent")
        assert 0 <= sc.warmup_epochs < sc.epochs
    assert config.loss.name in ("arcface", "cosface", "subcenter_arcface", "softmax")


# (list, size, epochs, base_lr, per-GPU batch, warmup, weight decay, sampler, s, m) per stage,
# from the reference's configs/GLDv2/<arch>_{384|448,..._finetune,512_finetune,512_all}.yml.
REFERENCE = {
    "ser101ibn_512.py": ("se_resnet101_ibn_a", [
        ("clean", 384, 10, 0.08, 96, 1, 5e-4, "softmax", 30, 0.3),
        ("c2x", 384, 6, 0.008, 96, 0, 5e-4, "softmax", 30, 0.3),
        ("full", 512, 4, 0.0008, 18, 0, 1e-5, "softmax", 30, 0.3),
        ("all", 512, 4, 0.0008, 18, 0, 1e-5, "continent", 30, 0.3)]),
    "rxt101ibn_512.py": ("resnext101_ibn_a", [
        ("clean", 384, 10, 0.08, 40, 1, 5e-4, "softmax", 30, 0.3),
        ("c2x", 384, 6, 0.008, 40, 0, 5e-4, "softmax", 30, 0.3),
        ("full", 512, 4, 0.0008, 18, 0, 1e-5, "softmax", 30, 0.3),
        ("all", 512, 4, 0.0008, 18, 0, 1e-5, "continent", 30, 0.3)]),
    "resnest101_512.py": ("resnest101", [
        ("clean", 384, 10, 0.08, 36, 1, 5e-4, "softmax", 30, 0.3),
        ("c2x", 384, 6, 0.008, 88, 0, 5e-4, "softmax", 30, 0.3),
        ("full", 512, 2, 0.0008, 40, 0, 1e-5, "softmax", 30, 0.3),
        ("all", 512, 2, 0.0008, 40, 0, 1e-5, "continent", 30, 0.3)]),
    "resnest269_512.py": ("resnest269", [
        ("clean", 448, 10, 0.08, 28, 1, 5e-4, "softmax", 30, 0.3),
        ("c2x", 448, 6, 0.008, 28, 0, 5e-4, "softmax", 30, 0.3),
        ("full", 512, 2, 0.0008, 6, 0, 5e-4, "softmax", 60, 0.0),
        ("all", 512, 2, 0.0008, 6, 0, 5e-4, "continent", 60, 0.0)]),
    "r50_256.py": ("resnet50", [("clean", 256, 10, 0.08, 128, 1, 5e-4, "softmax", 30, 0.3)]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_schedules(name):
    config = load(os.path.join(ROOT, "configs", name))
    arch, stages = REFERENCE[name]
    assert config.model.arch == arch and config.model.last_stride == 1
    assert config.model.embed_dim == 512 and config.model.pooling == "gem"
    assert config.loss.name == "arcface" and config.loss.arcface.label_smoothing == 0
    assert config.optim.bias_lr_factor == 2 and config.optim.momentum == 0.9
    assert trainer.parse_stages(config) == list(range(1, len(stages) + 1))
    for k, (lst, size, epochs, lr, per_gpu, warmup, wd, sampler, s, m) in enumerate(stages, 1):
        sc = config[f"stage{k}"]
        got = (sc.list, sc.image_size, sc.epochs, sc.base_lr, sc.batch_size, sc.warmup_epochs,
               sc.weight_decay, sc.weight_decay_bias, sc.sampler, sc.logit_scale, sc.margin)
        assert got == (lst, size, epochs, lr, 8 * per_gpu, warmup, wd, wd, sampler, s, m), k
    assert config.init_checkpoint  # starts from a converted ImageNet backbone


def test_parse_stages():
    config = load(os.path.join(ROOT, "configs", "ser101ibn_512.py"))
    config.stages = "3,4"
    assert trainer.parse_stages(config) == [3, 4]
    config.stages = "4, 2"
    assert trainer.parse_stages(config) == [2, 4]
    config.stages = "5"
    with pytest.raises(ValueError, match=r"no config.stage5 \(this config defines stages "
                                         r"\[1, 2, 3, 4\]\)"):
        trainer.parse_stages(config)
    config.stages = "one"
    with pytest.raises(ValueError, match="expected stage numbers"):
        trainer.parse_stages(config)


def test_global_batch_must_divide_over_devices():
    fake = types.SimpleNamespace(devices=np.array(
        [types.SimpleNamespace(process_index=i // 4) for i in range(8)]))
    assert distributed.local_batch_size(144, fake) == 72  # 2 processes
    with pytest.raises(ValueError, match="global batch 18 is not divisible by the 8 devices"):
        distributed.local_batch_size(18, fake)


def test_unknown_key_on_the_command_line_names_it(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                          "--config", os.path.join(ROOT, "configs", "demo.py"),
                          "--workdir", str(tmp_path), "--config.stage1.base_lrr=0.1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode != 0
    assert "base_lrr" in out.stderr and 'Did you mean "base_lr"' in out.stderr
    assert not os.listdir(tmp_path)  # nothing was written


def test_missing_data_and_missing_previous_stage_are_named(tmp_path):
    config = load(os.path.join(ROOT, "configs", "demo.py"))
    config.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"image list .*nowhere/lists/clean.npz"):
        trainer.train(config, str(tmp_path / "run"))

    from tests.test_train import CONFIG, make_dataset

    make_dataset(str(tmp_path / "data"))
    (tmp_path / "tiny.py").write_text(CONFIG.format(data_dir=str(tmp_path / "data")))
    config = load(str(tmp_path / "tiny.py"))
    config.stages = "2"
    with pytest.raises(FileNotFoundError, match=r"stage 2 starts from stage 1's final model "
                                                r".*stage1/export, which does not exist"):
        trainer.train(config, str(tmp_path / "run2"))
