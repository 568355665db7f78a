"""Timing and memory helpers shared by the benchmarks.

Memory is reported in GiB (2**30 bytes) everywhere: process peak RSS and device peak memory.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np

GIB = 2**30


def call_seconds(fn: Callable[[], Any], *, steps: int, warmup: int) -> list[float]:
    """Wall-clock seconds of each of ``steps`` calls of ``fn()`` after ``warmup`` untimed ones.

    ``fn`` must block until its work is done (``block_until_ready``, CUDA synchronise).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], Any], *, steps: int, warmup: int) -> float:
    """Median of :func:`call_seconds`."""
    return float(np.median(call_seconds(fn, steps=steps, warmup=warmup)))


def images_per_second(step: Callable[[], Any], batch: int, repeats: int = 10,
                      warmup: int = 2) -> float:
    """Median images/s of ``step()``, one batch of ``batch`` images, synchronised on return."""
    return batch / median_seconds(step, steps=repeats, warmup=warmup)


@contextlib.contextmanager
def timed(record: MutableMapping[str, float], key: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the ``with`` block to ``record[key]`` (rounded to 0.01)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record[key] = round(record.get(key, 0.0) + time.perf_counter() - t0, 2)


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def jax_device_peak_gib(device) -> float | None:
    """Peak bytes in use on a JAX device in GiB, or None where the device keeps no statistics."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use", 0) / GIB
