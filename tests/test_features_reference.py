"""Features through scripts/extract.py against the reference's own inference, in PyTorch.

The reference side is written here from the reference notebook's recipe, with no lmr_jax:
``cv2.imread`` + ``cv2.resize(img, (S, S))`` (INTER_LINEAR), BGR -> RGB, ``(x - mean * 255) /
57`` on 0-255 values, NCHW; multi-scale: ``F.interpolate(bilinear, align_corners=False)`` of
the normalised batch to ``int(((S * s) // 16) * 16)`` for s in (0.707, 1, 1.414), the raw neck
outputs summed and divided by 3, then L2-normalised. The model is the tiny ResNet of
tests/torch_reference with random weights, converted to lmr-jax and run by the real
extraction command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmr_jax.convert.convert import convert_state_dict
from lmr_jax.models.saved_model import save_model
from lmr_jax.retrieval import features
from tests.torch_reference import common
from tests.torch_reference import resnet as torch_resnet

REPO = Path(__file__).resolve().parents[1]
MEAN_255 = np.array([123.675, 116.28, 103.53], np.float32)
SCALES = (0.707, 1.0, 1.414)


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth photo-like uint8 BGR image with edges (gradients, blobs, a bar)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6)
        img[..., c] = 128 + 90 * np.sin(fx * x + ph) * np.cos(fy * y)
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    img[(y - cy) ** 2 + (x - cx) ** 2 < (min(h, w) / 4) ** 2] = rng.uniform(0, 255, 3)
    img[:, w // 3:w // 3 + 5] = 20
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(300, 241), (150, 333), (97, 120), (512, 384), (211, 211)]):
        ext = ".png" if i % 2 else ".jpg"
        assert cv2.imwrite(str(d / f"p{i}{ext}"), _photo(rng, h, w))
    return d


@pytest.fixture(scope="module")
def reference_and_checkpoint(tmp_path_factory):
    base = torch_resnet.ResNetReference((1, 1, 1, 1), base=16)
    ref = common.randomize_(common.RetrievalHead(base, in_features=512, embed_dim=512), 5).eval()
    converted = convert_state_dict("resnet_tiny", common.numpy_state(ref), full_model=True,
                                   allow_missing=["classifier.*"])
    ckpt = tmp_path_factory.mktemp("ckpt") / "model"
    save_model(ckpt, converted.model, None, config=converted.config)
    return ref, ckpt


def reference_features(model: torch.nn.Module, files: list[Path], size: int,
                       multiscale: bool) -> np.ndarray:
    """The reference notebook's inference, image by image."""
    out = []
    for f in files:
        img = cv2.resize(cv2.imread(str(f)), (size, size))  # INTER_LINEAR
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)
        x = torch.from_numpy(((img - MEAN_255) / 57.0).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            if multiscale:
                emb = 0
                for s in SCALES:
                    side = int(((size * s) // 16) * 16)
                    emb = emb + model(F.interpolate(x, size=(side, side), mode="bilinear",
                                                    align_corners=False))
                emb = emb / len(SCALES)
            else:
                emb = model(x)
        e = emb[0].numpy().astype(np.float64)
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


@pytest.mark.parametrize("size,multiscale", [(160, False), (160, True), (208, True),
                                             (208, False)])
def test_extract_command_equals_reference(tmp_path, folder, reference_and_checkpoint, size,
                                          multiscale):
    ref_model, ckpt = reference_and_checkpoint
    out = tmp_path / "feats"
    cmd = [sys.executable, str(REPO / "scripts" / "extract.py"), f"--checkpoint={ckpt}",
           f"--folder={folder}", f"--out={out}", f"--size={size}", "--out_dtype=float32",
           "--batch_size=2", "--read_threads=1"]
    if multiscale:
        cmd.append("--scales=0.707,1,1.414")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["num_failed"] == 0
    fs = features.load_features(out)
    files = sorted(folder.iterdir())
    assert list(fs.ids) == [f.stem for f in files]
    want = reference_features(ref_model, files, size, multiscale)
    cos = np.sum(np.asarray(fs.feats, np.float64) * want, axis=1)
    assert np.all(cos > 0.9999), dict(zip(fs.ids, cos.round(6), strict=True))


def test_embedding_path_equals_reference_on_the_same_pixels(folder, reference_and_checkpoint):
    """The embedding path alone (views, sum, normalisation), fed the reference's own pixels."""
    import jax
    from jax.sharding import Mesh

    from lmr_jax.models.saved_model import load_model
    from lmr_jax.retrieval import embedding

    ref_model, ckpt = reference_and_checkpoint
    model = load_model(ckpt)[0]
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    files = sorted(folder.iterdir())
    for size, multiscale in ((160, False), (208, True)):
        x = []
        for f in files:
            img = cv2.cvtColor(cv2.resize(cv2.imread(str(f)), (size, size)), cv2.COLOR_BGR2RGB)
            x.append((img.astype(np.float32) - MEAN_255) / 57.0)
        embed = embedding.make_embed_fn(model, mesh, scales=SCALES if multiscale else (1.0,))
        got = np.asarray(embed(np.stack(x)))
        want = reference_features(ref_model, files, size, multiscale)
        cos = np.sum(got.astype(np.float64) * want, axis=1)
        assert np.all(cos > 0.99999), (size, multiscale, cos)
