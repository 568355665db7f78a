"""Checkpoint conversion: key sets against the manifests, formats, strictness, the CLI.

References: the state_dict manifests of the reference code (tests/data/torch_manifests) for
key sets, and the independent PyTorch modules of tests/torch_reference for numbers (a tiny
ResNet: ``ResNetReference((1, 1, 1, 1), base=16)`` is ``resnet_tiny``; and the reference
resnet50). Conversions run on resnet_tiny where the architecture does not matter.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from lmr_jax import models
from lmr_jax.convert.convert import (
    backbone_key_shapes,
    convert_state_dict,
    torch_key_shapes,
)
from lmr_jax.convert.mapping import CheckpointMismatchError, export_torch_state
from lmr_jax.convert.pytorch_files import CheckpointFormatError, read_state_dict
from lmr_jax.models.saved_model import load_model
from tests.torch_reference import common
from tests.torch_reference import resnet as torch_resnet

REPO = pathlib.Path(__file__).resolve().parent.parent
BACKBONE_MANIFESTS = ("resnet50", "resnet101_ibn_a", "resnext101_ibn_a", "se_resnet101_ibn_a",
                      "resnest50", "resnest101", "resnest200", "resnest269")
TOL = 1e-4
TINY_EMBED = 64
TINY_CLASSES = 7


def _to_torchvision(key: str) -> str:
    """Reference resnet50 key -> torchvision's (layer2/3 shortcut ``downsample.1/.2`` -> ``.0/.1``)."""
    m = re.fullmatch(r"(layer[23]\.0\.downsample\.)([12])\.(.+)", key)
    return f"{m[1]}{int(m[2]) - 1}.{m[3]}" if m else key


def _zeros_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A state_dict of the given shapes without allocating memory (only shapes are looked at)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def tiny_reference(seed: int, embed_dim: int | None = None, num_classes: int | None = None,
                   with_fc: bool = False) -> torch.nn.Module:
    """The torch twin of resnet_tiny (backbone, or whole model with ``embed_dim``), eval mode."""
    base = torch_resnet.ResNetReference((1, 1, 1, 1), base=16, with_fc=with_fc)
    module = base if embed_dim is None else common.RetrievalHead(
        base, in_features=512, embed_dim=embed_dim, num_classes=num_classes)
    return common.randomize_(module, seed).eval()


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """(2, 40, 40, 3) NHWC inputs differing per sample (40: odd feature-map sizes)."""
    return common.structured_inputs(2, 40, seed=3)


@pytest.fixture(scope="module")
def tiny_backbone():
    ref = tiny_reference(seed=1, with_fc=True)
    return ref, common.numpy_state(ref)


@pytest.fixture(scope="module")
def tiny_full():
    ref = tiny_reference(seed=2, embed_dim=TINY_EMBED, num_classes=TINY_CLASSES, with_fc=True)
    return ref, common.numpy_state(ref)


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    rel, rel_max = common.rel_err(ours, ref)
    assert rel < TOL and rel_max < TOL, (rel, rel_max)


# ---------------------------------------------------------------- key sets vs the manifests


def expected_key_shapes(arch: str, *, full_model: bool = False,
                        num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The keys and shapes the converter takes for ``arch`` (besides the dropped ``fc.*``);
    for ``full_model`` as the reference whole model has them: ``base.`` + the backbone keys,
    the neck and ``classifier.weight`` (num_classes, embed_dim)."""
    if not full_model:
        return backbone_key_shapes(arch)
    abstract = nnx.eval_shape(lambda: models.create(arch, rngs=nnx.Rngs(0)))
    return {**torch_key_shapes(abstract), "classifier.weight": (num_classes, abstract.embed_dim)}


@pytest.mark.parametrize("arch", BACKBONE_MANIFESTS)
def test_backbone_keys_equal_manifest(arch):
    manifest = {k: s for k, s in common.manifest_shapes(arch).items()
                if k not in ("fc.weight", "fc.bias")}
    assert expected_key_shapes(arch) == manifest


def test_torchvision_resnet50_keys():
    """resnet50_torchvision takes torchvision's names: the reference manifest, renamed back."""
    manifest = {_to_torchvision(k): s for k, s in common.manifest_shapes("resnet50").items()}
    assert expected_key_shapes("resnet50_torchvision") == manifest
    assert manifest != common.manifest_shapes("resnet50")


def test_full_model_keys_equal_manifest():
    manifest = {k: s for k, s in common.manifest_shapes("se_resnet101_ibn_a_full").items()
                if k not in ("base.fc.weight", "base.fc.bias")}
    ours = expected_key_shapes("se_resnet101_ibn_a", full_model=True, num_classes=1000)
    assert ours == manifest
    assert ours["classifier.weight"] == (1000, 512)
    # SE weights are part of the conversion (the reference's ImageNet loader skips them).
    assert "base.layer4.2.se.fc.2.weight" in ours


# ---------------------------------------------------------------- formats and numbers


def _write(tmp_path, name: str, state: dict[str, np.ndarray], wrap: str) -> str:
    path = os.path.join(tmp_path, name)
    if wrap == "safetensors":
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
        return path
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    if wrap == "module":
        tensors = {"state_dict": {"module." + k: v for k, v in tensors.items()}, "epoch": 3}
    elif wrap == "model":
        tensors = {"model": tensors, "optimizer": {"lr": 0.1}}
    torch.save(tensors, path)
    return path


@pytest.mark.parametrize("name,wrap", [("plain.pth", "plain"), ("wrapped.pth", "module"),
                                       ("trainer.pt", "model"),
                                       ("weights.safetensors", "safetensors")])
def test_formats_load_every_entry(tmp_path, tiny_backbone, name, wrap):
    _, state = tiny_backbone
    read = read_state_dict(_write(tmp_path, name, state, wrap))
    assert set(read) == set(state)
    converted = convert_state_dict("resnet_tiny", read)
    assert converted.info["dropped_keys"] == ["fc.bias", "fc.weight"]
    assert converted.info["head_from_checkpoint"] is False
    assert converted.classifier is None
    back = export_torch_state(converted.model.base)
    for key, value in back.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(value, state[key], err_msg=key)
    # Independent of the mapping code: the stem conv OIHW -> HWIO, a BN's running variance.
    base = converted.model.base
    np.testing.assert_array_equal(np.asarray(base.conv1.kernel[...]),
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(base.layer3[0].downsample[1].var[...]),
                                  state["layer3.0.downsample.1.running_var"])


def test_backbone_matches_torch(tiny_backbone, inputs):
    ref, state = tiny_backbone
    model = convert_state_dict("resnet_tiny", state).model
    with torch.no_grad():
        want = common.nchw_to_nhwc(ref(common.nhwc_to_nchw(inputs)))
    _assert_close(np.asarray(model.base(inputs)), want)


def test_bfloat16_checkpoint_reads_as_float32(tmp_path):
    path = os.path.join(tmp_path, "bf16.pth")
    torch.save({"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, path)
    read = read_state_dict(path)
    assert read["w"].dtype == np.float32
    np.testing.assert_array_equal(read["w"], [1.5, -2.0])


def test_full_model_matches_torch(tmp_path, tiny_full, inputs):
    ref, state = tiny_full
    assert "base.fc.weight" in state and state["classifier.weight"].shape == (TINY_CLASSES,
                                                                              TINY_EMBED)
    path = _write(tmp_path, "full.pth", state, "module")
    converted = convert_state_dict("resnet_tiny", read_state_dict(path), full_model=True)
    assert converted.config.embed_dim == TINY_EMBED
    assert converted.info["dropped_keys"] == ["base.fc.bias", "base.fc.weight"]
    assert converted.info["head_from_checkpoint"] is True
    assert converted.classifier.num_classes == TINY_CLASSES
    np.testing.assert_array_equal(np.asarray(converted.classifier.weight[...]),
                                  state["classifier.weight"])
    with torch.no_grad():
        want = ref(common.nhwc_to_nchw(inputs)).numpy()
    _assert_close(np.asarray(converted.model(inputs)), want)


def test_full_model_without_classifier_needs_allow_missing(tiny_full):
    _, state = tiny_full
    body = {k: v for k, v in state.items() if k != "classifier.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\): classifier.weight"):
        convert_state_dict("resnet_tiny", body, full_model=True)
    converted = convert_state_dict("resnet_tiny", body, full_model=True,
                                   allow_missing=["classifier.*"])
    assert converted.classifier is None
    assert converted.info["missing_allowed"] == ["classifier.weight"]


def test_resnet50_accepts_torchvision_and_reference_names(inputs):
    """torchvision names -> the reference resnet50 layout, as the reference code renames them;
    compared with the torch reference resnet50 holding the renamed weights."""
    tv_ref = common.randomize_(torch_resnet.resnet50_torchvision(), seed=4).eval()
    tv_state = common.numpy_state(tv_ref)
    assert "layer2.0.downsample.0.weight" in tv_state
    converted = convert_state_dict("resnet50", tv_state)
    assert len(converted.info["renamed_keys"]) == 12
    assert (converted.info["renamed_keys"]["layer3.0.downsample.1.running_var"]
            == "layer3.0.downsample.2.running_var")
    ref = torch_resnet.resnet50().eval()
    ref.load_state_dict({converted.info["renamed_keys"].get(k, k): torch.from_numpy(v)
                         for k, v in tv_state.items()})
    x = inputs[:, :32, :32]  # the average-pool shortcuts need sizes divisible by 16
    with torch.no_grad():
        want = common.nchw_to_nhwc(ref(common.nhwc_to_nchw(np.ascontiguousarray(x))))
    _assert_close(np.asarray(converted.model.base(x)), want)
    # The same file into torchvision's own layout: no renaming.
    tv = convert_state_dict("resnet50_torchvision", tv_state)
    assert tv.info["renamed_keys"] == {}
    np.testing.assert_array_equal(np.asarray(tv.model.base.layer2[0].downsample[0].kernel[...]),
                                  tv_state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    # The reference code's own names load unchanged.
    again = convert_state_dict("resnet50", common.numpy_state(ref))
    assert again.info["renamed_keys"] == {}
    np.testing.assert_array_equal(np.asarray(again.model.base(x)),
                                  np.asarray(converted.model.base(x)))


# ---------------------------------------------------------------- bad checkpoints


def test_missing_extra_and_misshaped_keys_all_listed(tiny_backbone):
    _, state = tiny_backbone
    bad = dict(state)
    del bad["layer2.0.conv2.weight"]
    bad["layer9.weight"] = np.zeros(3, np.float32)
    bad["bn1.running_mean"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict("resnet_tiny", bad)
    msg = str(e.value)
    assert "1 missing key(s): layer2.0.conv2.weight" in msg
    assert "1 unexpected key(s): layer9.weight" in msg
    assert "bn1.running_mean (checkpoint (5,), model (16,))" in msg
    # An explicit allow-list lets a deliberate gap through.
    del bad["layer9.weight"]
    bad["bn1.running_mean"] = state["bn1.running_mean"]
    converted = convert_state_dict("resnet_tiny", bad, allow_missing=["layer2.0.conv2.*"])
    assert converted.info["missing_allowed"] == ["layer2.0.conv2.weight"]


@pytest.mark.parametrize("source,names", [
    ("resnest50", "'resnest50'"),
    ("se_resnet101_ibn_a", "'se_resnet101_ibn_a'"),
    ("torchvision", "'resnet50' or 'resnet50_torchvision'"),
])
def test_wrong_architecture_is_named(source, names):
    if source == "torchvision":
        shapes = {_to_torchvision(k): s for k, s in common.manifest_shapes("resnet50").items()}
    else:
        shapes = common.manifest_shapes(source)
    with pytest.raises(CheckpointMismatchError, match="looks like a " + re.escape(names)):
        convert_state_dict("resnet_tiny", _zeros_state(shapes))


def test_backbone_and_whole_model_mixups_are_explained(tiny_backbone, tiny_full):
    with pytest.raises(CheckpointMismatchError, match="convert it with full_model=True"):
        convert_state_dict("resnet_tiny", tiny_full[1])
    with pytest.raises(CheckpointMismatchError, match="looks like a backbone checkpoint"):
        convert_state_dict("resnet_tiny", tiny_backbone[1], full_model=True)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_code_running_pickle_is_refused(tmp_path, how):
    marker = os.path.join(tmp_path, "pwned")
    path = os.path.join(tmp_path, "evil.pth")
    payload = {"conv1.weight": _RunsCode(marker)}
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointFormatError, match="not a plain weights checkpoint"):
        read_state_dict(path)
    assert not os.path.exists(marker)


def test_whole_pickled_module_and_non_tensors_are_refused(tmp_path):
    path = os.path.join(tmp_path, "module.pth")
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(CheckpointFormatError, match="not a plain weights checkpoint"):
        read_state_dict(path)
    torch.save({"w": torch.zeros(2), "step": 5}, path)
    with pytest.raises(CheckpointFormatError, match="entry 'step' is a int"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError):
        read_state_dict(os.path.join(tmp_path, "absent.pth"))
    bad = os.path.join(tmp_path, "bad.safetensors")
    pathlib.Path(bad).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointFormatError, match="not a valid safetensors file"):
        read_state_dict(bad)


# ---------------------------------------------------------------- the command line


def test_cli_converts_checks_and_writes_a_loadable_checkpoint(tmp_path, tiny_full, inputs):
    """One subprocess run of scripts/convert_weights.py on a whole model (--full-model)."""
    ref, state = tiny_full
    ckpt = _write(tmp_path, "full.safetensors", state, "safetensors")
    x_nchw = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))
    np.save(os.path.join(tmp_path, "x.npy"), x_nchw)
    out_dir = os.path.join(tmp_path, "converted")
    y_path = os.path.join(tmp_path, "y.npy")
    cmd = [sys.executable, str(REPO / "scripts" / "convert_weights.py"), "--arch", "resnet_tiny",
           "--checkpoint", ckpt, "--output", out_dir, "--full-model",
           "--check-input", os.path.join(tmp_path, "x.npy"), "--check-output", y_path]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "classifier: 7 classes" in proc.stdout
    with torch.no_grad():
        want = ref(torch.from_numpy(x_nchw)).numpy()
    _assert_close(np.load(y_path), want)
    model, classifier, meta = load_model(out_dir, arch="resnet_tiny")
    assert meta["source_checkpoint"] == ckpt and len(meta["source_sha256"]) == 64
    assert meta["model_kwargs"]["embed_dim"] == TINY_EMBED and meta["head_from_checkpoint"]
    assert classifier.num_classes == TINY_CLASSES
    _assert_close(np.asarray(model(inputs)), want)


def test_cli_errors_exit_nonzero_with_the_reason(tmp_path, tiny_backbone, capsys):
    """The script's ``main`` in-process: a strict failure and an existing output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_weights",
                                                  REPO / "scripts" / "convert_weights.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    state = {k: v for k, v in tiny_backbone[1].items() if k != "layer4.0.bn3.weight"}
    ckpt = _write(tmp_path, "w.pth", state, "plain")
    out_dir = os.path.join(tmp_path, "out")
    assert cli.main(["--arch", "resnet_tiny", "--checkpoint", ckpt, "--output", out_dir]) == 1
    assert "missing key(s): layer4.0.bn3.weight" in capsys.readouterr().err
    assert not os.path.exists(out_dir)
    os.makedirs(out_dir)
    assert cli.main(["--arch", "resnet_tiny", "--checkpoint", ckpt, "--output", out_dir]) == 2
    assert "exists" in capsys.readouterr().err
    # A self-check input that is not (B, 3, H, W): the conversion is written, the check fails.
    good = _write(tmp_path, "good.pth", tiny_backbone[1], "plain")
    np.save(os.path.join(tmp_path, "x.npy"), np.zeros((1, 4, 8, 8), np.float32))
    assert cli.main(["--arch", "resnet_tiny", "--checkpoint", good, "--output", out_dir,
                     "--overwrite", "--check-input", os.path.join(tmp_path, "x.npy"),
                     "--check-output", os.path.join(tmp_path, "y.npy")]) == 1
    assert "must be (B, 3, H, W)" in capsys.readouterr().err
    assert load_model(out_dir)[2]["head_from_checkpoint"] is False
