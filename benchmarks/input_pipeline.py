"""Training input-pipeline throughput on synthetic landmark JPEGs (images/s per worker process).

Measures, for each output size and each image set (original ~800x600 JPEGs and the same images
re-encoded with the long side capped at 640 px, like a ``--max_side 640`` store):

* ``transform``: decode + resize + augment (:class:`~lmr_jax.data.augment.TrainAugment`) of one
  image at a time in this process, one thread: the work of one worker process;
* ``pipeline``: the whole training pipeline (:func:`~lmr_jax.data.pipeline.make_train_iterator`,
  batches of 32, one read thread per worker) with 1 and 2 grain worker processes, images/s
  divided by the number of workers; includes batching and the shared-memory transfer.

Each is given per wall-clock second and per CPU second of the process(es) doing the work (worker
CPU time read from /proc, Linux only); on a machine shared with other jobs the CPU-second figure
is the stable one. Every figure is a median over repeats.
:func:`draft_effect` measures what JPEG draft decoding saves and changes on large originals.
The images are views of synthetic landmarks (:func:`lmr_jax.synthetic.render.landmark_photo_jpegs`).

Prints markdown tables for docs/benchmarks.md::

    python -m benchmarks.input_pipeline                 # about 3 minutes on 2 cores
    python -m benchmarks.input_pipeline --quick --sizes 384
"""

from __future__ import annotations

import io
import multiprocessing
import os
import platform
import statistics
import time
import types

import numpy as np
from absl import app, flags
from PIL import Image

from lmr_jax.data import augment, pipeline
from lmr_jax.synthetic.render import landmark_photo_jpegs


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cap_long_side(jpegs: list[bytes], max_side: int = 640, quality: int = 90) -> list[bytes]:
    """Re-encodes JPEGs whose long side exceeds ``max_side`` (PIL bilinear downscale)."""
    out = []
    for data in jpegs:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.BILINEAR)
        out.append(_jpeg(image, quality))
    return out


def _records(jpegs: list[bytes]) -> tuple[list[dict], types.SimpleNamespace]:
    n = len(jpegs)
    records = [{"image": data, "index": i} for i, data in enumerate(jpegs)]
    image_list = types.SimpleNamespace(labels=np.arange(n, dtype=np.int32) % 10,
                                       noisy=np.zeros(n, bool), continents=np.full(n, "Asia"))
    return records, image_list


def transform_throughput(jpegs: list[bytes], size: int, *, repeats: int = 3,
                         jpeg_draft: bool = False) -> tuple[float, float]:
    """Median images/s of decode + resize + augment, one image at a time, one thread.

    Returns (images per wall-clock second, images per CPU second of this process); the second
    is less sensitive to other jobs on a shared machine.
    """
    cfg = augment.default_augment_config(size)
    cfg.jpeg_draft = jpeg_draft
    transform = augment.TrainAugment(cfg)
    records, _ = _records(jpegs)
    rates, cpu_rates = [], []
    for r in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for i, record in enumerate(records):
            transform(record | {"label": 0}, np.random.default_rng([r, i]))
        rates.append(len(records) / (time.perf_counter() - start))
        cpu_rates.append(len(records) / (time.process_time() - cpu_start))
    return statistics.median(rates), statistics.median(cpu_rates)


def _workers_cpu_seconds() -> float:
    """User + system CPU seconds of this process's live child processes (Linux /proc)."""
    total = 0
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])           # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def pipeline_throughput(jpegs: list[bytes], size: int, *, num_workers: int, batch_size: int = 32,
                        batches_per_chunk: int = 4, chunks: int = 3) -> tuple[float, float]:
    """Median images/s per worker process of the training pipeline, after a warm-up.

    Runs the pipeline with ``num_workers`` worker processes (one read thread each), skips the
    first ``num_workers`` batches (worker start-up), then times ``chunks`` runs of
    ``batches_per_chunk`` batches.

    Returns (wall-clock images/s divided by ``num_workers``, images per CPU second of the
    worker processes), both medians over the chunks.
    """
    records, image_list = _records(jpegs)
    cfg = pipeline.default_train_config(size)
    cfg.global_batch_size = batch_size
    cfg.num_workers = num_workers
    cfg.read_threads = 1
    cfg.worker_buffer_size = 2
    rates, cpu_rates = [], []
    with pipeline.make_train_iterator(records, image_list, cfg, process_index=0,
                                      process_count=1, device_count=1) as it:
        for _ in range(num_workers):
            next(it)
        for _ in range(chunks):
            start, cpu_start = time.perf_counter(), _workers_cpu_seconds()
            for _ in range(batches_per_chunk):
                next(it)
            images = batches_per_chunk * batch_size
            rates.append(images / (time.perf_counter() - start) / num_workers)
            cpu_rates.append(images / (_workers_cpu_seconds() - cpu_start))
    return statistics.median(rates), statistics.median(cpu_rates)


def draft_effect(jpegs: list[bytes], size: int, *, repeats: int = 3) -> dict[str, float]:
    """Decode + resize time with and without PIL JPEG draft mode, and the pixel difference.

    Without draft: the OpenCV decode + resize of the reference; with draft: PIL's reduced-scale
    JPEG decode, then the same OpenCV resize.

    Returns full_ms and draft_ms (median per image) and mean_abs_diff / max_abs_diff of the
    resized uint8 images (grey levels).
    """
    times: dict[bool, list[float]] = {False: [], True: []}
    images: dict[bool, list[np.ndarray]] = {}
    for _ in range(repeats):
        for draft in (False, True):
            start = time.perf_counter()
            out = [augment.decode_resized(d, size, jpeg_draft=draft) for d in jpegs]
            times[draft].append((time.perf_counter() - start) / len(jpegs) * 1e3)
            images[draft] = out
    diffs = [np.abs(a.astype(np.int16) - b) for a, b in zip(images[False], images[True],
                                                          strict=True)]
    return {"full_ms": statistics.median(times[False]),
            "draft_ms": statistics.median(times[True]),
            "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
            "max_abs_diff": float(max(d.max() for d in diffs))}


def run_benchmark(*, sizes: tuple[int, ...] = (384, 512), num_images: int = 200,
                  quick: bool = False) -> dict[str, list[dict]]:
    """All measurements; ``quick`` uses 48 images, one repeat and one worker count.

    Returns {"throughput": rows of (images, resolution, kb, size, transform, transform_cpu,
    pipeline_1w, pipeline_1w_cpu, pipeline_2w, pipeline_2w_cpu), "draft": rows of (resolution,
    size, draft_effect results)}.
    """
    n = 48 if quick else num_images
    originals = landmark_photo_jpegs(n, width=800, height=600)
    capped = cap_long_side(originals, 640)
    repeats = 1 if quick else 3
    rows = []
    for name, jpegs in (("original", originals), ("max-side 640", capped)):
        w, h = Image.open(io.BytesIO(jpegs[0])).size
        kb = np.mean([len(d) for d in jpegs]) / 1024
        for size in sizes:
            wall, cpu = transform_throughput(jpegs, size, repeats=repeats)
            row = {"images": name, "resolution": f"{w}x{h}", "kb": kb, "size": size,
                   "transform": wall, "transform_cpu": cpu}
            for workers in (1,) if quick else (1, 2):
                row[f"pipeline_{workers}w"], row[f"pipeline_{workers}w_cpu"] = \
                    pipeline_throughput(jpegs, size, num_workers=workers, chunks=repeats)
            rows.append(row)
    draft_rows = []
    for w, h in ((1024, 768), (1600, 1200)):
        large = landmark_photo_jpegs(4 if quick else 12, width=w, height=h, seed=1)
        for size in sizes:
            draft_rows.append({"resolution": f"{w}x{h}", "size": size,
                               **draft_effect(large, size, repeats=repeats)})
    return {"throughput": rows, "draft": draft_rows}


def to_markdown(results: dict[str, list[dict]]) -> str:
    """Two markdown tables: throughput per worker, and the JPEG-draft effect."""
    lines = ["| images | resolution | JPEG KB | size | transform img/s (wall) | "
             "transform img/CPU-s | pipeline, 1 worker: img/s (wall) | img/worker-CPU-s | "
             "pipeline, 2 workers: img/s/worker (wall) | img/worker-CPU-s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        cells = [r["images"], r["resolution"], f"{r['kb']:.0f}", r["size"]]
        for key in ("transform", "transform_cpu", "pipeline_1w", "pipeline_1w_cpu",
                    "pipeline_2w", "pipeline_2w_cpu"):
            cells.append(f"{r[key]:.0f}" if key in r else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| source | size | full decode + resize ms | draft decode + resize ms | "
              "mean abs diff | max abs diff |", "|---|---|---|---|---|---|"]
    for r in results["draft"]:
        lines.append(f"| {r['resolution']} | {r['size']} | {r['full_ms']:.2f} | "
                     f"{r['draft_ms']:.2f} | {r['mean_abs_diff']:.2f} | "
                     f"{r['max_abs_diff']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    results = run_benchmark(sizes=tuple(f.sizes), num_images=f.images, quick=f.quick)
    print(f"machine: {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}")
    print(to_markdown(results))


if __name__ == "__main__":
    flags.DEFINE_bool("quick", False, "48 images, one repeat, one worker count.")
    flags.DEFINE_multi_integer("sizes", [384, 512], "Output sizes (repeat the flag).")
    flags.DEFINE_integer("images", 200, "Synthetic JPEGs per set.")
    app.run(main)
