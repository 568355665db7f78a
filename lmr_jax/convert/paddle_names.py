"""Paddle 1.x parameter names of Baidu's GLR2019 models, mapped onto lmr_jax state keys.

Each map is a list of ``PaddleEntry`` (Paddle variable name -> the PyTorch-layout key of the
lmr_jax model, as ``lmr_jax.convert.mapping.torch_key_map`` names it). Paddle conv weights are
OIHW like PyTorch's; Paddle fc weights are [in, out], the transpose of PyTorch's.

Paddle's naming rules that the maps regenerate:

* a parameter given an explicit name keeps it; an unnamed layer call takes ``<type>_<k>`` from
  a per-type counter that every call of that type without a ``name=`` argument advances (also
  when all its parameters are named), and its parameters become ``<layer>.w_<j>`` /
  ``<layer>.b_<j>``; an unnamed batch norm holds ``.w_0`` (scale), ``.b_0`` (offset), ``.w_1``
  (moving mean), ``.w_2`` (moving variance);
* layouts:
  - ``named`` ResNet-vd (res200_arcmargin, res152_softmax_v1/v2): conv ``conv1_{1,2,3}`` and
    ``res{stage+2}{letter}_branch2{a,b,c}`` / ``_branch1`` (``_weights``), BN ``bn`` + the conv
    name without its first 3 characters (``bnv1_1``, ``bn2a_branch2a``) + ``_scale`` /
    ``_offset`` / ``_mean`` / ``_variance``; for the deep nets stage res4 counts ``res4a``,
    ``res4b1``, ``res4b2``, ...;
  - ``numbered`` ResNet-vd (res152_arcmargin, _index, _npairs): nothing named, so conv
    ``conv2d_<i>.w_0`` and BN ``batch_norm_<i>.*`` with i in build order (the three stem convs,
    then per block 2a, 2b, 2c and the shortcut conv if any);
  - ``named`` SE-ResNeXt-vd (se_x152_arcmargin): ``conv1_{1,2,3}`` with BN ``<conv>_bn_*``,
    blocks ``conv{n}_{i}_x1/_x2/_x3/_prj`` (n = 4..7 for the four stages of the 152-layer net,
    i from 1) with BN ``<conv>_bn_*``, SE fcs ``fc{n}_{i}_sqz_weights/_offset``,
    ``fc{n}_{i}_exc_weights/_offset``; the 100 SE fc calls advance the fc counter, so the
    embedding is ``fc_100``;
  - ``named`` Inception-v4 (inceptionv4_arcmargin): ``<branch name>_weights`` and
    ``<branch name>_bn_*`` with PaddleClas' branch names (``INCEPTION_V4_NAMES``);
* heads: the retrieval fc is the first unnamed fc (``fc_<k>.w_0`` [C, 512], ``.b_0``);
  res152_softmax_v1 has ``fc_0`` (2048 -> 256) and ``fc_1`` (256 -> classes), v2 ``fc_0``.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from lmr_jax.models.inception_v4 import InceptionV4
from lmr_jax.models.resnet_vd import ResNetVd

LAYOUTS = ("named", "numbered")
HEADS = ("retrieval", "softmax_v1", "softmax_v2", "none")
BN_SUFFIXES = ("scale", "offset", "mean", "variance")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_NUMBERED_BN = ("w_0", "b_0", "w_1", "w_2")


@dataclasses.dataclass(frozen=True)
class PaddleEntry:
    """One Paddle variable and where it goes.

    Attributes:
      name: the Paddle variable name (file name in a persistables directory).
      key: the lmr_jax model's PyTorch-layout key (``base.layer1.0.conv1.weight``).
      transpose: the Paddle array is the transpose of the PyTorch layout (fc weights).
    """

    name: str
    key: str
    transpose: bool = False


def _conv_bn(conv_key: str, bn_key: str, weight: str, bn: list[str]) -> list[PaddleEntry]:
    entries = [PaddleEntry(weight, f"{conv_key}.weight")]
    entries += [PaddleEntry(n, f"{bn_key}.{k}") for n, k in zip(bn, _BN_KEYS, strict=True)]
    return entries


def _linear(key: str, weight: str, bias: str) -> list[PaddleEntry]:
    return [PaddleEntry(weight, f"{key}.weight", transpose=True),
            PaddleEntry(bias, f"{key}.bias")]


def _resnet_vd_convs(backbone: ResNetVd, prefix: str) -> list[tuple[str, str, tuple]]:
    """(conv key, BN key, role) of every conv in Paddle's build order.

    role: ("stem", i) or ("block", stage, block, "2a" | "2b" | "2c" | "1").
    """
    convs = [(f"{prefix}conv1.0", f"{prefix}conv1.1", ("stem", 1)),
             (f"{prefix}conv1.3", f"{prefix}conv1.4", ("stem", 2)),
             (f"{prefix}conv1.6", f"{prefix}bn1", ("stem", 3))]
    for s, stage in enumerate((backbone.layer1, backbone.layer2, backbone.layer3,
                               backbone.layer4)):
        for b, block in enumerate(stage):
            blk = f"{prefix}layer{s + 1}.{b}"
            for i, part in enumerate(("2a", "2b", "2c"), start=1):
                convs.append((f"{blk}.conv{i}", f"{blk}.bn{i}", ("block", s, b, part)))
            if block.downsample is not None:
                convs.append((f"{blk}.downsample.1", f"{blk}.downsample.2",
                              ("block", s, b, "1")))
    return convs


def _resnet_block_name(stage: int, block: int, res4_numbered: bool) -> str:
    if res4_numbered and stage == 2:
        return "res4a" if block == 0 else f"res4b{block}"
    return f"res{stage + 2}{chr(ord('a') + block)}"


def resnet_vd_entries(backbone: ResNetVd, *, layout: str = "named", res4_numbered: bool = True,
                      prefix: str = "base.") -> list[PaddleEntry]:
    """The backbone entries of a ResNet-vd (``named`` or ``numbered`` layout).

    ``res4_numbered``: stage res4 named ``res4a, res4b1, ...`` (Paddle's rule for 101, 152 and
    200 layers) rather than by letters.
    """
    entries = []
    for i, (conv, bn, role) in enumerate(_resnet_vd_convs(backbone, prefix)):
        if layout == "numbered":
            entries += _conv_bn(conv, bn, f"conv2d_{i}.w_0",
                                [f"batch_norm_{i}.{s}" for s in _NUMBERED_BN])
            continue
        if role[0] == "stem":
            name = f"conv1_{role[1]}"
        else:
            _, stage, block, part = role
            name = f"{_resnet_block_name(stage, block, res4_numbered)}_branch{part}"
        bn_name = "bn" + name[3:]
        entries += _conv_bn(conv, bn, f"{name}_weights",
                            [f"{bn_name}_{s}" for s in BN_SUFFIXES])
    return entries


def se_resnext_vd_entries(backbone: ResNetVd, *, first_stage: int = 4,
                          prefix: str = "base.") -> list[PaddleEntry]:
    """The backbone entries of a named SE-ResNeXt-vd; stages are numbered from
    ``first_stage`` (4 for the 152-layer net)."""
    entries = []
    for conv, bn, role in _resnet_vd_convs(backbone, prefix):
        if role[0] == "stem":
            name = f"conv1_{role[1]}"
        else:
            _, stage, block, part = role
            suffix = {"2a": "x1", "2b": "x2", "2c": "x3", "1": "prj"}[part]
            name = f"conv{stage + first_stage}_{block + 1}_{suffix}"
        entries += _conv_bn(conv, bn, f"{name}_weights", [f"{name}_bn_{s}" for s in BN_SUFFIXES])
        if role[0] == "block" and role[3] == "2c":
            fc = f"fc{role[1] + first_stage}_{role[2] + 1}"
            blk = conv.rsplit(".", 1)[0]
            entries += _linear(f"{blk}.se.fc1", f"{fc}_sqz_weights", f"{fc}_sqz_offset")
            entries += _linear(f"{blk}.se.fc2", f"{fc}_exc_weights", f"{fc}_exc_offset")
    return entries


def _inception_block_names(kind: str, prefix: str) -> list[tuple[str, str]]:
    """(lmr_jax module path, Paddle conv name) of one Inception block."""
    tables = {
        "stem": [("convs.0", "conv1_3x3_s2"), ("convs.1", "conv2_3x3_s1"),
                 ("convs.2", "conv3_3x3_s1"), ("mixed1", "inception_stem1_3x3_s2"),
                 ("branch_a.0", "inception_stem2_3x3_reduce"),
                 ("branch_a.1", "inception_stem2_3x3"),
                 ("branch_b.0", "inception_stem2_1x7_reduce"),
                 # Paddle's names are swapped against the shapes here: _1x7 is (7, 1).
                 ("branch_b.1", "inception_stem2_1x7"), ("branch_b.2", "inception_stem2_7x1"),
                 ("branch_b.3", "inception_stem2_3x3_2"), ("mixed3", "inception_stem3_3x3_s2")],
        "a": [("branch_pool", "_1x1"), ("branch_1x1", "_1x1_2"),
              ("branch_3x3.0", "_3x3_reduce"), ("branch_3x3.1", "_3x3"),
              ("branch_3x3dbl.0", "_3x3_2_reduce"), ("branch_3x3dbl.1", "_3x3_2"),
              ("branch_3x3dbl.2", "_3x3_3")],
        "reduction_a": [("branch_3x3", "_3x3"), ("branch_3x3dbl.0", "_3x3_2_reduce"),
                        ("branch_3x3dbl.1", "_3x3_2"), ("branch_3x3dbl.2", "_3x3_3")],
        "b": [("branch_pool", "_1x1"), ("branch_1x1", "_1x1_2"),
              ("branch_7x7.0", "_1x7_reduce"), ("branch_7x7.1", "_1x7"),
              ("branch_7x7.2", "_7x1"), ("branch_7x7dbl.0", "_7x1_2_reduce"),
              ("branch_7x7dbl.1", "_1x7_2"), ("branch_7x7dbl.2", "_7x1_2"),
              ("branch_7x7dbl.3", "_1x7_3"), ("branch_7x7dbl.4", "_7x1_3")],
        "reduction_b": [("branch_3x3.0", "_3x3_reduce"), ("branch_3x3.1", "_3x3"),
                        ("branch_7x7x3.0", "_1x7_reduce"), ("branch_7x7x3.1", "_1x7"),
                        ("branch_7x7x3.2", "_7x1"), ("branch_7x7x3.3", "_3x3_2")],
        "c": [("branch_pool", "_1x1"), ("branch_1x1", "_1x1_2"),
              ("branch_3x3_reduce", "_1x1_3"), ("branch_3x3_1x3", "_1x3"),
              ("branch_3x3_3x1", "_3x1"), ("branch_3x3dbl.0", "_1x1_4"),
              ("branch_3x3dbl.1", "_1x3_2"), ("branch_3x3dbl.2", "_3x1_2"),
              ("branch_3x3dbl_1x3", "_1x3_3"), ("branch_3x3dbl_3x1", "_3x1_3")],
    }
    return [(path, prefix + suffix) for path, suffix in tables[kind]]


def inception_v4_names() -> list[tuple[str, str]]:
    """(lmr_jax module path under the backbone, Paddle conv name) of all 149 convs, in
    Paddle's build order."""
    names = [(f"stem.{p}", n) for p, n in _inception_block_names("stem", "")]
    for k in range(4):
        names += [(f"inception_a.{k}.{p}", n)
                  for p, n in _inception_block_names("a", f"inception_a{k + 1}")]
    names += [(f"reduction_a.{p}", n) for p, n in _inception_block_names("reduction_a",
                                                                         "reduction_a")]
    for k in range(7):
        names += [(f"inception_b.{k}.{p}", n)
                  for p, n in _inception_block_names("b", f"inception_b{k + 1}")]
    names += [(f"reduction_b.{p}", n) for p, n in _inception_block_names("reduction_b",
                                                                         "reduction_b")]
    for k in range(3):
        names += [(f"inception_c.{k}.{p}", n)
                  for p, n in _inception_block_names("c", f"inception_c{k + 1}")]
    return names


def inception_v4_entries(prefix: str = "base.") -> list[PaddleEntry]:
    """The backbone entries of the named Inception-v4."""
    entries = []
    for path, name in inception_v4_names():
        entries += _conv_bn(f"{prefix}{path}.conv", f"{prefix}{path}.bn", f"{name}_weights",
                            [f"{name}_bn_{s}" for s in BN_SUFFIXES])
    return entries


def head_entries(head: str, first_fc: int = 0) -> list[PaddleEntry]:
    """The head's fc entries, the first unnamed fc being ``fc_<first_fc>``.

    ``retrieval``: ``fc`` of ``BaiduRetrievalModel``; ``softmax_v1``: ``classifier.0`` and
    ``classifier.1``; ``softmax_v2``: ``classifier.0``; ``none``: no head.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    count = {"retrieval": 1, "softmax_v1": 2, "softmax_v2": 1, "none": 0}[head]
    entries = []
    for i in range(count):
        key = "fc" if head == "retrieval" else f"classifier.{i}"
        fc = f"fc_{first_fc + i}"
        entries += _linear(key, f"{fc}.w_0", f"{fc}.b_0")
    return entries


# Backbone families and their naming options, per registered arch.
ARCH_FAMILIES = {
    "resnet152_vd": ("resnet_vd", {"res4_numbered": True}),
    "resnet200_vd": ("resnet_vd", {"res4_numbered": True}),
    "se_resnext152_64x4d_vd": ("se_resnext_vd", {"first_stage": 4}),
    "inception_v4": ("inception_v4", {}),
}
FAMILIES = ("resnet_vd", "se_resnext_vd", "inception_v4")


def model_entries(backbone: nnx.Module, family: str, *, layout: str = "named",
                  head: str = "retrieval", **options) -> list[PaddleEntry]:
    """All entries of a Baidu model: backbone (under ``base.``) and head.

    Args:
      backbone: the lmr_jax backbone (``ResNetVd`` or ``InceptionV4``; abstract is enough).
      family: ``resnet_vd``, ``se_resnext_vd`` or ``inception_v4``.
      layout: ``named`` or ``numbered`` (ResNet-vd only: the v0 retrieval models).
      head: one of ``HEADS``.
      options: naming options of the family (``res4_numbered``, ``first_stage``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if layout == "numbered" and family != "resnet_vd":
        raise ValueError(f"the numbered (conv2d_N) layout exists for ResNet-vd only, not "
                         f"{family}")
    first_fc = 0
    if family == "inception_v4":
        if not isinstance(backbone, InceptionV4):
            raise TypeError(f"family inception_v4 needs an InceptionV4, got {type(backbone)}")
        entries = inception_v4_entries()
    else:
        if not isinstance(backbone, ResNetVd):
            raise TypeError(f"family {family} needs a ResNetVd, got {type(backbone)}")
        if family == "resnet_vd":
            entries = resnet_vd_entries(backbone, layout=layout, **options)
        else:
            entries = se_resnext_vd_entries(backbone, **options)
            # Two SE fc calls per block advance the unnamed fc counter.
            first_fc = 2 * sum(len(s) for s in (backbone.layer1, backbone.layer2,
                                                 backbone.layer3, backbone.layer4))
    return entries + head_entries(head, first_fc)
