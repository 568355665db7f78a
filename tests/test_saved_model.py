"""Saved models (lmr_jax.models.saved_model): round trip, metadata, old format versions and
clear errors; the model schema (ModelConfig) as create and the checkpoints read it."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmr_jax.models import ModelConfig, create, heads
from lmr_jax.models.saved_model import (
    ModelCheckpointError,
    load_model,
    read_metadata,
    save_model,
)

KWARGS = {"embed_dim": 32, "gem_p": 2.5}
CONFIG = ModelConfig(arch="resnet_tiny", **KWARGS)


def _leaves(module: nnx.Module) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(
                nnx.to_pure_dict(nnx.state(module)))[0]}


@pytest.fixture(scope="module")
def trained():
    """resnet_tiny with BN statistics away from their init, and a classifier."""
    model = create("resnet_tiny", rngs=nnx.Rngs(5), **KWARGS)
    rng = np.random.default_rng(0)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.BatchStat):
            var[...] = jnp.asarray(rng.uniform(0.5, 1.5, var.shape), jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    model.eval()
    classifier = heads.CosineClassifier(32, 5, num_subcenters=2, rngs=nnx.Rngs(6))
    return model, classifier, x


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    model, classifier, _ = trained
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    save_model(path, model, classifier, config=CONFIG,
               metadata={"stage": 2, "source": "test"})
    return path


def test_round_trip_restores_everything(trained, saved):
    model, classifier, x = trained
    loaded, loaded_cls, meta = load_model(saved)
    assert meta["arch"] == "resnet_tiny" and meta["stage"] == 2 and meta["source"] == "test"
    assert meta["model_kwargs"] == {"last_stride": 1, "head": "bn_neck", "embed_dim": 32,
                                    "pooling": "gem", "gem_p": 2.5, "learnable_p": False,
                                    "num_classes": 0}
    assert meta["format_version"] == 2
    assert meta["classifier"] == {"num_classes": 5, "num_subcenters": 2, "embed_dim": 32}
    want, got = _leaves(model), _leaves(loaded)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # BN statistics differ from their init, so the comparison above covers them.
    assert not np.allclose(np.asarray(model.base.bn1.mean[...]), 0.0)
    assert loaded.pool.p == 2.5
    for k, v in _leaves(classifier).items():
        np.testing.assert_array_equal(_leaves(loaded_cls)[k], v)
    assert loaded_cls.num_subcenters == 2
    assert loaded.base.layer1[0].bn2.use_running_average  # evaluation mode
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_compute_dtype_override(saved):
    loaded, _, meta = load_model(saved, dtype=jnp.bfloat16)
    assert meta["dtype"] == "float32"  # as saved; the override applies to this load only
    assert loaded.base.layer2[0].conv2.dtype == jnp.bfloat16
    assert loaded.fcneck.dtype == jnp.bfloat16
    assert loaded.base.conv1.kernel[...].dtype == jnp.float32  # parameters stay float32


def test_without_classifier(trained, tmp_path):
    model, _, _ = trained
    path = str(tmp_path / "emb")
    save_model(path, model, config=CONFIG)
    loaded, classifier, meta = load_model(path, arch="resnet_tiny")
    assert classifier is None and meta["classifier"] is None
    assert read_metadata(path)["dtype"] == "float32"


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelCheckpointError, match="no such model checkpoint"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelCheckpointError, match="not a lmr_jax model checkpoint"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "file.pth").write_bytes(b"x")
    with pytest.raises(ModelCheckpointError, match="convert_weights.py"):
        load_model(str(tmp_path / "file.pth"))


def test_arch_mismatch_and_unknown_arch(saved, tmp_path):
    with pytest.raises(ModelCheckpointError, match="holds a 'resnet_tiny' model, not 'resnet50'"):
        load_model(saved, arch="resnet50")
    # A checkpoint whose metadata names an arch this code does not know.
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(saved, copy)
    meta_file = os.path.join(copy, "meta", "metadata")
    meta = json.loads(open(meta_file).read())
    meta["arch"] = "resnet9000"
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ModelCheckpointError, match="'resnet9000' is not a registered model"):
        load_model(copy)


def test_arrays_that_do_not_fit_the_metadata(trained, tmp_path):
    """Saved with the wrong model_kwargs: the rebuilt model has another neck size."""
    model, _, _ = trained
    path = str(tmp_path / "lie")
    save_model(path, model, config=ModelConfig(arch="resnet_tiny", embed_dim=48))
    with pytest.raises(ModelCheckpointError,
                       match=r"fcneck.kernel \(stored \(512, 32\), model \(512, 48\)\)"):
        load_model(path)


def test_save_refusals(trained, saved, tmp_path):
    model, _, _ = trained
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(saved, model, config=CONFIG)
    with pytest.raises(ValueError, match="reserved"):
        save_model(str(tmp_path / "a"), model, config=CONFIG,
                   metadata={"arch": "x"})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_model(str(tmp_path / "b"), model, config=CONFIG,
                   metadata={"array": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unknown model settings \['depth'\]"):
        ModelConfig.from_dict({"arch": "resnet_tiny", "depth": 3})
    with pytest.raises(ValueError, match="unknown arch"):
        save_model(str(tmp_path / "d"), model, config=ModelConfig(arch="nope"))
    assert not any(os.path.exists(tmp_path / n) for n in "abd")


def test_overwrite_replaces(trained, tmp_path):
    model, _, _ = trained
    path = str(tmp_path / "m")
    save_model(path, model, config=CONFIG, metadata={"v": 1})
    save_model(path, model, config=CONFIG, metadata={"v": 2},
               overwrite=True)
    assert read_metadata(path)["v"] == 2


def _rewrite_meta(saved: str, copy: str, edit) -> None:
    import shutil

    shutil.copytree(saved, copy)
    meta_file = os.path.join(copy, "meta", "metadata")
    meta = json.loads(open(meta_file).read())
    edit(meta)
    with open(meta_file, "w") as f:
        json.dump(meta, f)


def test_format_version_1_reads_as_the_bn_neck_head(trained, saved, tmp_path):
    """Checkpoints written before heads were registered have no 'head' and version 1."""
    model, _, x = trained

    def to_v1(meta):
        meta["format_version"] = 1
        del meta["model_kwargs"]["head"]

    _rewrite_meta(saved, str(tmp_path / "v1"), to_v1)
    loaded, _, meta = load_model(str(tmp_path / "v1"))
    assert meta["format_version"] == 1 and isinstance(loaded, heads.RetrievalModel)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    _rewrite_meta(saved, str(tmp_path / "v3"), lambda m: m.update(format_version=3))
    with pytest.raises(ModelCheckpointError, match="format version 3 is not supported"):
        load_model(str(tmp_path / "v3"))


def test_create_reads_the_model_config():
    a = create(CONFIG, rngs=nnx.Rngs(0))
    b = create("resnet_tiny", rngs=nnx.Rngs(0), **KWARGS)
    assert a.embed_dim == b.embed_dim == 32 and a.pool.p == b.pool.p == 2.5
    assert create(CONFIG, embed_dim=16, rngs=nnx.Rngs(0)).embed_dim == 16  # override
    with pytest.raises(ValueError, match="unknown head 'baidu'"):
        create(CONFIG, head="baidu")
    with pytest.raises(ValueError, match=r"unknown model settings \['neck'\]"):
        create("resnet_tiny", neck=3)


def test_a_head_refuses_settings_it_does_not_take(monkeypatch):
    from lmr_jax.models import layers

    class AvgLinear(nnx.Module):
        """A head without pooling options (like the Baidu head): avgpool -> Linear."""

        def __init__(self, backbone, *, embed_dim: int, dtype, rngs):
            self.base = backbone
            self.fc = layers.Linear(backbone.num_features, embed_dim, dtype=dtype, rngs=rngs)

        def __call__(self, x):
            return self.fc(jnp.mean(self.base(x), axis=(1, 2)))

    monkeypatch.setitem(heads.HEADS._factories, "avg_linear", AvgLinear)
    model = create("resnet_tiny", head="avg_linear", embed_dim=8, rngs=nnx.Rngs(0))
    assert model(jnp.zeros((1, 32, 32, 3))).shape == (1, 8)
    with pytest.raises(ValueError, match=r"head 'avg_linear' does not take .*\['gem_p'\]"):
        create("resnet_tiny", head="avg_linear", gem_p=4.0)
