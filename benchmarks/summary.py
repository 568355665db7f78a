"""One command for the figures the project promises: prints a table, writes runs/bench/bench.json.

    python -m benchmarks.summary                  # se_resnet101_ibn_a, 384 px
    python -m benchmarks.summary --quick          # under 5 minutes on a 2-core CPU (make bench)
    python -m benchmarks.summary --arch resnet50 --size 224 --batch 8 --dtype float32

Run from the repository root. Measures, each in its own process (so peak memory is that
measurement's own, and JAX and PyTorch never compete for threads):
  * training images/s: lmr_jax's jitted step vs the PyTorch reference model from
    tests/torch_reference (same architecture, size, batch; ArcFace + SGD on both sides);
  * embedding images/s: eval forward, same comparison;
  * input pipeline images/s per worker (decode + augment of 800x600 synthetic landmark JPEGs);
  * Landmark-Country re-ranking: vectorised vs a per-query loop, with an identical-ranking check.
JAX runs on whatever device it sees (CPU here, GPU where there is one); PyTorch on CUDA when
available. On GPU the PyTorch side runs channels_last under AMP autocast in the same dtype.
Memory figures are GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from benchmarks import throughput

REPO = Path(__file__).resolve().parent.parent
PARTS = ("train", "embed", "pipeline", "rerank")

throughput.define_flags()
_QUICK = flags.DEFINE_bool("quick", False, "resnet50 at 128 px, batch 4, 3 steps, small "
                           "re-ranking: under 5 minutes on a 2-core CPU.")
_SKIP = flags.DEFINE_list("skip", [], f"Parts to skip, of {','.join(PARTS)}.")
_OUT = flags.DEFINE_string("out", "runs/bench/bench.json", "Where the JSON results go.")
_PIPELINE_IMAGES = flags.DEFINE_integer("pipeline_images", 200, "JPEGs of the pipeline part.")
_RERANK_QUERIES = flags.DEFINE_integer("rerank_queries", 1129, "Queries of the re-ranking part.")
_RERANK_INDEX = flags.DEFINE_integer("rerank_index", 20_000, "Index of the re-ranking part.")
_RERANK_REFS = flags.DEFINE_integer("rerank_refs", 200_000, "Refs of the re-ranking part.")
_PART = flags.DEFINE_string("part", None, "Internal: run one part in this process (jax, torch, "
                            "pipeline or rerank) and print its JSON.")
_MODE = flags.DEFINE_string("mode", "", "Internal: train or embed, with --part jax|torch.")

_FORWARDED = ("arch", "size", "batch", "dtype", "steps", "warmup", "torch_threads",
              "pipeline_images", "rerank_queries", "rerank_index", "rerank_refs")


def run_part(part: str, mode: str) -> dict:
    """One measurement, in this process."""
    f = flags.FLAGS
    from benchmarks.timing import peak_rss_gib

    if part in ("jax", "torch"):
        return throughput.measure(part, mode, arch=f.arch, batch=f.batch, size=f.size,
                                  dtype=f.dtype, steps=f.steps, warmup=f.warmup,
                                  torch_threads=f.torch_threads)
    if part == "pipeline":
        from benchmarks import input_pipeline
        from lmr_jax.synthetic.render import landmark_photo_jpegs

        jpegs = landmark_photo_jpegs(f.pipeline_images, width=800, height=600)
        wall, per_cpu_s = input_pipeline.pipeline_throughput(jpegs, f.size, num_workers=1,
                                                             batch_size=32)
        return {"img_s_per_worker": wall, "img_per_cpu_s": per_cpu_s, "images": len(jpegs),
                "peak_gib": peak_rss_gib()}
    if part == "rerank":
        from benchmarks import rerank

        result = rerank.bench_vs_loop(num_queries=f.rerank_queries, num_index=f.rerank_index,
                                      num_refs=f.rerank_refs)
        return dict(result, peak_gib=peak_rss_gib())
    raise app.UsageError(f"--part must be jax, torch, pipeline or rerank, not {part!r}")


def spawn(part: str, mode: str = "") -> dict:
    """Runs one part in a fresh process and returns its JSON result (or the error)."""
    f = flags.FLAGS
    cmd = [sys.executable, "-m", "benchmarks.summary", f"--part={part}", f"--mode={mode}",
           *(f"--{name}={f[name].value}" for name in _FORWARDED)]
    label = f"{part} {mode}".strip()
    print(f"... {label}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"    FAILED ({label}): " + " | ".join(tail), flush=True)
        return {"error": tail}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if _PART.value:
        print(json.dumps(run_part(_PART.value, _MODE.value)))
        return
    unknown = set(_SKIP.value) - set(PARTS)
    if unknown:
        raise app.UsageError(f"--skip: unknown parts {sorted(unknown)}; parts are {PARTS}")
    if f.dtype == "auto":
        import jax

        f.dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    if _QUICK.value:
        f.arch, f.size, f.batch, f.steps, f.warmup = "resnet50", 128, 4, 3, 1
        f.pipeline_images, f.rerank_queries = 48, 100
        f.rerank_index, f.rerank_refs = 2_000, 20_000
    skip = set(_SKIP.value)
    results: dict = {"arch": f.arch, "size": f.size, "batch": f.batch, "dtype": f.dtype,
                     "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    for mode in ("train", "embed"):
        if mode not in skip:
            results[mode] = {"jax": spawn("jax", mode), "torch": spawn("torch", mode)}
    if "pipeline" not in skip:
        results["pipeline"] = spawn("pipeline")
    if "rerank" not in skip:
        results["rerank"] = spawn("rerank")
    out = REPO / _OUT.value
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))

    print(f"\n{f.arch} at {f.size} px, batch {f.batch}, {f.dtype}")
    print(f"{'measurement':<26}{'lmr_jax img/s':>14}{'PyTorch img/s':>14}{'ratio':>7}"
          f"{'peak GiB jax/torch':>20}")
    for mode in ("train", "embed"):
        if mode in results:
            j, t = results[mode]["jax"], results[mode]["torch"]
            ratio = (j["img_s"] / t["img_s"]) if "img_s" in j and "img_s" in t else None
            peaks = _fmt(j.get("peak_gib"), ".2f") + " / " + _fmt(t.get("peak_gib"), ".2f")
            print(f"{mode + 'ing' if mode == 'train' else 'embedding':<26}"
                  f"{_fmt(j.get('img_s')):>14}{_fmt(t.get('img_s')):>14}"
                  f"{_fmt(ratio, '.2f'):>7}{peaks:>20}")
    if "pipeline" in results:
        pr = results["pipeline"]
        print(f"{'input pipeline /worker':<26}{_fmt(pr.get('img_s_per_worker')):>14}")
    if "rerank" in results:
        rr = results["rerank"]
        print(f"re-ranking: {json.dumps({k: v for k, v in rr.items() if k != 'error'})}")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
