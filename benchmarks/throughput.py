"""Training and embedding throughput of lmr_jax against a PyTorch model of the same architecture.

Both sides run the same work: the whole retrieval model (backbone, GeM, neck) plus an ArcFace
classifier, SGD with momentum, one step per batch (training), or the model's forward pass in
evaluation mode (embedding). Inputs are random images already on the device, so only the model
is timed. Each figure is the median over timed steps after warm-up steps (compilation,
autotuning and allocator warm-up stay out of the numbers); peak memory (GiB) is the device's
peak (GPU) or the process's peak RSS (CPU). The PyTorch side is :mod:`benchmarks.torch_side`.

One measurement per process, printed as one JSON object::

    python -m benchmarks.throughput --side jax --mode train --arch resnet50 --size 224 --batch 8

:mod:`benchmarks.summary` runs both sides and both modes, each in its own process.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks.timing import jax_device_peak_gib, median_seconds, peak_rss_gib


def jax_throughput(arch: str, *, mode: str, batch: int, size: int, dtype: str,
                   num_classes: int = 1000, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Images/s of the jitted lmr_jax training step (``mode="train"``) or embedding forward
    (``mode="embed"``) on all local devices, data-parallel, batch ``batch`` of size x size.

    Returns: {"img_s", "step_s", "peak_gib", "device", "compile_s"}.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lmr_jax import models
    from lmr_jax.models.heads import CosineClassifier
    from lmr_jax.retrieval.embedding import make_embed_fn
    from lmr_jax.train import distributed, losses, optim
    from lmr_jax.train.state import TrainModule, create_train_state
    from lmr_jax.train.step import make_train_step

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
        graphdef, initial_state = create_train_state(module, tx)
        initial_state = distributed.replicate(initial_state, mesh)
        sharding = jax.tree.map(lambda x: x.sharding, initial_state)
        step = make_train_step(graphdef, losses.LOSSES.build("arcface"), tx, mesh,
                               state_sharding=sharding, compute_dtype=compute)
        states = [initial_state]  # the step donates its input state: keep only the newest

        def run():
            new_state, metrics = step(states.pop(), batch_arrays)
            states.append(new_state)
            jax.block_until_ready(metrics["loss"])
    elif mode == "embed":
        embed = make_embed_fn(module.model, mesh, compute_dtype=compute)

        def run():
            jax.block_until_ready(embed(batch_arrays["image"]))
    else:
        raise ValueError(f"mode must be 'train' or 'embed', not {mode!r}")
    compile_s = median_seconds(run, steps=1, warmup=0)
    seconds = median_seconds(run, steps=steps, warmup=warmup)
    device = jax.devices()[0]
    peak = jax_device_peak_gib(device)
    return {"img_s": batch / seconds, "step_s": seconds, "compile_s": compile_s,
            "peak_gib": peak if peak is not None else peak_rss_gib(),
            "device": f"{device.platform}:{device.device_kind} x{len(jax.devices())}"}


def measure(side: str, mode: str, *, arch: str, batch: int, size: int, dtype: str,
            steps: int, warmup: int, torch_threads: int = 0) -> dict[str, Any]:
    """One measurement of ``side`` ("jax" or "torch") in this process.

    ``dtype`` "auto" is bfloat16 on an accelerator, float32 on CPU; the PyTorch side runs
    channels_last under autocast on CUDA, float32 on CPU.
    """
    if dtype == "auto":
        import jax

        dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    common = dict(mode=mode, batch=batch, size=size, steps=steps, warmup=warmup)
    if side == "jax":
        return jax_throughput(arch, dtype=dtype, **common)
    if side == "torch":
        import torch

        from benchmarks import torch_side

        if torch_threads:
            torch.set_num_threads(torch_threads)
        cuda = torch.cuda.is_available()
        return torch_side.torch_throughput(torch_side.torch_model(arch),
                                           dtype=dtype if cuda else "float32",
                                           channels_last=cuda, **common)
    raise ValueError(f"side must be 'jax' or 'torch', not {side!r}")


def define_flags() -> None:
    """The model flags shared with :mod:`benchmarks.summary`."""
    flags.DEFINE_string("arch", "se_resnet101_ibn_a", "Registered backbone name.")
    flags.DEFINE_integer("size", 384, "Input side in pixels.")
    flags.DEFINE_integer("batch", 8, "Global batch.")
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16", "float16"],
                      "Compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU).")
    flags.DEFINE_integer("steps", 10, "Timed steps (median).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
    flags.DEFINE_integer("torch_threads", 0, "PyTorch CPU threads (0: its default).")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    print(json.dumps(measure(f.side, f.mode, arch=f.arch, batch=f.batch, size=f.size,
                             dtype=f.dtype, steps=f.steps, warmup=f.warmup,
                             torch_threads=f.torch_threads)))


if __name__ == "__main__":
    define_flags()
    flags.DEFINE_enum("side", "jax", ["jax", "torch"], "Which implementation to time.")
    flags.DEFINE_enum("mode", "train", ["train", "embed"], "Training step or eval forward.")
    app.run(main)
