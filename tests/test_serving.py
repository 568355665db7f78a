"""Serving export (lmr_jax.serving): the exported artefact equals the in-process embedding path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from lmr_jax import serving
from lmr_jax.data.augment import EvalPreprocess, default_eval_preprocess_config
from lmr_jax.models import ModelConfig, create
from lmr_jax.models.saved_model import load_model, save_model
from lmr_jax.retrieval.embedding import make_embed_fn

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
KWARGS = {"embed_dim": 32, "gem_p": 2.5}
MULTI = (0.707, 1.0, 1.414)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A resnet_tiny checkpoint with BatchNorm statistics away from their init."""
    model = create("resnet_tiny", rngs=nnx.Rngs(3), **KWARGS)
    rng = np.random.default_rng(0)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.BatchStat):
            var[...] = jnp.asarray(rng.uniform(0.5, 1.5, var.shape), jnp.float32)
    path = str(tmp_path_factory.mktemp("serving") / "ckpt")
    save_model(path, model, config=ModelConfig(arch="resnet_tiny", **KWARGS))
    return path


def _export(checkpoint: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export.py"), "--checkpoint", checkpoint,
         "--out", str(out), "--size", str(SIZE), *extra],
        capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def artefacts(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, scales in (("single", "1"), ("multi", ",".join(map(str, MULTI)))):
        result = _export(checkpoint, root / name, "--scales", scales)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = root / name
    return out


def _in_process(checkpoint: str, images: np.ndarray, scales) -> np.ndarray:
    """The one embedding path as extraction runs it: host LUT normalisation + make_embed_fn."""
    model, _, _ = load_model(checkpoint)
    preprocess = EvalPreprocess(default_eval_preprocess_config(SIZE))
    from lmr_jax.data.augment import normalize

    normalised = np.stack([normalize(im, preprocess.lut) for im in images])
    embed = make_embed_fn(model, Mesh(np.array(jax.devices()[:1]), ("data",)), scales=scales)
    return np.asarray(embed(normalised))


@pytest.mark.parametrize("name,scales", [("single", (1.0,)), ("multi", MULTI)])
def test_exported_equals_in_process_embedding(checkpoint, artefacts, name, scales):
    served = serving.load(artefacts[name])
    rng = np.random.default_rng(1)
    for batch in (1, 3, 8):
        images = rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
        got = np.asarray(served(images))
        want = _in_process(checkpoint, images, scales)
        assert got.dtype == np.float32 and got.shape == (batch, 32)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_metadata_records_what_is_inside(artefacts):
    meta = json.loads((artefacts["multi"] / "metadata.json").read_text())
    preprocess = default_eval_preprocess_config(SIZE)
    assert meta["input"]["shape"] == ["batch", SIZE, SIZE, 3] and meta["input"]["dtype"] == "uint8"
    assert meta["preprocessing"]["mean"] == list(preprocess.mean)
    assert meta["preprocessing"]["std"] == list(preprocess.std)
    assert meta["scales"] == list(MULTI) and meta["flip"] is False
    assert meta["model"]["arch"] == "resnet_tiny" and meta["model"]["model_kwargs"]["embed_dim"] == 32
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["jax_export"]["platforms"] == ["cpu", "cuda"]
    assert meta["jax_export"]["calling_convention_version"] >= 9
    assert meta["output"] == {"shape": ["batch", 32], "embed_dim": 32, "dtype": "float32",
                              "l2_normalised": True}


def test_loading_needs_no_model_code(artefacts):
    """In a fresh process where importing lmr_jax.models fails, load + call still work."""
    code = (
        "import sys\n"
        "sys.modules['lmr_jax.models'] = None\n"  # any import of it now raises ImportError
        "sys.modules['lmr_jax.retrieval'] = None\n"
        "import numpy as np\n"
        "from lmr_jax import serving\n"
        f"served = serving.load({str(artefacts['multi'])!r})\n"
        f"out = served(np.zeros((2, {SIZE}, {SIZE}, 3), np.uint8))\n"
        "print(out.shape, out.dtype)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 32) float32"


def test_wrong_input_is_a_clear_error(artefacts):
    served = serving.load(artefacts["single"])
    with pytest.raises(ValueError, match=r"\(batch, 64, 64, 3\) uint8.*got shape \(2, 32, 32, 3\)"):
        served(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="got shape \\(64, 64, 3\\)"):
        served(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="got dtype float32"):
        served(np.zeros((2, SIZE, SIZE, 3), np.float32))


def test_not_an_artefact_is_a_clear_error(tmp_path, checkpoint, artefacts):
    with pytest.raises(serving.ServingArtifactError, match="no such serving artefact folder"):
        serving.load(tmp_path / "absent")
    with pytest.raises(serving.ServingArtifactError, match="no metadata.json"):
        serving.load(checkpoint)  # a model checkpoint is not a serving artefact
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("metadata.json", "weights.safetensors"):
        (broken / f).write_bytes((artefacts["single"] / f).read_bytes())
    with pytest.raises(serving.ServingArtifactError, match="embedding.jax_export is missing"):
        serving.load(broken)
    (broken / "embedding.jax_export").write_bytes(b"not a flatbuffer")
    with pytest.raises(serving.ServingArtifactError, match="cannot deserialise"):
        serving.load(broken)


def test_export_refuses_to_overwrite(checkpoint, artefacts):
    result = _export(checkpoint, artefacts["single"])
    assert result.returncode != 0 and "exists" in result.stderr


def test_help_lists_flags_with_an_example():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "export.py"), "--help"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    text = result.stdout + result.stderr  # absl exits 1 after --help
    assert "python scripts/export.py --checkpoint CKPT --out" in text
    assert "--scales" in text and "--platforms" in text
