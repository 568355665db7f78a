"""Architecture-aware conversion of PyTorch checkpoints into lmr_jax retrieval models.

Two kinds of checkpoint are accepted:
  * a backbone (ImageNet releases: torchvision ResNet-50, IBN-Net v1.0, ResNeSt): keys of the
    backbone alone; the unused ImageNet classifier ``fc.weight`` / ``fc.bias`` is dropped and
    the retrieval head (``fcneck``, ``fcneck_bn``) keeps its initialisation.
  * a whole model trained with the reference code (``full_model=True``): ``base.*`` (the
    backbone), ``fcneck.weight``, ``fcneck_bn.*`` and ``classifier.weight`` of any number of
    classes (-> ``CosineClassifier``); ``base.fc.*`` is dropped.
Loading is strict (``lmr_jax.convert.mapping.load_torch_state``): missing, unexpected and
mis-shaped keys stop the conversion, and the error names the architecture the checkpoint
looks like when it is not the one asked for (or, for timm's ResNet-D and SE variants, which
lmr_jax model it would need: ``timm_names``). The squeeze-and-excitation weights of SE-ResNet
checkpoints are loaded (the reference code skips them when it reads an ImageNet checkpoint).
For ``resnet50`` (the reference layout, average-pool shortcuts) torchvision's key names are
accepted as well: its layer2/layer3 shortcut ``downsample.0/.1`` become ``downsample.1/.2``,
as the reference code renames them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmr_jax.convert.mapping import CheckpointMismatchError, load_torch_state, torch_key_map
from lmr_jax.convert.timm_names import describe_timm_variant
from lmr_jax.models import heads, registry
from lmr_jax.models.model_config import ModelConfig

BACKBONE_PREFIX = "base."
CLASSIFIER_KEY = "classifier.weight"
# Unused ImageNet classifiers, accepted and dropped.
BACKBONE_DROP = ("fc.weight", "fc.bias")
FULL_MODEL_DROP = tuple(BACKBONE_PREFIX + k for k in BACKBONE_DROP)
# Archs in the reference layout that also accept torchvision's shortcut key names.
TORCHVISION_SHORTCUT_ARCHS = ("resnet50",)
_STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclasses.dataclass
class Converted:
    """The result of a conversion.

    Attributes:
      model: the ``RetrievalModel`` holding the converted weights (evaluation mode).
      classifier: the ``CosineClassifier`` of a whole-model checkpoint, else None.
      config: the architecture the model was built with (what its saved model records).
      info: what the conversion did (JSON-serialisable): ``full_model``,
        ``head_from_checkpoint``, ``dropped_keys``, ``missing_allowed`` (model keys the
        checkpoint lacked under ``allow_missing``), ``renamed_keys`` (torchvision names
        mapped to the reference layout, old -> new).
    """

    model: nnx.Module
    classifier: heads.CosineClassifier | None
    config: ModelConfig
    info: dict[str, Any]


def torch_key_shapes(module: nnx.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """PyTorch key -> PyTorch shape of every state entry of ``module`` (abstract is fine)."""
    shapes = {}
    for key, target in torch_key_map(module, prefix).items():
        var = target.variable()
        shapes[key] = (() if var is None else
                       tuple(target.param.to_torch(np.empty(var.shape, np.uint8)).shape))
    return shapes


@functools.cache
def _cached_backbone_key_shapes(arch: str, last_stride: int) -> Mapping[str, tuple[int, ...]]:
    abstract = nnx.eval_shape(lambda: registry.create_backbone(
        arch, last_stride=last_stride, rngs=nnx.Rngs(0)))
    return types.MappingProxyType(torch_key_shapes(abstract))


def backbone_key_shapes(arch: str, last_stride: int = 1) -> dict[str, tuple[int, ...]]:
    """The PyTorch state_dict keys and shapes of backbone ``arch`` (no unused ``fc``).

    Built once per arch from an abstract model (``nnx.eval_shape``: no weights initialised).
    """
    return dict(_cached_backbone_key_shapes(arch, last_stride))


def guess_arch(state_dict: Mapping[str, Any], prefix: str = ""
               ) -> tuple[list[str], int, int] | None:
    """The registered backbones whose keys and shapes best match a checkpoint's.

    Args:
      state_dict: PyTorch key -> array.
      prefix: the backbone's key prefix in ``state_dict`` (``"base."`` for a whole model).
    Returns:
      (archs tied for the best match, matching entries, entries of the first of them), or
      None if no key matches any arch. ``fc.*`` and the neck/classifier entries are ignored.
      The score is matching entries / entries in the union of both key sets.
    """
    got = {k[len(prefix):]: tuple(np.shape(v)) for k, v in state_dict.items()
           if k.startswith(prefix) and k[len(prefix):] not in BACKBONE_DROP}
    scored = []
    for arch in registry.list_models():
        want = backbone_key_shapes(arch)
        candidate = got
        if arch in TORCHVISION_SHORTCUT_ARCHS:
            candidate = _rename_torchvision_shortcuts(got, set(want), "")[0]
        hits = sum(1 for k, s in candidate.items() if want.get(k) == s)
        if hits:
            scored.append((hits / len(set(want) | set(candidate)), arch, hits, len(want)))
    if not scored:
        return None
    best = max(score for score, *_ in scored)
    tied = [row for row in scored if row[0] == best]
    return [arch for _, arch, _, _ in tied], tied[0][2], tied[0][3]


def _rename_torchvision_shortcuts(state_dict: Mapping[str, Any], model_keys: set[str],
                                  prefix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Maps torchvision shortcut keys onto a model whose shortcut starts with an AvgPool.

    In a stage whose model shortcut is ``AvgPool -> conv -> BN`` (keys ``downsample.1/.2``)
    and whose checkpoint shortcut is ``conv -> BN`` (``downsample.0/.1``), ``.0`` -> ``.1``
    and ``.1`` -> ``.2``. Returns (the renamed state_dict, old -> new key names).
    """
    renames: dict[str, str] = {}
    for stage in _STAGES:
        head = f"{prefix}{stage}.0.downsample."
        model_avgpool = (head + "2.weight" in model_keys
                         and not any(k.startswith(head + "0.") for k in model_keys))
        ckpt_torchvision = head + "0.weight" in state_dict and head + "2.weight" not in state_dict
        if model_avgpool and ckpt_torchvision:
            pattern = re.compile(re.escape(head) + r"([01])\.(.+)")
            for key in state_dict:
                m = pattern.fullmatch(key)
                if m:
                    renames[key] = f"{head}{int(m[1]) + 1}.{m[2]}"
    return {renames.get(k, k): v for k, v in state_dict.items()}, renames


def _mismatch_context(arch: str, state_dict: Mapping[str, Any], full_model: bool) -> str:
    """Words for a mismatch error: the arch asked for and what the checkpoint looks like."""
    what = f"{arch} ({'whole model' if full_model else 'backbone'})"
    has_base = any(k.startswith(BACKBONE_PREFIX) for k in state_dict)
    if not full_model and has_base:
        return (what + "; its keys start with 'base.': it looks like a whole model trained "
                "with the reference code, convert it with full_model=True (--full-model)")
    if full_model and not has_base:
        return (what + "; it has no 'base.' keys: it looks like a backbone checkpoint, "
                "convert it without --full-model (full_model=False)")
    timm_variant = describe_timm_variant(state_dict, BACKBONE_PREFIX if full_model else "")
    if timm_variant is not None:
        return what + "; " + timm_variant
    guess = guess_arch(state_dict, BACKBONE_PREFIX if full_model else "")
    if guess is not None and arch not in guess[0]:
        names, hits, total = guess
        return (what + f"; the checkpoint looks like a {' or '.join(map(repr, names))} "
                f"backbone ({hits} of its {total} entries match by name and shape)")
    return what


def _matches_any(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def convert_state_dict(arch: str, state_dict: Mapping[str, np.ndarray], *,
                       full_model: bool = False, allow_missing: Iterable[str] = (),
                       model_kwargs: Mapping[str, Any] | None = None,
                       rngs: nnx.Rngs | None = None) -> Converted:
    """Builds ``lmr_jax.models.create(arch, ...)`` and fills it from a PyTorch state_dict.

    Args:
      arch: a registered model name (``lmr_jax.models.list_models()``).
      state_dict: PyTorch key -> numpy array (see ``pytorch_files.read_state_dict``).
      full_model: the checkpoint is a whole reference model (``base.*``, neck, classifier)
        rather than a backbone.
      allow_missing: glob patterns of model keys the checkpoint may lack (they keep their
        initialisation); ``classifier.weight`` among them lets a whole model come without
        a classifier.
      model_kwargs: :class:`~lmr_jax.models.model_config.ModelConfig` fields besides ``arch``
        (``last_stride``, ``embed_dim``, ``pooling``, ...). For a whole model ``embed_dim``
        defaults to the rows of ``fcneck.weight``.
      rngs: initialisation RNG of what the checkpoint does not hold (the head of a backbone
        checkpoint).
    Returns:
      ``Converted`` (model in evaluation mode, classifier or None, config, info).
    Raises:
      CheckpointMismatchError: missing / unexpected / mis-shaped keys, all listed, with the
        architecture the checkpoint looks like when it is another one.
    """
    if arch not in registry.list_models():
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(registry.list_models())}")
    allow_missing = tuple(allow_missing)
    kwargs = dict(model_kwargs or {})
    neck = state_dict.get("fcneck.weight")
    if full_model and neck is not None and np.ndim(neck) == 2:
        if kwargs.setdefault("embed_dim", int(np.shape(neck)[0])) != np.shape(neck)[0]:
            raise ValueError(f"embed_dim={kwargs['embed_dim']} but the checkpoint's "
                             f"fcneck.weight has {np.shape(neck)[0]} rows")
    config = ModelConfig.from_dict({"arch": arch, **kwargs}, where="model_kwargs")
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    prefix = BACKBONE_PREFIX if full_model else ""
    if allow_missing and any(
            _matches_any(prefix + k, allow_missing)
            for k in backbone_key_shapes(arch, config.last_stride)):
        model = registry.create(config, rngs=rngs)  # missing entries keep their init
    else:
        model = _create_with_placeholder_backbone(config, rngs)
    target = model if full_model else model.base
    model_keys = set(torch_key_map(target))
    renames: dict[str, str] = {}
    if arch in TORCHVISION_SHORTCUT_ARCHS:
        state_dict, renames = _rename_torchvision_shortcuts(state_dict, model_keys, prefix)
    drop = FULL_MODEL_DROP if full_model else BACKBONE_DROP
    body = {k: v for k, v in state_dict.items() if not (full_model and k == CLASSIFIER_KEY)}
    missing_allowed = sorted(k for k in model_keys if k not in body
                             and _matches_any(k, allow_missing))
    errors: list[CheckpointMismatchError] = []
    dropped: list[str] = []
    try:
        dropped = load_torch_state(target, body, drop=drop, allow_missing=allow_missing)
    except CheckpointMismatchError as e:
        errors.append(e)
    classifier = None
    if full_model:
        classifier, error = _load_classifier(state_dict, model.embed_dim, allow_missing, rngs)
        if error is not None:
            errors.append(error)
        elif classifier is None:
            missing_allowed.append(CLASSIFIER_KEY)
    if errors:
        raise CheckpointMismatchError(
            [k for e in errors for k in e.missing], [k for e in errors for k in e.unexpected],
            [m for e in errors for m in e.mismatched],
            _mismatch_context(arch, state_dict, full_model))
    model.eval()
    info = {"full_model": full_model, "head_from_checkpoint": full_model,
            "dropped_keys": sorted(dropped), "missing_allowed": sorted(missing_allowed),
            "renamed_keys": renames}
    return Converted(model, classifier, config, info)


def _create_with_placeholder_backbone(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """``registry.create(config)`` with a zero-filled backbone, for a checkpoint that fills
    every backbone entry: skips the random initialisation of tens of millions of weights
    (seconds on CPU); the head is initialised as ``create`` does it."""
    backbone = registry.zero_initialised(lambda: registry.create_backbone(
        config.arch, last_stride=config.last_stride, rngs=nnx.Rngs(0)))
    return heads.HEADS.build_offered(config.head, backbone, context=config.head_settings(),
                                     dtype=jnp.float32, rngs=rngs)


def _load_classifier(state_dict: Mapping[str, np.ndarray], embed_dim: int,
                     allow_missing: tuple[str, ...], rngs: nnx.Rngs
                     ) -> tuple[heads.CosineClassifier | None, CheckpointMismatchError | None]:
    """The whole model's ``classifier.weight`` (any row count) as a ``CosineClassifier``."""
    weight = state_dict.get(CLASSIFIER_KEY)
    if weight is None:
        if _matches_any(CLASSIFIER_KEY, allow_missing):
            return None, None
        return None, CheckpointMismatchError([CLASSIFIER_KEY], [], [])
    if np.ndim(weight) != 2 or np.shape(weight)[1] != embed_dim:
        return None, CheckpointMismatchError(
            [], [], [(CLASSIFIER_KEY, tuple(np.shape(weight)), ("num_classes", embed_dim))])
    classifier = heads.CosineClassifier(embed_dim, int(np.shape(weight)[0]), rngs=rngs)
    load_torch_state(classifier, {CLASSIFIER_KEY: weight}, prefix="classifier.")
    return classifier, None
