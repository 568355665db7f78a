"""Unknown and mistyped configuration keys and options, and wrong or damaged model checkpoints:
each is an error naming the key, option or path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

from lmr_jax.models import ModelConfig, create
from lmr_jax.models import registry as model_registry
from lmr_jax.models.saved_model import ModelCheckpointError, load_model, save_model
from lmr_jax.train import losses, trainer
from tests.faults.test_training_faults import make_data, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("override", "message"), [
    ("--config.stage1.base_lrr=0.1", "base_lrr"),          # unknown key
    ("--config.optim.momentun=0.5", "momentun"),
    ("--config.stage1.epochs=ten", "epochs"),                # mistyped value
    ("--config.stage1.batch_size=1.5", "batch_size"),
])
def test_unknown_or_mistyped_config_override_is_refused(override, message, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts/train.py"), "--config",
                          str(REPO / "configs/demo.py"), "--workdir", str(tmp_path / "w"),
                          override], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode != 0
    assert message in res.stderr
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_unknown_registry_options_are_refused():
    with pytest.raises(ValueError, match="label_smothing"):
        losses.LOSSES.build("arcface", scale=30.0, margin=0.3, label_smothing=0.1)
    with pytest.raises(ValueError, match="unknown loss 'arcfase'"):
        losses.LOSSES.build("arcfase", scale=30.0, margin=0.3)
    with pytest.raises(ValueError, match="resnet_tinyy"):
        model_registry.create("resnet_tinyy", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(path, create("resnet_tiny", rngs=nnx.Rngs(0)),
               config=ModelConfig(arch="resnet_tiny"))
    return path


def test_wrong_architecture_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ModelCheckpointError, match=r"holds a 'resnet_tiny' model, not 'resnet50'"):
        load_model(tiny_checkpoint, arch="resnet50")
    # as the trainer's starting point for a model with other head settings
    data = make_data(tmp_path / "data", bad={})
    config = tiny_config(data)
    config.init_checkpoint = str(tiny_checkpoint)
    with pytest.raises(ValueError, match=rf"{tiny_checkpoint}: model settings differ.*embed_dim"):
        trainer.train(config, str(tmp_path / "w"))


@pytest.mark.parametrize("damage", ["truncate", "delete_meta"])
def test_damaged_model_checkpoint_is_an_error_naming_it(tiny_checkpoint, tmp_path, damage):
    import shutil

    path = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, path)
    if damage == "truncate":
        files = [p for p in (path / "model").rglob("*") if p.is_file()
                 and p.stat().st_size > 64 and "metadata" not in p.name]
        assert files
        for p in files:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        shutil.rmtree(path / "meta")
    with pytest.raises(ModelCheckpointError, match=str(path)):
        load_model(path)
    load_model(tiny_checkpoint)  # the original stays readable
