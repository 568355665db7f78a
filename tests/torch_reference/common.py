"""Shared pieces of the PyTorch references: manifests, random weights, inputs, the head.

Everything here is plain PyTorch/numpy (no lmr_jax).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from torch import nn

MANIFEST_DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "torch_manifests"


def load_manifest(arch: str) -> dict:
    """The manifest JSON of ``arch`` (e.g. ``resnet50``, ``se_resnet101_ibn_a_full``)."""
    return json.loads((MANIFEST_DIR / f"manifest_{arch}.json").read_text())


def manifest_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """key -> shape of every state_dict entry of the manifest, in its order."""
    return {k: tuple(s) for k, s, _ in load_manifest(arch)["entries"]}


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """key -> shape of a torch module's state_dict."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights with realistic scales, in place.

    Convs: N(0, 2 / fan_in) (He); Linear: N(0, 1 / fan_in); norm layers: weight U(0.5, 1.5)
    (U(0.1, 0.4) for the last BN of a residual branch, ``bn3``, so that 30+ residual additions
    keep activations O(1)), bias U(-0.2, 0.2); BN running_mean U(-0.2, 0.2), running_var
    U(0.5, 1.5). Conv/Linear biases U(-0.1, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                gain = 2.0 if isinstance(m, nn.Conv2d) else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * np.sqrt(gain / fan_in))
                if m.bias is not None:
                    uniform(m.bias, -0.1, 0.1)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.InstanceNorm2d):
                if m.weight is not None:
                    if name.split(".")[-1] == "bn3":
                        uniform(m.weight, 0.1, 0.4)
                    else:
                        uniform(m.weight, 0.5, 1.5)
                    uniform(m.bias, -0.2, 0.2)
                if getattr(m, "running_mean", None) is not None:
                    uniform(m.running_mean, -0.2, 0.2)
                    uniform(m.running_var, 0.5, 1.5)
    return module


def structured_inputs(batch: int, size: int, seed: int) -> np.ndarray:
    """(batch, size, size, 3) float32 NHWC images that differ per sample in spatial structure.

    Each sample is white noise low-pass filtered with its own Gaussian width (sigma 0.7, 2.0,
    4.5, ... pixels), then standardised to mean 0, std 1 (per sample). Use ``nhwc_to_nchw`` for
    the torch side.
    """
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    f2 = freq[:, None] ** 2 + freq[None, :] ** 2
    out = np.empty((batch, size, size, 3), np.float32)
    for i in range(batch):
        sigma = 0.7 * 2.5 ** i if i < 4 else 0.7 + i
        noise = rng.standard_normal((3, size, size))
        filt = np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * f2)
        img = np.real(np.fft.ifft2(np.fft.fft2(noise) * filt)).transpose(1, 2, 0)
        out[i] = (img - img.mean()) / img.std()
    return out


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM pooling of an NCHW map: (B, C, H, W) -> (B, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class RetrievalHead(nn.Module):
    """The reference whole model: base -> GeM(p=3, eps=1e-6) -> fcneck -> fcneck_bn.

    State keys: ``base.*``, ``fcneck.weight``, ``fcneck_bn.*`` and, with ``num_classes``, the
    ArcFace ``classifier.weight`` (num_classes, embed_dim) (not used in ``forward``).
    ``forward`` returns the neck BN output (not L2-normalised).
    """

    def __init__(self, base: nn.Module, in_features: int = 2048, embed_dim: int = 512,
                 num_classes: int | None = None):
        super().__init__()
        self.base = base
        self.fcneck = nn.Linear(in_features, embed_dim, bias=False)
        self.fcneck_bn = nn.BatchNorm1d(embed_dim)
        if num_classes is not None:
            self.classifier = nn.Module()
            self.classifier.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
            nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcneck_bn(self.fcneck(gem(self.base(x))))


def numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as numpy arrays (what lmr_jax.convert.mapping.load_torch_state takes)."""
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(||a - b|| / ||b||, max|a - b| / max|b|) with b the reference."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (float(np.linalg.norm(a - b) / np.linalg.norm(b)),
            float(np.max(np.abs(a - b)) / np.max(np.abs(b))))


def torch_forward(ref: RetrievalHead, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Stage outputs (NHWC) and embedding of a torch whole model on NHWC inputs."""
    with torch.no_grad():
        stages = ref.base.stages(nhwc_to_nchw(x))
        emb = ref.fcneck_bn(ref.fcneck(gem(stages[-1])))
    return [nchw_to_nhwc(s) for s in stages], emb.numpy()
