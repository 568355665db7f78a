"""Training and embedding throughput of lmr_jax against a PyTorch model of the same architecture.

Both sides run the same work: the whole retrieval model (backbone, GeM, neck) plus an ArcFace
classifier, SGD with momentum, one step per batch (training), or the model's forward pass in
evaluation mode (embedding). Inputs are random images already on the device, so only the model
is timed. Each figure is the median over timed steps after warm-up steps (compilation, autotuning
and allocator warm-up stay out of the numbers); peak memory is the device's peak (GPU) or the
process's peak RSS (CPU).

The PyTorch model is passed in by the caller (scripts/bench.py builds the independent reference
from tests/torch_reference), so this module needs torch only when that side is measured.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TimedFn = Callable[[], Any]


def median_seconds(fn: TimedFn, *, steps: int, warmup: int) -> float:
    """Median wall-clock seconds of ``fn()``, which must block until its work is done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _jax_peak_gb(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use", 0) / 1e9


def jax_throughput(arch: str, *, mode: str, batch: int, size: int, dtype: str,
                   num_classes: int = 1000, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Images/s of the jitted lmr_jax training step (``mode="train"``) or embedding forward
    (``mode="embed"``) on all local devices, data-parallel, batch ``batch`` of size x size.

    Returns: {"img_s", "step_s", "peak_gb", "device", "compile_s"}.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax import models
    from lmr_jax.models.heads import CosineClassifier
    from lmr_jax.train import distributed, losses, optim
    from lmr_jax.train.state import TrainModule, create_train_state
    from lmr_jax.train.step import make_embed_fn, make_train_step

    compute = jnp.dtype(dtype)
    rngs = nnx.Rngs(0)
    module = TrainModule(models.create(arch, dtype=compute, rngs=rngs),
                         CosineClassifier(512, num_classes, rngs=rngs))
    mesh = distributed.make_mesh()
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    labels = np.arange(batch, dtype=np.int32) % num_classes
    batch_arrays = distributed.global_batch({"image": images.astype(compute), "label": labels},
                                            mesh)
    if mode == "train":
        module.train()
        tx = optim.make_optimizer(steps_per_epoch=1000, base_lr=0.01, epochs=10, warmup_epochs=0,
                                  weight_decay=5e-4, weight_decay_bias=5e-4)
        graphdef, state = create_train_state(module, tx)
        state = distributed.replicate(state, mesh)
        sharding = jax.tree.map(lambda x: x.sharding, state)
        step = make_train_step(graphdef, losses.make_loss("arcface"), tx, mesh,
                               state_sharding=sharding, compute_dtype=compute)
        holder = {"state": state}

        def run():
            holder["state"], metrics = step(holder["state"], batch_arrays)
            jax.block_until_ready(metrics["loss"])
    elif mode == "embed":
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        params, rest = distributed.replicate((params, rest), mesh)
        embed = make_embed_fn(graphdef, mesh, compute)

        def run():
            jax.block_until_ready(embed(params, rest, batch_arrays["image"]))
    else:
        raise ValueError(f"mode must be 'train' or 'embed', not {mode!r}")
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    seconds = median_seconds(run, steps=steps, warmup=warmup)
    device = jax.devices()[0]
    peak = _jax_peak_gb(device)
    return {"img_s": batch / seconds, "step_s": seconds, "compile_s": compile_s,
            "peak_gb": peak if peak is not None else peak_rss_gb(),
            "device": f"{device.platform}:{device.device_kind} x{len(jax.devices())}"}


def torch_throughput(model, *, mode: str, batch: int, size: int, dtype: str,
                     channels_last: bool, num_classes: int = 1000, steps: int = 10,
                     warmup: int = 3) -> dict[str, Any]:
    """Images/s of a PyTorch retrieval model (images -> 512-d embedding) trained with an ArcFace
    head and SGD (``mode="train"``), or of its eval forward (``mode="embed"``), on CUDA when
    available, else CPU. ``dtype`` "bfloat16"/"float16" runs under ``torch.autocast`` (with a
    GradScaler for float16, as the reference trains), "float32" without.

    Returns: {"img_s", "step_s", "peak_gb", "device"}.
    """
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.arange(batch, device=device) % num_classes
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    weight = torch.nn.Parameter(torch.empty(num_classes, 512, device=device))
    torch.nn.init.xavier_uniform_(weight)
    scale, margin = 30.0, 0.3
    cos_m, sin_m = np.cos(margin), np.sin(margin)
    th, mm = np.cos(np.pi - margin), np.sin(np.pi - margin) * margin
    opt = torch.optim.SGD([*model.parameters(), weight], lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
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
        sync()

    @torch.no_grad()
    def embed_step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)
        sync()

    if mode == "train":
        model.train()
        run = train_step
    elif mode == "embed":
        model.eval()
        run = embed_step
    else:
        raise ValueError(f"mode must be 'train' or 'embed', not {mode!r}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(run, steps=steps, warmup=warmup)
    peak = (torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda"
            else peak_rss_gb())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"img_s": batch / seconds, "step_s": seconds, "peak_gb": peak,
            "device": f"{device.type}:{name} threads={torch.get_num_threads()}"}
