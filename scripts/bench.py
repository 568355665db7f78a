"""One command for the figures the project promises: prints a table, writes runs/bench/bench.json.

  python scripts/bench.py                       # se_resnet101_ibn_a, 384 px
  python scripts/bench.py --quick               # under 5 minutes on a 2-core CPU
  python scripts/bench.py --arch resnet50 --size 224 --batch 8 --dtype float32

Measures, each in its own process (so peak memory is that measurement's own, and JAX and
PyTorch never compete for threads):
  * training images/s: lmr_jax's jitted step vs the PyTorch reference model from
    tests/torch_reference (same architecture, size, batch; ArcFace + SGD on both sides);
  * embedding images/s: eval forward, same comparison;
  * input pipeline images/s per worker (decode + augment of GLDv2-like 800x600 JPEGs);
  * Landmark-Country re-ranking: vectorised vs a per-query loop, with an identical-ranking check.
JAX runs on whatever device it sees (CPU here, GPU where there is one); PyTorch on CUDA when
available. On GPU the PyTorch side runs channels_last under AMP autocast in the same dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def torch_model(arch: str):
    """The independent PyTorch reference whole model (backbone + GeM + neck) of ``arch``."""
    sys.path.insert(0, str(REPO / "tests"))
    from torch_reference import common
    from torch_reference import resnet as torch_resnet
    from torch_reference.resnest import TorchResNeSt

    base = TorchResNeSt(arch) if arch.startswith("resnest") else getattr(torch_resnet, arch)()
    return common.RetrievalHead(base)


def run_part(args: argparse.Namespace) -> dict:
    """One measurement, in this process."""
    from lmr_jax import bench

    common = dict(mode=args.mode, batch=args.batch, size=args.size, steps=args.steps,
                  warmup=args.warmup)
    if args.part == "jax":
        return bench.jax_throughput(args.arch, dtype=args.dtype, **common)
    if args.part == "torch":
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        cuda = torch.cuda.is_available()
        return bench.torch_throughput(torch_model(args.arch), dtype=args.dtype if cuda else
                                      "float32", channels_last=cuda, **common)
    if args.part == "pipeline":
        from lmr_jax.data import bench as data_bench
        from lmr_jax.synthetic.render import landmark_photo_jpegs

        jpegs = landmark_photo_jpegs(args.pipeline_images, width=800, height=600)
        wall, per_cpu_s = data_bench.pipeline_throughput(jpegs, args.size, num_workers=1,
                                                         batch_size=32)
        return {"img_s_per_worker": wall, "img_per_cpu_s": per_cpu_s, "images": len(jpegs),
                "peak_gb": bench.peak_rss_gb()}
    if args.part == "rerank":
        from lmr_jax.retrieval import bench as rerank_bench

        result = rerank_bench.bench_vs_loop(num_queries=args.rerank_queries,
                                            num_index=args.rerank_index,
                                            num_refs=args.rerank_refs)
        return dict(result, peak_gb=bench.peak_rss_gb())
    raise ValueError(args.part)


def spawn(part: str, mode: str, args: argparse.Namespace) -> dict:
    """Runs one part in a fresh process and returns its JSON result (or the error)."""
    cmd = [sys.executable, __file__, "--part", part, "--mode", mode, "--arch", args.arch,
           "--size", str(args.size), "--batch", str(args.batch), "--dtype", args.dtype,
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--pipeline-images", str(args.pipeline_images),
           "--rerank-queries", str(args.rerank_queries), "--rerank-index",
           str(args.rerank_index), "--rerank-refs", str(args.rerank_refs),
           "--torch-threads", str(args.torch_threads)]
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


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="se_resnet101_ibn_a", help="registered model name")
    p.add_argument("--size", type=int, default=384, help="input side in pixels")
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype (auto: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--quick", action="store_true",
                   help="resnet50 at 128 px, batch 4, 3 steps, small re-ranking: < 5 min on CPU")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: "
                   "train,embed,pipeline,rerank")
    p.add_argument("--out", default="runs/bench/bench.json")
    p.add_argument("--torch-threads", type=int, default=0, help="PyTorch CPU threads (0: its "
                   "default)")
    p.add_argument("--pipeline-images", type=int, default=200)
    p.add_argument("--rerank-queries", type=int, default=1129)
    p.add_argument("--rerank-index", type=int, default=20_000)
    p.add_argument("--rerank-refs", type=int, default=200_000)
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dtype == "auto":
        import jax

        args.dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    if args.part:
        print(json.dumps(run_part(args)))
        return 0
    if args.quick:
        args.arch, args.size, args.batch, args.steps, args.warmup = "resnet50", 128, 4, 3, 1
        args.pipeline_images, args.rerank_queries = 48, 100
        args.rerank_index, args.rerank_refs = 2_000, 20_000
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"arch": args.arch, "size": args.size, "batch": args.batch,
                     "dtype": args.dtype, "date": time.strftime("%Y-%m-%d"),
                     "command": " ".join(sys.argv)}
    for mode in ("train", "embed"):
        if mode not in skip:
            results[mode] = {"jax": spawn("jax", mode, args), "torch": spawn("torch", mode, args)}
    if "pipeline" not in skip:
        results["pipeline"] = spawn("pipeline", "", args)
    if "rerank" not in skip:
        results["rerank"] = spawn("rerank", "", args)
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))

    print(f"\n{args.arch} at {args.size} px, batch {args.batch}, {args.dtype}")
    print(f"{'measurement':<26}{'lmr_jax img/s':>14}{'PyTorch img/s':>14}{'ratio':>7}"
          f"{'peak GB jax/torch':>19}")
    for mode in ("train", "embed"):
        if mode in results:
            j, t = results[mode]["jax"], results[mode]["torch"]
            ratio = (j["img_s"] / t["img_s"]) if "img_s" in j and "img_s" in t else None
            print(f"{mode + 'ing' if mode == 'train' else 'embedding':<26}"
                  f"{fmt(j.get('img_s')):>14}{fmt(t.get('img_s')):>14}{fmt(ratio, '.2f'):>7}"
                  f"{fmt(j.get('peak_gb'), '.2f') + ' / ' + fmt(t.get('peak_gb'), '.2f'):>19}")
    if "pipeline" in results:
        pr = results["pipeline"]
        print(f"{'input pipeline /worker':<26}{fmt(pr.get('img_s_per_worker')):>14}")
    if "rerank" in results:
        rr = results["rerank"]
        print(f"re-ranking: {json.dumps({k: v for k, v in rr.items() if k != 'error'})}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
