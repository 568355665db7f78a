"""The Baidu heads as registered heads of the model schema, and the Baidu backbones under the
lmr_jax heads: ``models.create(ModelConfig)``, saved models loaded by path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmr_jax import models
from lmr_jax.models import saved_model
from lmr_jax.models.baidu_heads import BaiduClassifierModel, BaiduRetrievalModel
from lmr_jax.models.heads import RetrievalModel
from lmr_jax.models.model_config import ModelConfig


def abstract_output(config: ModelConfig, size: int) -> tuple[nnx.Module, jax.ShapeDtypeStruct]:
    model = nnx.eval_shape(lambda: models.create(config, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m: m(jnp.zeros((2, size, size, 3))), model)
    return model, out


@pytest.mark.parametrize("arch,size", [("resnet152_vd", 64), ("se_resnext152_64x4d_vd", 64),
                                       ("inception_v4", 96)])
def test_baidu_backbones_take_the_lmr_jax_head(arch, size):
    model, out = abstract_output(ModelConfig(arch=arch, head="bn_neck", embed_dim=128), size)
    assert isinstance(model, RetrievalModel)
    assert out.shape == (2, 128) and out.dtype == jnp.float32


@pytest.mark.parametrize("head,cls,num_classes,shape", [
    ("baidu_embedding", BaiduRetrievalModel, 0, (2, 512)),
    ("baidu_softmax_v1", BaiduClassifierModel, 9, (2, 9)),
    ("baidu_softmax_v2", BaiduClassifierModel, 9, (2, 9))])
def test_baidu_heads_are_registered(head, cls, num_classes, shape):
    model, out = abstract_output(ModelConfig(arch="resnet152_vd", last_stride=2, head=head,
                                             num_classes=num_classes), 64)
    assert isinstance(model, cls)
    assert out.shape == shape
    if head == "baidu_softmax_v1":
        assert model.classifier[0].kernel.shape == (2048, 256)
        assert model.classifier[1].kernel.shape == (256, 9)


def test_classifier_heads_need_num_classes_and_embedding_heads_refuse_it():
    with pytest.raises(ValueError, match="needs the model setting num_classes"):
        models.create(ModelConfig(arch="resnet_tiny", head="baidu_softmax_v2"))
    with pytest.raises(ValueError, match=r"does not take the model settings \['num_classes'\]"):
        models.create(ModelConfig(arch="resnet_tiny", head="baidu_embedding", num_classes=3))
    with pytest.raises(ValueError, match=r"does not take the model settings \['embed_dim'\]"):
        models.create(ModelConfig(arch="resnet_tiny", head="baidu_softmax_v1", num_classes=3,
                                  embed_dim=64))


@pytest.mark.parametrize("head", ["baidu_softmax_v1", "baidu_embedding"])
def test_saved_baidu_model_loads_by_path(tmp_path, head):
    config = ModelConfig(arch="resnet_tiny", last_stride=2, head=head,
                         num_classes=5 if head != "baidu_embedding" else 0)
    model = models.create(config, rngs=nnx.Rngs(3))
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    want = np.asarray(model(x))
    saved_model.save_model(tmp_path / "m", model, config=config)
    loaded, classifier, meta = saved_model.load_model(tmp_path / "m")
    assert classifier is None
    assert saved_model.model_config_of(meta) == config
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(np.asarray(loaded(x)), want)
