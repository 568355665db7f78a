"""Saved models: a retrieval model (and optionally its classifier) saved with orbax, loadable by
its path alone (the architecture is in the metadata).

Training-state checkpoints for resuming a run (optimiser state, step, data iterator) are a
different thing: :mod:`lmr_jax.train.train_checkpoints`.

A model checkpoint is an orbax directory with three items:
  * ``model``: the model's NNX state as a nested dict of arrays (params, frozen params and
    BatchNorm statistics; ``StandardSave``),
  * ``classifier``: the same for the ``CosineClassifier`` (only when one was saved),
  * ``meta``: JSON with ``format`` / ``format_version``, ``arch`` and ``model_kwargs`` (the
    :class:`~lmr_jax.models.model_config.ModelConfig`: its ``arch`` and its other fields),
    ``dtype``, ``classifier`` (``{"num_classes", "num_subcenters", "embed_dim"}`` or null) and
    any caller metadata.

Format versions: 2 records every ModelConfig field; 1 (before heads were registered) has no
``head`` and is read as the ``bn_neck`` head, which is what it held.

``load_model`` rebuilds the model from ``meta`` and restores the arrays, so a checkpoint is
loaded by its path alone. Writes are atomic (orbax writes to a temporary directory and renames
it when complete).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from lmr_jax.models import heads, registry
from lmr_jax.models.model_config import ModelConfig

FORMAT = "lmr_jax.model"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
RESERVED_KEYS = ("format", "format_version", "arch", "model_kwargs", "dtype", "classifier")


class ModelCheckpointError(ValueError):
    """A path is not a model checkpoint of this format, or does not fit what was asked."""


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        model=ocp.StandardCheckpointHandler(), classifier=ocp.StandardCheckpointHandler(),
        meta=ocp.JsonCheckpointHandler()))


def _dtype_name(dtype: Any) -> str:
    return jnp.dtype(dtype).name


def _classifier_config(classifier: heads.CosineClassifier) -> dict[str, int]:
    if not isinstance(classifier, heads.CosineClassifier):
        raise TypeError(f"classifier must be a lmr_jax.models.heads.CosineClassifier, got "
                        f"{type(classifier).__name__}")
    return {"num_classes": int(classifier.num_classes),
            "num_subcenters": int(classifier.num_subcenters),
            "embed_dim": int(classifier.weight.shape[1])}


def model_config_of(meta: Mapping[str, Any], *, where: str = "checkpoint") -> ModelConfig:
    """The ModelConfig a checkpoint's metadata records (any readable format version)."""
    return ModelConfig.from_dict({"arch": meta["arch"], **meta["model_kwargs"]},
                                 where=f"{where}: model_kwargs")


def save_model(path: str | os.PathLike, model: nnx.Module,
               classifier: heads.CosineClassifier | None = None, *, config: ModelConfig,
               dtype: Any = jnp.float32, metadata: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> None:
    """Writes ``model`` (and ``classifier``) as an orbax model checkpoint at ``path``.

    Args:
      path: the checkpoint directory to create.
      model: a ``lmr_jax.models.create(config, dtype=dtype)`` model.
      classifier: its ``CosineClassifier``, or None to save the embedding model alone.
      config: the model's architecture (every field is recorded).
      dtype: the computation dtype it was built with (recorded; ``load_model``'s default).
      metadata: extra JSON-serialisable entries stored with the checkpoint and returned by
        ``load_model`` (e.g. the source checkpoint, training stage); must not use the keys in
        ``RESERVED_KEYS``.
      overwrite: replace an existing checkpoint at ``path``.
    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      ValueError: an unknown arch, reserved or non-JSON metadata.
    """
    path = os.path.abspath(os.fspath(path))
    if config.arch not in registry.list_models():
        raise ValueError(f"unknown arch {config.arch!r}; known: "
                         f"{', '.join(registry.list_models())}")
    kwargs = config.to_dict()
    arch = kwargs.pop("arch")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved ({RESERVED_KEYS})")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
            "model_kwargs": kwargs, "dtype": _dtype_name(dtype),
            "classifier": None if classifier is None else _classifier_config(classifier),
            **extra}
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {e}") from e
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    items = {"model": ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model))),
             "meta": ocp.args.JsonSave(meta)}
    if classifier is not None:
        items["classifier"] = ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(classifier)))
    _checkpointer().save(path, args=ocp.args.Composite(**items), force=overwrite)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` JSON of a model checkpoint (without reading the arrays).

    Raises:
      ModelCheckpointError: ``path`` is not a model checkpoint written by ``save_model``.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        raise ModelCheckpointError(
            f"{path}: is a file, not a lmr_jax model checkpoint directory (a PyTorch checkpoint "
            "must first be converted with scripts/convert_weights.py)")
    if not os.path.isdir(path):
        raise ModelCheckpointError(f"{path}: no such model checkpoint directory")
    if not os.path.isdir(os.path.join(path, "meta")) or not os.path.isdir(
            os.path.join(path, "model")):
        raise ModelCheckpointError(
            f"{path}: not a lmr_jax model checkpoint (expected the orbax items 'model' and "
            "'meta' written by lmr_jax.models.saved_model.save_model; a PyTorch checkpoint "
            "must first be converted with scripts/convert_weights.py)")
    meta = _checkpointer().restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelCheckpointError(f"{path}: 'meta' does not describe a {FORMAT} checkpoint")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelCheckpointError(
            f"{path}: format version {meta.get('format_version')} is not supported "
            f"(this code reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    return meta


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in flat}


def _restore_into(ckpt: ocp.Checkpointer, path: str, item: str, abstract: nnx.Module,
                  what: str) -> nnx.Module:
    """Restores the orbax item ``item`` into the abstract module's structure, checked."""
    graphdef, state = nnx.split(abstract)
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                          nnx.to_pure_dict(state))
    try:
        stored_meta = ckpt.metadata(path).item_metadata[item]
    except (ValueError, OSError, KeyError) as e:  # json / tensorstore / missing-file errors
        raise ModelCheckpointError(f"{path}: the stored {what} cannot be read (damaged or "
                                   f"incomplete checkpoint): {type(e).__name__}: {e}") from e
    stored = _leaf_shapes(stored_meta.tree if hasattr(stored_meta, "tree") else stored_meta)
    expected = _leaf_shapes(target)
    if stored != expected:
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        shapes = sorted(f"{k} (stored {stored[k]}, model {expected[k]})"
                        for k in set(stored) & set(expected) if stored[k] != expected[k])
        raise ModelCheckpointError(
            f"{path}: the stored {what} does not match the model rebuilt from its metadata: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}, wrong shapes {shapes[:10]}")
    try:
        restored = ckpt.restore(path, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(target)}))[item]
    except (ValueError, OSError, KeyError) as e:
        raise ModelCheckpointError(f"{path}: the stored {what} cannot be read (damaged or "
                                   f"incomplete checkpoint): {type(e).__name__}: {e}") from e
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def load_model(path: str | os.PathLike, *, dtype: Any = None, arch: str | None = None
               ) -> tuple[nnx.Module, heads.CosineClassifier | None, dict[str, Any]]:
    """Rebuilds and restores a model checkpoint written by ``save_model``.

    Args:
      path: the checkpoint directory.
      dtype: computation dtype for the rebuilt model (None: the one saved); parameters are
        float32 either way.
      arch: if given, the checkpoint must hold this architecture.
    Returns:
      (model, classifier or None, metadata): the model in evaluation mode (``model.train()``
      to train it), the classifier if one was saved, and the ``meta`` dict.
    Raises:
      ModelCheckpointError: not a model checkpoint, another arch than ``arch``, an arch this
        code does not know, or arrays that do not fit the rebuilt model.
    """
    path = os.path.abspath(os.fspath(path))
    meta = read_metadata(path)
    saved_arch = meta["arch"]
    if arch is not None and arch != saved_arch:
        raise ModelCheckpointError(f"{path}: holds a {saved_arch!r} model, not {arch!r}")
    if saved_arch not in registry.list_models():
        raise ModelCheckpointError(
            f"{path}: arch {saved_arch!r} is not a registered model "
            f"(known: {', '.join(registry.list_models())})")
    dtype = jnp.dtype(meta["dtype"] if dtype is None else dtype)
    try:
        config = model_config_of(meta, where=path)
    except ValueError as e:
        raise ModelCheckpointError(str(e)) from e
    ckpt = _checkpointer()
    abstract = nnx.eval_shape(lambda: registry.create(config, dtype=dtype, rngs=nnx.Rngs(0)))
    model = _restore_into(ckpt, path, "model", abstract, f"{saved_arch} model")
    model.eval()
    classifier = None
    if meta["classifier"] is not None:
        cfg = meta["classifier"]
        abstract = nnx.eval_shape(lambda: heads.CosineClassifier(
            cfg["embed_dim"], cfg["num_classes"], cfg["num_subcenters"], dtype=dtype,
            rngs=nnx.Rngs(0)))
        classifier = _restore_into(ckpt, path, "classifier", abstract, "classifier")
    return model, classifier, meta
