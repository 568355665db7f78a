"""Multi-device and multi-host set-up: process initialisation, the data mesh, global arrays.

One mesh axis ``data`` spans every device of every process. Each process feeds its own shard
of the global batch (``global_batch / process_count`` rows) and
:func:`global_batch` assembles the global array with
``jax.make_array_from_process_local_data``. The state is replicated on every device.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_ENV_COORDINATOR = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> None:
    """Starts multi-process JAX when asked to, from arguments or the environment.

    With ``coordinator_address`` (or ``JAX_COORDINATOR_ADDRESS`` set, or a cluster JAX detects
    by itself: SLURM, Open MPI, Kubernetes, Cloud TPU with ``JAX_NUM_PROCESSES``) calls
    ``jax.distributed.initialize``; otherwise does nothing (single process). On CPU the
    cross-process collectives use ``cpu_collectives`` (gloo).

    Args:
      coordinator_address: ``host:port`` of process 0.
      num_processes: number of processes.
      process_id: this process's index in [0, num_processes).
    """
    env_addr = next((os.environ[k] for k in _ENV_COORDINATOR if os.environ.get(k)), None)
    addr = coordinator_address or env_addr
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    cluster = any(os.environ.get(k) for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))
    if addr is None and not cluster:
        if num_processes not in (None, 1):
            raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                             "(--coordinator_address or JAX_COORDINATOR_ADDRESS)")
        return
    # Only used by the CPU backend (harmless on GPU/TPU, whose collectives are NCCL/ICI).
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=addr, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Rows this process feeds: ``global_batch / process_count``, checked for divisibility."""
    n_dev = mesh.devices.size
    n_proc = len({d.process_index for d in mesh.devices.flat})
    if global_batch % n_dev:
        raise ValueError(f"global batch {global_batch} is not divisible by the {n_dev} devices; "
                         f"choose a multiple of {n_dev}")
    return global_batch // n_proc


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf (host or device array) fully replicated on ``mesh``."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-process batch shards into global arrays sharded along ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def process_info() -> tuple[int, int]:
    """(process_index, process_count)."""
    return jax.process_index(), jax.process_count()
