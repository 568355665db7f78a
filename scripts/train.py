"""Train a retrieval model in stages; re-running the same command resumes.

    python scripts/train.py --config configs/ser101ibn_512.py
    python scripts/train.py --config configs/ser101ibn_512.py --workdir runs/ser101ibn_512 \
        --config.stages=3,4 --config.stage3.base_lr=0.001

The workdir defaults to ``runs/<config file name>`` (printed at start).

Every configuration value can be overridden with ``--config.<path>=<value>``; an unknown key
is an error naming it. Multi-host: start one process per host with ``--coordinator_address
host0:port --num_processes N --process_id i`` (or the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; SLURM and Open MPI are
detected by JAX). See lmr_jax/train/trainer.py for what is written in the workdir.

Resuming (or re-running a finished stage) with settings that change the result (model, data,
optimiser, schedule, stages, loss, precision, seed) is an error listing the keys; pass
``--allow_config_change`` to continue anyway. Logging, checkpoint, evaluation and worker
settings may change freely.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from lmr_jax.train import distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, models); "
                                "default runs/<config file name>.")
_ALLOW_CHANGE = flags.DEFINE_bool("allow_config_change", False, "Resume although settings that "
                                   "change the result differ from the checkpoint's.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process training.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    path = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
    trainer.train(_CONFIG.value, workdir, allow_config_change=_ALLOW_CHANGE.value)


if __name__ == "__main__":
    app.run(main)
