"""Baidu GLR2019 Paddle 1.x checkpoints -> lmr_jax models, without Paddle.

``load_paddle_model(path, arch)`` reads a release's one-file-per-variable directory (what the
``.tar`` files unpack to), or a combined ``params`` file (or a directory holding ``model`` +
``params``, as ``save_inference_model`` writes it), recognises the parameter layout (named, or
the ``conv2d_N`` / ``batch_norm_N`` numbering of the ResNet-152 retrieval models) and the head
(512-d retrieval fc, res152_softmax_v1 or v2, with the class count read from the file), and
returns the backbone + Baidu head with every tensor loaded.

Loading is strict: Paddle names that the model needs but the files lack, names in the files
that the model does not have, and tensors of the wrong shape are all listed in one
``CheckpointMismatchError``. Optimizer and training-only state (momentum ``*_velocity_*``,
the ArcMargin ``weight_norm``, learning-rate counters) is skipped and counted.

Conv weights are OIHW in Paddle and PyTorch alike (``layers.TorchParam`` turns them into
HWIO); fc weights are [in, out] in Paddle and in lmr_jax, so they pass through unchanged (the
PyTorch-layout intermediate is their transpose).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmr_jax.convert import paddle_format
from lmr_jax.convert.mapping import CheckpointMismatchError, load_torch_state, torch_key_map
from lmr_jax.convert.paddle_names import (
    ARCH_FAMILIES,
    HEADS,
    LAYOUTS,
    PaddleEntry,
    model_entries,
)
from lmr_jax.models import registry
from lmr_jax.models.model_config import ModelConfig

# Training-only variables a training persistables directory may also hold (glob patterns).
TRAINING_ONLY = ("*_velocity_*", "weight_norm", "@LR_DECAY_COUNTER@", "learning_rate_*")
EMBED_DIM = 512
MODEL_HEADS = tuple(h for h in HEADS if h != "none")
# The Paddle head kinds -> the registered lmr_jax heads (lmr_jax.models.baidu_heads).
LMR_HEADS = {"retrieval": "baidu_embedding", "softmax_v1": "baidu_softmax_v1",
             "softmax_v2": "baidu_softmax_v2"}
BAIDU_LAST_STRIDE = 2  # Baidu's backbones keep stride 2 in their last stage


@dataclasses.dataclass
class PaddleLoaded:
    """A loaded Baidu model.

    Attributes:
      model: ``BaiduRetrievalModel`` or ``BaiduClassifierModel`` (evaluation mode).
      arch: the backbone name.
      layout: ``named`` or ``numbered``.
      head: ``retrieval``, ``softmax_v1`` or ``softmax_v2``.
      source: ``directory`` (one file per variable) or ``combined`` (a params file).
      skipped: training-only variables found and not loaded.
      config: the model's schema (``models.create(config)`` rebuilds it; ``save_model``
        records it).
    """

    model: nnx.Module
    arch: str
    layout: str
    head: str
    source: str
    skipped: list[str]
    config: ModelConfig


def is_training_only(name: str) -> bool:
    """Whether a Paddle variable is optimizer / training state (not part of the model)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in TRAINING_ONLY)


def _model_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """PyTorch-layout key -> shape of every loadable entry of ``model``."""
    shapes = {}
    for key, target in torch_key_map(model).items():
        var = target.variable()
        if var is not None:
            shapes[key] = tuple(target.param.to_torch(np.empty(var.shape, np.uint8)).shape)
    return shapes


def _paddle_shape(entry: PaddleEntry, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(torch_shape)) if entry.transpose else torch_shape


def check_paddle_state(model: nnx.Module, arrays: Mapping[str, np.ndarray],
                       entries: Sequence[PaddleEntry], context: str = "") -> list[str]:
    """Checks Paddle arrays against a model's entries; returns the skipped training names.

    Raises:
      CheckpointMismatchError: every missing, unexpected and mis-shaped Paddle name.
      ValueError: an entry names a key the model does not have (a bad name map).
    """
    shapes = _model_shapes(model)
    unknown = sorted({e.key for e in entries} - set(shapes))
    if unknown or len({e.key for e in entries}) != len(entries):
        raise ValueError(f"name map does not fit the model {context}: unknown keys "
                         f"{unknown[:10]}, {len(entries)} entries for "
                         f"{len({e.key for e in entries})} keys")
    uncovered = sorted(set(shapes) - {e.key for e in entries})
    if uncovered:
        raise ValueError(f"name map does not cover the model {context}: {uncovered[:10]}")
    names = {e.name for e in entries}
    missing = [e.name for e in entries if e.name not in arrays]
    skipped = sorted(n for n in arrays if n not in names and is_training_only(n))
    unexpected = sorted(n for n in arrays if n not in names and n not in skipped)
    mismatched = []
    for e in entries:
        if e.name in arrays:
            want = _paddle_shape(e, shapes[e.key])
            got = tuple(np.shape(arrays[e.name]))
            if got != want:
                mismatched.append((e.name, got, want))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
    return skipped


def load_paddle_state(model: nnx.Module, arrays: Mapping[str, np.ndarray],
                      entries: Sequence[PaddleEntry], context: str = "") -> list[str]:
    """Copies Paddle arrays (by Paddle name) into ``model`` in place, strictly.

    Every entry must be present with its shape; other names are an error unless they are
    training-only state. Arrays of any float dtype are cast to the model's float32.

    Returns:
      The skipped training-only names.
    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped name.
      ValueError: weights that are not floating point (all listed).
    """
    skipped = check_paddle_state(model, arrays, entries, context)
    not_float = [f"{e.name} ({np.asarray(arrays[e.name]).dtype})" for e in entries
                 if not _is_float(np.asarray(arrays[e.name]).dtype)]
    if not_float:
        raise ValueError(f"checkpoint {context}: {len(not_float)} weight(s) are not floating "
                         f"point: {', '.join(not_float[:20])}")
    state = {}
    for e in entries:
        value = np.asarray(arrays[e.name]).astype(np.float32)
        state[e.key] = value.T if e.transpose else value
    load_torch_state(model, state, context=context)
    return skipped


def _is_float(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating)) or dtype == paddle_format.PADDLE_DTYPES[22]


def _family(arch: str) -> tuple[str, dict[str, Any]]:
    if arch not in ARCH_FAMILIES:
        raise ValueError(f"no Paddle name map for arch {arch!r}; known: "
                         f"{', '.join(sorted(ARCH_FAMILIES))}")
    return ARCH_FAMILIES[arch]


def model_config(arch: str, head: str, num_classes: int) -> ModelConfig:
    """The ModelConfig of a Baidu model: ``arch`` at last stride 2 with the head of the
    Paddle head kind ``head`` (``retrieval``: 512-d embedding; ``softmax_v*``: C classes)."""
    if head == "retrieval":
        return ModelConfig(arch=arch, last_stride=BAIDU_LAST_STRIDE, head=LMR_HEADS[head],
                           embed_dim=EMBED_DIM)
    return ModelConfig(arch=arch, last_stride=BAIDU_LAST_STRIDE, head=LMR_HEADS[head],
                       num_classes=num_classes)


def _build(arch: str, head: str, num_classes: int, dtype: Any) -> Callable[[], nnx.Module]:
    config = model_config(arch, head, num_classes)
    return lambda: registry.create(config, dtype=dtype, rngs=nnx.Rngs(0))


def _entries(abstract: nnx.Module, arch: str, layout: str, head: str) -> list[PaddleEntry]:
    family, options = _family(arch)
    return model_entries(abstract.base, family, layout=layout, head=head, **options)


def _num_classes(entries: Sequence[PaddleEntry], shape_of: Callable[[str], tuple | None]) -> int:
    """The class count: the output width of the last fc weight (1 if it cannot be read)."""
    last = [e for e in entries if e.transpose and e.key.startswith("classifier.")][-1]
    shape = shape_of(last.name)
    return int(shape[1]) if shape is not None and len(shape) == 2 else 1


def _resolve_source(path: str) -> tuple[str, str]:
    """("directory" | "combined", the directory or params file to read)."""
    if os.path.isfile(path):
        return "combined", path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    has_program = any(os.path.isfile(os.path.join(path, p)) for p in paddle_format.PROGRAM_FILES)
    for name in paddle_format.COMBINED_PARAMS_FILES:
        if has_program and os.path.isfile(os.path.join(path, name)):
            return "combined", os.path.join(path, name)
    return "directory", path


def _guess_layout_and_head(arch: str, arrays: Mapping[str, np.ndarray], layout: str | None,
                           head: str | None) -> tuple[str, str]:
    """The layout and head of a one-file-per-variable directory, from its names."""
    family, _ = _family(arch)
    if layout is None:
        layout = "numbered" if "conv2d_0.w_0" in arrays else "named"
    if head is None:
        if family != "resnet_vd":
            head = "retrieval"
        elif "fc_1.w_0" in arrays:
            head = "softmax_v1"
        else:
            fc = arrays.get("fc_0.w_0")
            head = "retrieval" if fc is None or np.shape(fc)[-1] == EMBED_DIM else "softmax_v2"
    return layout, head


def _combined_candidates(arch: str, layout: str | None, head: str | None
                         ) -> list[tuple[str, str]]:
    family, _ = _family(arch)
    layouts = [layout] if layout else (["named", "numbered"] if family == "resnet_vd"
                                       else ["named"])
    heads = [head] if head else (list(MODEL_HEADS) if family == "resnet_vd" else ["retrieval"])
    return [(lay, h) for h in heads for lay in layouts]


def load_paddle_model(path: str, arch: str, *, head: str | None = None,
                      layout: str | None = None, dtype: Any = jnp.float32) -> PaddleLoaded:
    """Reads a Baidu Paddle 1.x checkpoint into an lmr_jax model.

    Args:
      path: a one-file-per-variable directory, a combined params file, or a directory with
        ``model`` / ``__model__`` and ``params`` / ``__params__`` (``save_inference_model``).
      arch: ``resnet152_vd``, ``resnet200_vd``, ``se_resnext152_64x4d_vd`` or ``inception_v4``.
      head: ``retrieval``, ``softmax_v1`` or ``softmax_v2``; None: recognised from the files
        (``fc_1`` present: softmax_v1; a single fc 512 wide: retrieval; else softmax_v2).
      layout: ``named`` or ``numbered``; None: recognised from the files (``conv2d_0.w_0``
        present, or for a combined file the layout whose sorted shapes fit the records).
      dtype: computation dtype of the model (parameters are float32).
    Returns:
      ``PaddleLoaded`` (model in evaluation mode, layout, head, skipped training state).
    Raises:
      CheckpointMismatchError: the files do not fit; lists every missing, unexpected and
        mis-shaped name (of the closest layout/head for a combined file).
      PaddleFormatError: a file is not a valid tensor record (names the file and offset).
    """
    for value, allowed, what in ((head, MODEL_HEADS, "head"), (layout, LAYOUTS, "layout")):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
    _family(arch)
    source, target = _resolve_source(path)
    context = f"for {arch} ({source} {target})"
    abstracts: dict[tuple[str, int], nnx.Module] = {}

    def abstract(h: str, num_classes: int) -> nnx.Module:
        if (h, num_classes) not in abstracts:
            abstracts[h, num_classes] = nnx.eval_shape(_build(arch, h, num_classes, dtype))
        return abstracts[h, num_classes]

    def classes(h: str, entries: Sequence[PaddleEntry], arrays: Mapping[str, np.ndarray]) -> int:
        if h == "retrieval":
            return 1
        return _num_classes(entries, lambda n: np.shape(arrays[n]) if n in arrays else None)

    if source == "directory":
        arrays = paddle_format.read_variable_dir(target)
        layout, head = _guess_layout_and_head(arch, arrays, layout, head)
        entries = _entries(abstract(head, 1), arch, layout, head)
        num_classes = classes(head, entries, arrays)
        check_paddle_state(abstract(head, num_classes), arrays, entries, context)
    else:
        records = paddle_format.read_combined_records(target)
        fits, best = [], None
        tried = []
        for lay, h in _combined_candidates(arch, layout, head):
            entries = _entries(abstract(h, 1), arch, lay, h)
            tried.append((lay, h, len(entries)))
            if len(entries) != len(records):
                continue
            named = paddle_format.name_combined_records(records, [e.name for e in entries],
                                                        target)
            num_classes = classes(h, entries, named)
            try:
                check_paddle_state(abstract(h, num_classes), named, entries)
            except CheckpointMismatchError as e:
                score = len(e.missing) + len(e.unexpected) + len(e.mismatched)
                if best is None or score < best[0]:
                    best = (score, e, lay, h)
                continue
            fits.append((lay, h, num_classes, named, entries))
        if not fits:
            if best is None:
                raise CheckpointMismatchError(
                    [], [], [], f"{context}: {len(records)} records, but the layouts and heads "
                    f"tried have {[(lay, h, n) for lay, h, n in tried]} variables")
            _, e, lay, h = best
            raise CheckpointMismatchError(e.missing, e.unexpected, e.mismatched,
                                          f"{context} (closest: layout {lay!r}, head {h!r}; "
                                          "records named in sorted order)")
        layout, head, num_classes, arrays, entries = fits[0]
    model = registry.zero_initialised(_build(arch, head, num_classes, dtype))
    skipped = load_paddle_state(model, arrays, entries, context)
    model.eval()
    return PaddleLoaded(model, arch, layout, head, source, skipped,
                        model_config(arch, head, num_classes))
