"""Exports a retrieval model's embedding as a serving artefact (``jax.export``, see artifact.py).

The exported function is the one embedding path, :func:`lmr_jax.retrieval.embedding.embed_views`,
behind the evaluation normalisation of :mod:`lmr_jax.data.augment` (the mean and std of
``default_eval_preprocess_config``): ``(B, S, S, 3)`` uint8 RGB pixels ``x`` become
``(x / 255 - mean) / std`` in float32 (what ``EvalPreprocess`` computes on the host), are cast to
the compute dtype, and go through the views (scales, optional flip) of ``embed_views``. The batch
size B is a symbolic dimension, so one artefact serves every batch size.

The model's arrays are an argument of the function (saved next to it as safetensors), not
constants inside the StableHLO: the module stays small whatever the model's size, and the
loader puts the weights on the device once.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import safetensors.numpy
from flax import nnx
from jax import export

import lmr_jax
from lmr_jax.data.augment import default_eval_preprocess_config
from lmr_jax.retrieval.embedding import embed_views, view_size
from lmr_jax.serving import artifact

DEFAULT_PLATFORMS = ("cpu", "cuda")


def normalize_pixels(images: jax.Array, mean: Sequence[float], std: Sequence[float]
                     ) -> jax.Array:
    """(..., 3) uint8 0-255 RGB -> float32 ``(x / 255 - mean) / std`` (mean, std on [0, 1])."""
    x = images.astype(jnp.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _named_weights(model: nnx.Module) -> tuple[dict[str, np.ndarray], Any, list[str]]:
    """The model's arrays by dotted path, the pure-dict tree structure and the path order."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    names = [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in flat]
    if len(set(names)) != len(names):
        raise ValueError("the model's state has two arrays with the same dotted path")
    weights = {n: np.asarray(v) for n, (_, v) in zip(names, flat, strict=True)}
    bad = sorted(n for n, v in weights.items() if v.dtype.kind not in "fiub")
    if bad:
        raise ValueError(f"model state entries {bad[:5]} are not numeric arrays")
    return weights, jax.tree.structure(nnx.to_pure_dict(nnx.state(model))), names


def export_embedding(model: nnx.Module, out: str | os.PathLike, *, size: int,
                     scales: Sequence[float] = (1.0,), flip: bool = False,
                     compute_dtype: Any = jnp.float32,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS,
                     model_info: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Writes the serving artefact of ``model`` to the folder ``out``; returns its metadata.

    Args:
      model: a retrieval model, (B, H, W, 3) normalised images -> (B, D) raw embeddings; it is
        put in evaluation mode (running BatchNorm statistics).
      out: the artefact folder to create (written to a temporary folder, then renamed).
      size: S, the input side in pixels.
      scales: test-time scales, as ``embed_views`` takes them.
      flip: also embed each view's horizontal mirror.
      compute_dtype: dtype the normalised images are cast to before the network (the model's
        own computation dtype is fixed when it is built); the output is float32 either way.
      platforms: ``jax.export`` lowering platforms.
      model_info: JSON entries recorded under ``metadata["model"]`` (arch, model_kwargs,
        checkpoint, ...).
      overwrite: replace an existing ``out``.
    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is False.
      ValueError: a size / scale combination that gives a view below 16 px, non-JSON
        ``model_info``.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    scales = tuple(float(s) for s in scales)
    for s in scales:
        view_size(size, s)  # raises on a view too small
    preprocess = default_eval_preprocess_config(size)
    mean = tuple(float(m) for m in preprocess.mean)
    std = tuple(float(s) for s in preprocess.std)
    compute_dtype = jnp.dtype(compute_dtype)
    model.eval()
    graphdef, state = nnx.split(model)
    weights, pure_tree, names = _named_weights(model)

    def embed(named: dict[str, jax.Array], images: jax.Array) -> jax.Array:
        traced = jax.tree.map(lambda v: v, state)  # fresh Variables, the model's untouched
        nnx.replace_by_pure_dict(traced, jax.tree.unflatten(pure_tree,
                                                            [named[n] for n in names]))
        net = nnx.merge(graphdef, traced)
        x = normalize_pixels(images, mean, std).astype(compute_dtype)
        return embed_views(net, x, scales=scales, flip=flip)

    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(embed), platforms=tuple(platforms))(
        {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in weights.items()},
        jax.ShapeDtypeStruct((batch, size, size, 3), artifact.INPUT_DTYPE))
    embed_dim = int(exported.out_avals[0].shape[1])
    metadata = {
        "format": artifact.FORMAT,
        "format_version": artifact.FORMAT_VERSION,
        "input": {"shape": ["batch", size, size, 3], "size": size, "dtype": "uint8",
                  "layout": "NHWC", "channels": "RGB",
                  "resize": "straight to size x size (aspect not kept), done by the caller"},
        "preprocessing": {"formula": "(x / 255 - mean) / std, float32", "mean": list(mean),
                          "std": list(std)},
        "scales": list(scales),
        "flip": bool(flip),
        "compute_dtype": compute_dtype.name,
        "output": {"shape": ["batch", embed_dim], "embed_dim": embed_dim, "dtype": "float32",
                   "l2_normalised": True},
        "model": dict(model_info or {}),
        "versions": {"lmr_jax": lmr_jax.__version__, "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__},
        "jax_export": {"calling_convention_version": int(exported.calling_convention_version),
                       "platforms": list(exported.platforms), "function": artifact.EXPORTED_FILE,
                       "weights": artifact.WEIGHTS_FILE},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"serving metadata is not JSON-serialisable: {e}") from e
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    with open(os.path.join(tmp, artifact.EXPORTED_FILE), "wb") as f:
        f.write(exported.serialize())
    safetensors.numpy.save_file(weights, os.path.join(tmp, artifact.WEIGHTS_FILE))
    with open(os.path.join(tmp, artifact.METADATA_FILE), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
        os.rename(out, os.path.join(old, "artefact"))
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
    return metadata
