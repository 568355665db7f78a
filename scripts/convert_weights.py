"""Converts a PyTorch, timm or Baidu Paddle checkpoint into an lmr_jax model checkpoint (orbax).

Example:
  python scripts/convert_weights.py --arch se_resnet101_ibn_a \\
      --checkpoint se_resnet101_ibn_a-fabed4e2.pth --output weights/ser101ibn_imagenet

A whole model trained with the reference code takes --full-model (and may be checked with
--check-input x.npy --check-output y.npy); a timm checkpoint takes --format timm and its timm
name, e.g. --format timm --arch resnest50d. Reads .pth/.pt/.bin (zip or legacy torch.save
format, without PyTorch: only tensors and plain containers are accepted, nothing in the file
runs) and .safetensors. See docs/conversion.md.

A Baidu GLR2019 Paddle 1.x checkpoint (a release tar's unpacked directory, or a combined
``params`` file) takes --format paddle and one of the Baidu backbones; the parameter layout and
the head (512-d retrieval embedding, softmax_v1 or softmax_v2 classifier) are recognised from
the files (docs/baidu.md):
  python scripts/convert_weights.py --format paddle --arch resnet152_vd \
      --checkpoint pretrained_models/res152_arcmargin --output weights/res152_arcmargin
With --check-input, a retrieval model writes its raw 512-d embedding (before L2
normalisation), a classifier its class probabilities.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
from absl import app, flags

from lmr_jax.convert.convert import convert_state_dict
from lmr_jax.convert.mapping import CheckpointMismatchError
from lmr_jax.convert.paddle import load_paddle_model
from lmr_jax.convert.paddle_format import PaddleFormatError
from lmr_jax.convert.paddle_names import ARCH_FAMILIES
from lmr_jax.convert.pytorch_files import CheckpointFormatError, file_sha256, read_state_dict
from lmr_jax.convert.timm_names import TIMM_MISMATCHES, TIMM_TO_LMR, TimmModelError, timm_arch
from lmr_jax.models import list_models
from lmr_jax.models.saved_model import save_model

FORMATS = ("auto", "pytorch", "timm", "paddle")

_ARCH = flags.DEFINE_string(
    "arch", None, "lmr_jax model (" + ", ".join(list_models()) + "); with --format timm (or "
    "auto) also a timm model name: " + ", ".join(f"{t} -> {a}" for t, a in TIMM_TO_LMR.items()))
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, ".pth/.pt/.bin or .safetensors file; with --format paddle a directory "
    "(one file per variable, or model + params) or a combined params file")
_OUTPUT = flags.DEFINE_string("output", None, "directory of the model checkpoint to write")
_FORMAT = flags.DEFINE_enum(
    "format", "auto", FORMATS,
    "key layout of the checkpoint: pytorch (the official releases and the reference code), "
    "timm (a timm model's state_dict; --arch may be its timm name), or auto (timm when --arch "
    "is a timm name, else pytorch; timm-only key layouts are recognised and named either way), "
    "or paddle (a Baidu GLR2019 Paddle 1.x directory or combined params file; --arch one of "
    + ", ".join(sorted(ARCH_FAMILIES)) + ")")
_FULL_MODEL = flags.DEFINE_boolean(
    "full-model", False, "the checkpoint is a whole model trained with the reference code "
    "(base.*, fcneck.weight, fcneck_bn.*, classifier.weight)")
_ALLOW_MISSING = flags.DEFINE_multi_string(
    "allow-missing", [], "glob of model keys the checkpoint may lack (kept at initialisation); "
    "repeatable")
_LAST_STRIDE = flags.DEFINE_enum("last-stride", "1", ("1", "2"), "stride of the last stage")
_EMBED_DIM = flags.DEFINE_integer(
    "embed-dim", None, "embedding size (default 512; with --full-model: from fcneck.weight)")
_GEM_P = flags.DEFINE_float("gem-p", 3.0, "GeM pooling exponent")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "replace an existing --output")
_CHECK_INPUT = flags.DEFINE_string(
    "check-input", None, "float32 NCHW .npy (normalised images) to run the converted model "
    "on, in inference mode")
_CHECK_OUTPUT = flags.DEFINE_string(
    "check-output", None, ".npy to write: the last-stage NCHW feature map (backbone) or the "
    "neck output (--full-model)")

flags.mark_flags_as_required(["arch", "checkpoint", "output"])
flags.register_multi_flags_validator(
    ["check-input", "check-output"],
    lambda v: (v["check-input"] is None) == (v["check-output"] is None),
    message="--check-input and --check-output go together")


def resolve_arch(arch: str, fmt: str) -> tuple[str, str | None]:
    """(lmr_jax arch, timm model name or None) for ``--arch`` under ``--format``.

    Raises:
      ValueError: an unknown name, or a timm name whose architecture lmr_jax lacks (the
        message says what it would need), or a timm name with ``--format pytorch``.
    """
    is_timm_name = arch.split(".", 1)[0] in TIMM_TO_LMR or arch.split(".", 1)[0] in TIMM_MISMATCHES
    if arch in list_models() and not (fmt == "timm" and is_timm_name):
        return arch, None
    if fmt == "pytorch" or not is_timm_name:
        raise ValueError(f"unknown --arch {arch!r}; lmr_jax models: {', '.join(list_models())}; "
                         "timm names (with --format timm): " + ", ".join(TIMM_TO_LMR))
    return timm_arch(arch), arch


def run_check(model, x_nchw: np.ndarray, full_model: bool) -> np.ndarray:
    """Runs the model in inference mode on an NCHW batch; the output in PyTorch layout.

    Returns (B, C, H/16, W/16) for a backbone conversion, (B, embed_dim) for a whole model.
    """
    if x_nchw.ndim != 4 or x_nchw.shape[1] != 3:
        raise ValueError(f"--check-input must be (B, 3, H, W), got shape {x_nchw.shape}")
    model.eval()
    x = np.transpose(x_nchw.astype(np.float32), (0, 2, 3, 1))
    if full_model:
        return np.asarray(model(x))
    return np.transpose(np.asarray(model.base(x)), (0, 3, 1, 2))


def run_paddle_check(model, x_nchw: np.ndarray) -> np.ndarray:
    """A Baidu model on an NCHW batch: (B, 512) raw embeddings or (B, C) probabilities."""
    if x_nchw.ndim != 4 or x_nchw.shape[1] != 3:
        raise ValueError(f"--check-input must be (B, 3, H, W), got shape {x_nchw.shape}")
    x = np.transpose(x_nchw.astype(np.float32), (0, 2, 3, 1))
    out = model.probabilities(x) if hasattr(model, "probabilities") else model(x)
    return np.asarray(out)


def write_check(run: Callable[[np.ndarray], np.ndarray]) -> int:
    """Runs the converted model on ``--check-input`` and saves ``--check-output``; exit status."""
    try:
        out = run(np.load(_CHECK_INPUT.value))
    except (OSError, ValueError) as e:
        print(f"error: the check on {_CHECK_INPUT.value} failed (the checkpoint was "
              f"written): {e}", file=sys.stderr)
        return 1
    np.save(_CHECK_OUTPUT.value, out)
    print(f"  check output {out.shape} -> {_CHECK_OUTPUT.value}")
    return 0


def convert_paddle() -> int:
    """The --format paddle conversion; the exit status."""
    checkpoint, output = _CHECKPOINT.value, _OUTPUT.value
    if _ARCH.value not in ARCH_FAMILIES:
        print(f"error: --format paddle takes --arch {', '.join(sorted(ARCH_FAMILIES))}, not "
              f"{_ARCH.value!r}", file=sys.stderr)
        return 2
    if _FULL_MODEL.value or _ALLOW_MISSING.value:
        print("error: --full-model and --allow-missing are for PyTorch checkpoints; a Paddle "
              "checkpoint is always read whole and strictly", file=sys.stderr)
        return 2
    try:
        loaded = load_paddle_model(checkpoint, _ARCH.value)
    except (FileNotFoundError, PaddleFormatError, CheckpointMismatchError, ValueError) as e:
        print(f"error: {checkpoint}: {e}", file=sys.stderr)
        return 1
    metadata = {"source_checkpoint": os.path.abspath(checkpoint), "source_format": "paddle",
                "paddle_layout": loaded.layout, "paddle_head": loaded.head,
                "paddle_source": loaded.source, "skipped_training_state": loaded.skipped}
    if os.path.isfile(checkpoint):
        metadata["source_sha256"] = file_sha256(checkpoint)
    save_model(output, loaded.model, config=loaded.config, metadata=metadata,
               overwrite=_OVERWRITE.value)
    what = (f"{loaded.config.num_classes}-class classifier ({loaded.head})"
            if loaded.head != "retrieval" else f"{loaded.config.embed_dim}-d retrieval model")
    print(f"converted {checkpoint} (Paddle {loaded.source}, {loaded.layout} names) -> {output}: "
          f"{_ARCH.value} {what}")
    if loaded.skipped:
        print(f"  skipped training state: {len(loaded.skipped)} variables")
    if _CHECK_INPUT.value:
        return write_check(lambda x: run_paddle_check(loaded.model, x))
    return 0


def convert() -> int:
    """The conversion the parsed flags describe; the exit status."""
    checkpoint, output = _CHECKPOINT.value, _OUTPUT.value
    if os.path.exists(output) and not _OVERWRITE.value:
        print(f"error: {output} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    if _FORMAT.value == "paddle":
        return convert_paddle()
    try:
        arch, timm_name = resolve_arch(_ARCH.value, _FORMAT.value)
    except (TimmModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if timm_name is not None and _FULL_MODEL.value:
        print("error: --full-model is for models trained with the reference code; a timm "
              "checkpoint is a backbone", file=sys.stderr)
        return 2
    model_kwargs = {"last_stride": int(_LAST_STRIDE.value), "gem_p": _GEM_P.value}
    if _EMBED_DIM.value is not None:
        model_kwargs["embed_dim"] = _EMBED_DIM.value
    try:
        state_dict = read_state_dict(checkpoint)
        converted = convert_state_dict(arch, state_dict, full_model=_FULL_MODEL.value,
                                       allow_missing=_ALLOW_MISSING.value,
                                       model_kwargs=model_kwargs)
    except (FileNotFoundError, CheckpointFormatError, CheckpointMismatchError,
            ValueError) as e:
        print(f"error: {checkpoint}: {e}", file=sys.stderr)
        return 1
    info = converted.info
    metadata = {"source_checkpoint": os.path.abspath(checkpoint),
                "source_sha256": file_sha256(checkpoint),
                "source_format": "timm" if timm_name else _FORMAT.value, **info}
    if timm_name is not None:
        metadata["timm_model"] = timm_name
    save_model(output, converted.model, converted.classifier, config=converted.config,
               metadata=metadata,
               overwrite=_OVERWRITE.value)
    source = f" (timm {timm_name} -> {arch})" if timm_name else ""
    print(f"converted {checkpoint}{source} ({len(state_dict)} entries) -> {output}")
    if info["dropped_keys"]:
        print(f"  dropped (unused): {', '.join(info['dropped_keys'])}")
    if info["renamed_keys"]:
        print(f"  renamed torchvision shortcut keys: {len(info['renamed_keys'])}")
    if info["missing_allowed"]:
        print(f"  missing (allowed, kept at init): {', '.join(info['missing_allowed'])}")
    if not info["head_from_checkpoint"]:
        print("  the retrieval head (fcneck, fcneck_bn) is freshly initialised")
    if converted.classifier is not None:
        print(f"  classifier: {converted.classifier.num_classes} classes")
    if _CHECK_INPUT.value:
        return write_check(lambda x: run_check(converted.model, x, _FULL_MODEL.value))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (the arguments, without the program name) and converts.

    Flag errors (a missing required flag, --check-input without --check-output) exit with
    status 1 and the reason, as ``app.run`` does.
    """
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return convert()


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(convert()))
