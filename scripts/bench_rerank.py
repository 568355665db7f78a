"""Landmark-Country re-ranking benchmark (see docs/benchmarks.md, section Re-ranking).

  python scripts/bench_rerank.py --mode loop          # vectorised vs per-query loop
  python scripts/bench_rerank.py --mode full --ref_path /big/refs_f16.npy   # GLDv2 scale
  python scripts/bench_rerank.py --mode ann   # exact vs IVF / HNSW search: time and recall

Prints one JSON object on the last line.
"""

from absl import app, flags, logging

_MODE = flags.DEFINE_enum("mode", "loop", ["loop", "full", "ann"], "Which benchmark.")
_QUERIES = flags.DEFINE_integer("queries", 1129, "Queries.")
_INDEX = flags.DEFINE_integer("index", None, "Index images (default 20,000 / 79,000).")
_REFS = flags.DEFINE_integer("refs", None, "Reference images (default 200,000 / 4,900,000).")
_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension.")
_LOOP_QUERIES = flags.DEFINE_integer("loop_queries", None, "Run the loop on the first N "
                                     "queries only and extrapolate (default: all).")
_REF_PATH = flags.DEFINE_string("ref_path", None, "float16 .npy for the full-scale refs "
                                "(written once if missing, ~5 GB).")


def main(argv):
    del argv
    import logging as py_logging

    from lmr_jax.retrieval import bench

    py_logging.getLogger("lmr_jax").setLevel(py_logging.INFO)
    logging.info("start")

    if _MODE.value == "loop":
        res = bench.bench_vs_loop(_QUERIES.value, _INDEX.value or 20_000, _REFS.value or 200_000,
                                  _DIM.value, loop_queries=_LOOP_QUERIES.value)
    elif _MODE.value == "ann":
        res = bench.bench_ann(_QUERIES.value, _REFS.value or 200_000, _DIM.value)
    else:
        if not _REF_PATH.value:
            raise app.UsageError("--mode full needs --ref_path")
        res = bench.bench_full_scale(_REF_PATH.value, _QUERIES.value, _INDEX.value or 79_000,
                                     _REFS.value or 4_900_000, _DIM.value)
    print(bench.main_json(res))


if __name__ == "__main__":
    app.run(main)
