"""End-to-end demo on a synthetic GLDv2-format dataset: what `make demo` runs.

  python scripts/demo.py --workdir runs/demo

Runs the project's own command-line tools in order, as a user would on GLDv2:

  1. scripts/make_demo_data.py   synthetic dataset in the official GLDv2 layout (data/demo)
  2. scripts/prepare_gldv2.py    training lists, validation set, image store (data/demo_prepared)
  3. the untrained model         saved as a model checkpoint (the starting point of training)
  4. scripts/eval.py             mAP@100 of the untrained model
  5. scripts/train.py            configs/demo.py: all stages (clean -> c2x -> full -> all)
  6. scripts/eval.py             mAP@100 of the trained model, without and with re-ranking
                                 (submission.csv, report.json/.md and results.png)

Every step is resumable: a re-run skips what is complete and continues what was interrupted.
It ends with a table of mAP@100 and exits non-zero with the failing step's command if any step
fails, or if training did not improve on the untrained model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = "configs/demo.py"
EVAL_CONFIG = "configs/eval/demo.py"


class StepFailed(RuntimeError):
    """A demo step's command exited non-zero."""


def banner(index: int, total: int, title: str) -> None:
    print(f"\n=== [{index}/{total}] {title}", flush=True)


def run(cmd: list[str]) -> None:
    """Runs one of the project's scripts with this Python, streaming its output."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if subprocess.run([sys.executable, *cmd], cwd=REPO, env=env).returncode != 0:
        raise StepFailed("python " + " ".join(shlex.quote(c) for c in cmd))


def train_config():
    """The demo training config (``get_config()`` of configs/demo.py)."""
    spec = importlib.util.spec_from_file_location("demo_config", REPO / TRAIN_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def last_stage_export(train_workdir: str) -> str:
    """The export folder of the demo config's last stage."""
    from lmr_jax.train import trainer

    return trainer.export_dir(train_workdir, trainer.parse_stages(train_config())[-1])


def save_untrained(path: str) -> None:
    """Writes the demo model at its initialisation (the trainer's stage-1 starting point)."""
    if (REPO / path).is_dir():
        print(f"{path} exists: kept")
        return
    from flax import nnx

    from lmr_jax import models
    from lmr_jax.models.saved_model import save_model
    from lmr_jax.train import trainer

    config = train_config()
    model_config = trainer.model_config(config)
    model = models.create(model_config, rngs=nnx.Rngs(config.seed))
    save_model(str(REPO / path), model, config=model_config,
               metadata={"source": f"untrained initialisation (seed {config.seed})"})
    print(f"wrote {path}")


def read_report(eval_dir: str) -> dict[str, float]:
    """mAP@100 per re-ranking method from an eval.py report."""
    report = json.loads((REPO / eval_dir / "report.json").read_text())
    return {m: r["metrics"]["map@100"] for m, r in report["methods"].items()}


_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where runs and reports go.")
_DATA = flags.DEFINE_string("data", "data/demo", "Synthetic GLDv2 folder.")
_PREPARED = flags.DEFINE_string("prepared", "data/demo_prepared", "Prepared data folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    wd, data, prepared = _WORKDIR.value, _DATA.value, _PREPARED.value
    train_dir, untrained = f"{wd}/train", f"{wd}/untrained"
    data_flags = [f"--config.data.dir={prepared}", f"--config.init_checkpoint={untrained}"]
    total, t_start = 6, time.time()
    try:
        banner(1, total, "synthetic GLDv2-format dataset")
        if (REPO / data / "synthetic_manifest.json").exists():
            print(f"{data} is complete: kept")
        else:
            run(["scripts/make_demo_data.py", "--out", data, "--seed", str(_SEED.value)])

        banner(2, total, "preparation: lists, validation set, image store")
        run(["scripts/prepare_gldv2.py", "--gldv2", data, "--out", prepared])

        banner(3, total, "the untrained model")
        save_untrained(untrained)

        banner(4, total, "evaluation of the untrained model")
        eval_flags = [f"--config.validation={prepared}/validation.npz",
                      f"--config.images={prepared}/store",
                      f"--config.reference.list={prepared}/lists/full.npz"]
        run(["scripts/eval.py", f"--config={EVAL_CONFIG}:{untrained}",
             f"--config.workdir={wd}/eval_untrained", "--config.rerank=off",
             "--config.submission_rerank=off", *eval_flags])

        banner(5, total, f"training ({TRAIN_CONFIG}, every stage)")
        run(["scripts/train.py", f"--config={TRAIN_CONFIG}", f"--workdir={train_dir}",
             *data_flags])

        banner(6, total, "evaluation of the trained model, with and without re-ranking")
        trained = last_stage_export(train_dir)
        run(["scripts/eval.py", f"--config={EVAL_CONFIG}:{trained}",
             f"--config.workdir={wd}/eval", *eval_flags])
    except StepFailed as e:
        print(f"\ndemo FAILED at this step; fix the error above and re-run (finished work is "
              f"kept):\n  {e}", file=sys.stderr)
        return 1

    before = read_report(f"{wd}/eval_untrained")["off"]
    after = read_report(f"{wd}/eval")
    rows = [("untrained model", before),
            ("trained model", after["off"]),
            ("trained + Landmark-Country re-ranking", after["landmark_country"])]
    if "kreciprocal" in after:
        rows.append(("trained + k-reciprocal re-ranking", after["kreciprocal"]))
    print(f"\n=== demo results (synthetic validation queries, {time.time() - t_start:.0f} s)")
    print(f"{'model':<42}{'mAP@100':>9}")
    for name, value in rows:
        print(f"{name:<42}{100 * value:>8.2f}%")
    print(f"\nsubmission: {wd}/eval/submission.csv   report: {wd}/eval/report.md   "
          f"picture: {wd}/eval/results.png")
    if after["off"] <= before:
        print("demo FAILED: the trained model is not better than the untrained one",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
