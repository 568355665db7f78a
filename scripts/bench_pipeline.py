"""Training input-pipeline throughput benchmark; prints markdown tables for docs/benchmarks.md.

Usage: python scripts/bench_pipeline.py [--quick] [--sizes 384 512] [--images 200]
"""

import argparse
import platform

from lmr_jax.data.bench import run_benchmark, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 images, one repeat")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 512])
    parser.add_argument("--images", type=int, default=200, help="synthetic JPEGs per set")
    args = parser.parse_args()
    results = run_benchmark(sizes=tuple(args.sizes), num_images=args.images, quick=args.quick)
    print(f"machine: {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}")
    print(to_markdown(results))


if __name__ == "__main__":
    main()
