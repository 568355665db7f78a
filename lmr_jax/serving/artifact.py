"""The serving artefact on disk and its loader: runs an exported embedding without lmr-jax models.

An artefact is a folder of three files written by :func:`lmr_jax.serving.export.export_embedding`
(``scripts/export.py``):

* ``embedding.jax_export``: the embedding function serialised by ``jax.export`` (StableHLO
  portable artefact + calling convention), ``embed(weights, images) -> embeddings`` with
  ``images`` (B, S, S, 3) uint8 RGB, B symbolic, and (B, D) float32 L2-normalised out. The
  normalisation of the pixels and the test-time views (multi-scale, flip) are inside;
* ``weights.safetensors``: ``weights``, the model's arrays by name (parameters and BatchNorm
  statistics, float32), passed as the function's first argument;
* ``metadata.json``: format and version, input size and dtype, the preprocessing it contains,
  scales, flip, compute dtype, embedding size, the model's arch and keyword arguments, the
  lmr-jax / jax / jaxlib versions that exported it, the ``jax.export`` calling convention
  version and platforms (see docs/serving.md).

:func:`load` deserialises the function and reads the weights; it imports nothing of
``lmr_jax.models``, so the network code is not needed to serve.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from jax import export

FORMAT = "lmr_jax.serving.embedding"
FORMAT_VERSION = 1
EXPORTED_FILE = "embedding.jax_export"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
INPUT_DTYPE = np.dtype(np.uint8)


class ServingArtifactError(ValueError):
    """A folder is not a serving artefact of this format, or cannot run here."""


def weight_names(exported: export.Exported) -> dict[str, jax.ShapeDtypeStruct]:
    """The weights an exported embedding takes: name -> shape and dtype (its first argument)."""
    (weights, _images), _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}


class ServedEmbedding:
    """An exported embedding function with its weights on one device.

    ``served(images)``: (B, S, S, 3) uint8 RGB images, any B >= 1 -> (B, D) float32
    L2-normalised embeddings. The images must already be resized to S x S (straight, aspect
    not kept, as lmr-jax's evaluation preprocessing does); everything after that runs inside.
    Compiled once per batch size.

    Attributes:
      metadata: the artefact's ``metadata.json``.
      size: S, the input side in pixels.
      embed_dim: D.
      scales: the test-time scales inside the function.
    """

    def __init__(self, exported: export.Exported, weights: dict[str, jax.Array],
                 metadata: dict[str, Any]):
        self.exported = exported
        self.weights = weights
        self.metadata = metadata
        self.size = int(metadata["input"]["size"])
        self.embed_dim = int(metadata["output"]["embed_dim"])
        self.scales = tuple(float(s) for s in metadata["scales"])
        self._call = jax.jit(exported.call)

    def __call__(self, images: np.ndarray | jax.Array) -> jax.Array:
        shape = tuple(getattr(images, "shape", ()))
        dtype = getattr(images, "dtype", None)
        expected = f"(batch, {self.size}, {self.size}, 3) uint8 RGB images"
        if len(shape) != 4 or shape[1:] != (self.size, self.size, 3) or shape[0] < 1:
            raise ValueError(f"the exported embedding takes {expected}; got shape {shape}"
                             + (" (resize to the artefact's input size first)"
                                if len(shape) == 4 and shape[3] == 3 else ""))
        if dtype is None or np.dtype(dtype) != INPUT_DTYPE:
            raise ValueError(f"the exported embedding takes {expected}; got dtype {dtype} "
                             "(pass the decoded 0-255 pixels, not normalised floats)")
        return self._call(self.weights, images)


def _lowering_platform(device: jax.Device) -> str:
    """The ``jax.export`` platform name of a device: cpu, cuda, rocm or tpu."""
    if device.platform != "gpu":
        return device.platform
    return "rocm" if "rocm" in device.client.platform_version.lower() else "cuda"


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata.json`` of a serving artefact, checked for format and version.

    Raises:
      ServingArtifactError: ``path`` is not a serving artefact folder of this format.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise ServingArtifactError(f"{path}: no such serving artefact folder")
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise ServingArtifactError(
            f"{path}: not a lmr_jax serving artefact (no {METADATA_FILE}; write one with "
            "scripts/export.py --checkpoint CKPT --out DIR)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServingArtifactError(f"{meta_path}: unreadable metadata: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ServingArtifactError(f"{meta_path}: does not describe a {FORMAT} artefact")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ServingArtifactError(
            f"{meta_path}: format version {meta.get('format_version')} is not supported "
            f"(this code reads version {FORMAT_VERSION}); re-export the checkpoint")
    for name in (EXPORTED_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise ServingArtifactError(f"{path}: {name} is missing (an incomplete export?)")
    return meta


def load(path: str | os.PathLike, *, device: jax.Device | None = None) -> ServedEmbedding:
    """Loads a serving artefact: deserialises the function and puts its weights on ``device``.

    Args:
      path: the artefact folder written by ``scripts/export.py``.
      device: where the weights live and the function runs (None: the default device). Its
        platform must be one the artefact was exported for (``metadata["jax_export"]
        ["platforms"]``, CPU and CUDA by default).
    Raises:
      ServingArtifactError: not an artefact, a file that does not deserialise, weights that do
        not fit the function, or a device platform it was not exported for.
    """
    path = os.path.abspath(os.fspath(path))
    meta = read_metadata(path)
    exported_path = os.path.join(path, EXPORTED_FILE)
    with open(exported_path, "rb") as f:
        blob = f.read()
    try:
        exported = export.deserialize(bytearray(blob))
    except Exception as e:  # flatbuffers and jax raise several types on a corrupt blob
        raise ServingArtifactError(
            f"{exported_path}: cannot deserialise the jax.export function ({type(e).__name__}: "
            f"{e}); jax {jax.__version__} may be outside its compatibility window, re-export "
            "it (docs/serving.md)") from e
    device = device or jax.devices()[0]
    platform = _lowering_platform(device)
    if platform not in exported.platforms:
        raise ServingArtifactError(
            f"{path}: exported for {', '.join(exported.platforms)}, not for {platform} "
            f"(device {device}); re-export with --platforms including {platform}")
    weights_path = os.path.join(path, WEIGHTS_FILE)
    try:
        stored = safetensors.numpy.load_file(weights_path)
    except Exception as e:  # safetensors raises its own error type on a bad header
        raise ServingArtifactError(f"{weights_path}: unreadable weights ({e})") from e
    expected = weight_names(exported)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(f"{k} (stored {stored[k].shape} {stored[k].dtype}, function "
                   f"{expected[k].shape} {expected[k].dtype})"
                   for k in set(stored) & set(expected)
                   if stored[k].shape != expected[k].shape or stored[k].dtype != expected[k].dtype)
    if missing or unexpected or wrong:
        raise ServingArtifactError(
            f"{weights_path}: does not fit {EXPORTED_FILE}: missing {missing[:10]}, unexpected "
            f"{unexpected[:10]}, wrong {wrong[:10]}")
    weights = jax.device_put(stored, device)
    return ServedEmbedding(exported, weights, meta)
