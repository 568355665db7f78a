"""timm model names -> lmr_jax backbones, and what keeps the other timm variants out.

timm's ResNet-50 has torchvision's module names and its ResNeSt models have the official
ResNeSt release's, so their state_dicts load into the lmr_jax backbones below key for key (the
``fc.*`` classifier is dropped as for any ImageNet checkpoint). Every other timm ResNet-family
variant differs in architecture from every lmr_jax backbone; ``timm_arch`` and
``describe_timm_variant`` say how, so that a conversion fails with the reason rather than a list of
missing keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# timm model name -> lmr_jax backbone with the same architecture and key names.
TIMM_TO_LMR: dict[str, str] = {
    "resnet50": "resnet50_torchvision",
    "resnest50d": "resnest50",
    "resnest101e": "resnest101",
    "resnest200e": "resnest200",
    "resnest269e": "resnest269",
}

_DEEP_STEM = ("a deep stem (three 3x3 convs, keys conv1.0/.3/.6) and average-pool "
              "shortcuts (ResNet-D); lmr_jax's resnet50 has average-pool shortcuts only where "
              "the stride is 2 and a single 7x7 stem conv, so it would need a ResNet-D backbone")
_DEEP_STEM_ONLY = ("a deep stem (three 3x3 convs, keys conv1.0/.3/.6) in place of the 7x7 stem "
                   "conv (ResNet-C / -S); lmr_jax has no ResNet with that stem")
_PLAIN_DEPTH = ("torchvision's layout at depth {depth}; lmr_jax has torchvision's layout only "
                "at depth 50 (resnet50_torchvision) and {depth} only as resnet101_ibn_a "
                "(IBN-a), so it would need a plain resnet{depth} backbone")
_SE = ("squeeze-and-excitation (keys se.fc1/se.fc2) without IBN; lmr_jax's only SE model is "
       "se_resnet101_ibn_a (IBN-a in layer1-3, keys se.fc.0/.2), so it would need a non-IBN "
       "SE-ResNe(X)t backbone")
_RESNEXT = ("grouped convs without IBN; lmr_jax's only ResNeXt is resnext101_ibn_a (IBN-a), so "
            "it would need a plain ResNeXt backbone")
_RESNEST_OTHER = ("a ResNeSt of another depth or radix/cardinality; lmr_jax has ResNeSt "
                  "50/101/200/269 with radix 2 (timm resnest50d/101e/200e/269e)")

# timm model name -> why no lmr_jax backbone matches (the closest one and what it would need).
TIMM_MISMATCHES: dict[str, str] = {
    **{f"resnet{d}d": _DEEP_STEM for d in (50, 101, 152)},
    "resnet50t": _DEEP_STEM,
    **{f"resnet{d}{v}": _DEEP_STEM_ONLY for d in (50, 101, 152) for v in ("c", "s")},
    "resnet101": _PLAIN_DEPTH.format(depth=101),
    "resnet152": _PLAIN_DEPTH.format(depth=152),
    **{name: _SE for name in ("seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d",
                              "seresnext101_32x4d", "seresnext101_32x8d", "seresnext101_64x4d",
                              "seresnext101d_32x8d")},
    **{name: _RESNEXT for name in ("resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d",
                                   "resnext101_64x4d")},
    **{name: _RESNEST_OTHER for name in ("resnest14d", "resnest26d", "resnest50d_1s4x24d",
                                         "resnest50d_4s2x40d")},
    "inception_v4": "an Inception-v4; lmr_jax has no Inception backbone",
}


class TimmModelError(ValueError):
    """A timm model name that no lmr_jax backbone matches (the message says why)."""


def timm_arch(timm_name: str) -> str:
    """The lmr_jax backbone of a timm model name.

    Args:
      timm_name: a timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
    Returns:
      The registered lmr_jax arch (``TIMM_TO_LMR``).
    Raises:
      TimmModelError: the variant differs from every lmr_jax backbone (the message says how and
        what model it would need) or the name is unknown here.
    """
    base = timm_name.split(".", 1)[0]
    if base in TIMM_TO_LMR:
        return TIMM_TO_LMR[base]
    known = ", ".join(f"{t} -> {a}" for t, a in TIMM_TO_LMR.items())
    if base in TIMM_MISMATCHES:
        raise TimmModelError(f"timm {base} has {TIMM_MISMATCHES[base]}. "
                             f"Convertible timm models: {known}")
    raise TimmModelError(f"timm model {base!r} is not one lmr_jax has an architecture for; "
                         f"convertible: {known}")


def describe_timm_variant(state_dict: Mapping[str, Any], prefix: str = "") -> str | None:
    """Why a checkpoint with timm-only key names fits no lmr_jax backbone, or None.

    Recognises timm's deep stem (``conv1.0`` ... ``conv1.6`` outside a ResNeSt) and timm's SE
    modules (``se.fc1``), the key names by which timm's ResNet-D / SE variants differ from
    everything lmr_jax converts.
    """
    keys = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
    resnest = any(k.endswith("conv2.fc1.weight") for k in keys)
    if "conv1.0.weight" in keys and "conv1.6.weight" in keys and not resnest:
        return f"its keys are a timm ResNet-D's (e.g. resnet50d): {_DEEP_STEM}"
    if any(".se.fc1." in k for k in keys):
        return f"its keys are a timm SE model's (e.g. seresnext101_32x4d): {_SE}"
    return None
