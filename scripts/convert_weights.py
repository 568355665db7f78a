"""Converts a PyTorch checkpoint into an lmr_jax model checkpoint (orbax).

Examples:
  python scripts/convert_weights.py --arch se_resnet101_ibn_a \
      --checkpoint se_resnet101_ibn_a-fabed4e2.pth --output weights/ser101ibn_imagenet
  python scripts/convert_weights.py --arch resnest101 --full-model \
      --checkpoint resnest101_stage4.pth --output weights/rs101_stage4 \
      --check-input x.npy --check-output y.npy

Accepts ``.pth``/``.pt``/``.bin`` (read with ``torch.load(weights_only=True)``; needs PyTorch)
and ``.safetensors`` (no PyTorch needed). See docs/conversion.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from lmr_jax.convert.convert import convert_state_dict
from lmr_jax.convert.mapping import CheckpointMismatchError
from lmr_jax.convert.torch_checkpoint import CheckpointFormatError, file_sha256, read_state_dict
from lmr_jax.models import list_models
from lmr_jax.models.saved_model import save_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", required=True, choices=list_models())
    p.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin or .safetensors file")
    p.add_argument("--output", required=True, help="directory of the model checkpoint to write")
    p.add_argument("--full-model", action="store_true",
                   help="the checkpoint is a whole model trained with the reference code "
                        "(base.*, fcneck.weight, fcneck_bn.*, classifier.weight)")
    p.add_argument("--allow-missing", action="append", default=[], metavar="PATTERN",
                   help="glob of model keys the checkpoint may lack (kept at initialisation); "
                        "repeatable")
    p.add_argument("--last-stride", type=int, default=1, choices=(1, 2))
    p.add_argument("--embed-dim", type=int, default=None,
                   help="embedding size (default 512; with --full-model: from fcneck.weight)")
    p.add_argument("--gem-p", type=float, default=3.0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--check-input", help="float32 NCHW .npy (normalised images) to run the "
                                         "converted model on, in inference mode")
    p.add_argument("--check-output", help=".npy to write: the last-stage NCHW feature map "
                                          "(backbone) or the neck output (--full-model)")
    args = p.parse_args(argv)
    if (args.check_input is None) != (args.check_output is None):
        p.error("--check-input and --check-output go together")
    return args


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    model_kwargs = {"last_stride": args.last_stride, "gem_p": args.gem_p}
    if args.embed_dim is not None:
        model_kwargs["embed_dim"] = args.embed_dim
    try:
        state_dict = read_state_dict(args.checkpoint)
        converted = convert_state_dict(args.arch, state_dict, full_model=args.full_model,
                                       allow_missing=args.allow_missing,
                                       model_kwargs=model_kwargs)
    except (FileNotFoundError, CheckpointFormatError, CheckpointMismatchError, ImportError,
            ValueError) as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 1
    info = converted.info
    metadata = {"source_checkpoint": os.path.abspath(args.checkpoint),
                "source_sha256": file_sha256(args.checkpoint), **info}
    save_model(args.output, converted.model, converted.classifier, config=converted.config,
               metadata=metadata, overwrite=args.overwrite)
    print(f"converted {args.checkpoint} ({len(state_dict)} entries) -> {args.output}")
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
    if args.check_input:
        try:
            out = run_check(converted.model, np.load(args.check_input), args.full_model)
        except (OSError, ValueError) as e:
            print(f"error: the check on {args.check_input} failed (the checkpoint was "
                  f"written): {e}", file=sys.stderr)
            return 1
        np.save(args.check_output, out)
        print(f"  check output {out.shape} -> {args.check_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
