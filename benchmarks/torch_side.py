"""The PyTorch side of the throughput benchmarks: the reference model, its training step, its
forward.

The model is the independent PyTorch reference of the tests (:mod:`tests.torch_reference`:
backbone + GeM + neck of the same architecture as the lmr_jax model), trained here with the
same ArcFace head (scale 30, margin 0.3, easy-margin off) and SGD with momentum as the lmr_jax
step. Runs on CUDA when available, else CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.timing import GIB, images_per_second, median_seconds, peak_rss_gib
from tests.torch_reference import common
from tests.torch_reference import resnet as torch_resnet
from tests.torch_reference.resnest import TorchResNeSt

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_model(arch: str) -> torch.nn.Module:
    """The PyTorch reference whole model (backbone + GeM + neck) of ``arch``."""
    base = TorchResNeSt(arch) if arch.startswith("resnest") else getattr(torch_resnet, arch)()
    return common.RetrievalHead(base)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def arcface_sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     num_classes: int, dtype: str, scale: float = 30.0, margin: float = 0.3,
                     embed_dim: int = 512):
    """A closure running one ArcFace + SGD training step of ``model`` on the batch (x, y).

    ``dtype`` "bfloat16"/"float16" runs the model under ``torch.autocast`` (with a GradScaler for
    float16), "float32" without; the classifier runs in float32 on normalised embeddings.
    """
    device = x.device
    amp = _AMP_DTYPES.get(dtype)
    weight = torch.nn.Parameter(torch.empty(num_classes, embed_dim, device=device))
    torch.nn.init.xavier_uniform_(weight)
    cos_m, sin_m = np.cos(margin), np.sin(margin)
    th, mm = np.cos(np.pi - margin), np.sin(np.pi - margin) * margin
    opt = torch.optim.SGD([*model.parameters(), weight], lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            emb = model(x)
        cosine = F.linear(F.normalize(emb.float()), F.normalize(weight))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
        phi = cosine * cos_m - sine * sin_m
        phi = torch.where(cosine > th, phi, cosine - mm)
        onehot = F.one_hot(y, num_classes).float()
        loss = F.cross_entropy(scale * (onehot * phi + (1 - onehot) * cosine), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)

    return step


def torch_throughput(model: torch.nn.Module, *, mode: str, batch: int, size: int, dtype: str,
                     channels_last: bool, num_classes: int = 1000, steps: int = 10,
                     warmup: int = 3) -> dict[str, Any]:
    """Images/s of ``model`` trained by :func:`arcface_sgd_step` (``mode="train"``) or of its
    eval forward (``mode="embed"``) on a random batch of ``batch`` x 3 x ``size`` x ``size``.

    Returns: {"img_s", "step_s", "peak_gib", "device"}; peak memory is the CUDA peak allocated,
    or the process's peak RSS on CPU.
    """
    device = _device()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.arange(batch, device=device) % num_classes
    amp = _AMP_DTYPES.get(dtype)

    @torch.no_grad()
    def embed_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)
        _sync(device)

    if mode == "train":
        model.train()
        run = arcface_sgd_step(model, x, y, num_classes=num_classes, dtype=dtype)
    elif mode == "embed":
        model.eval()
        run = embed_step
    else:
        raise ValueError(f"mode must be 'train' or 'embed', not {mode!r}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(run, steps=steps, warmup=warmup)
    peak = (torch.cuda.max_memory_allocated() / GIB if device.type == "cuda"
            else peak_rss_gib())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"img_s": batch / seconds, "step_s": seconds, "peak_gib": peak,
            "device": f"{device.type}:{name} threads={torch.get_num_threads()}"}


def torch_forward_images_per_second(arch: str, batch: int, size: int,
                                    repeats: int) -> dict[str, Any]:
    """Eval-forward images/s of the reference model, channels_last, float32 and (on CUDA) under
    float16 / bfloat16 autocast: {"torch_device", "torch_<mode>_img_s", ...}."""
    device = _device()
    model = torch_model(arch).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    modes: dict[str, torch.dtype | None] = {"float32": None}
    if device.type == "cuda":
        modes.update({"float16_autocast": torch.float16, "bfloat16_autocast": torch.bfloat16})
    out: dict[str, Any] = {"torch_device": device.type}
    for name, amp in modes.items():
        def step(amp=amp) -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32,
                                                 enabled=amp is not None):
                model(x)
            _sync(device)
        out[f"torch_{name}_img_s"] = round(images_per_second(step, batch, repeats), 2)
    return out
