"""Shared helpers of the retrieval benchmarks: device set-up, timing, machine description.

Import this module *before* anything that initialises JAX: :func:`setup_cpu_devices` must
run first so that the CPU backend exposes one device per core (the index shards its
database and the metrics shard their queries over those devices).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any


def setup_cpu_devices(count: int | None = None) -> int:
    """Asks JAX for ``count`` CPU devices (default: the number of cores); returns it."""
    import jax

    count = count or os.cpu_count() or 1
    jax.config.update("jax_num_cpu_devices", count)
    return count


def timed(function: Callable[[], Any], *, repeats: int) -> tuple[float, float, Any]:
    """``(best wall seconds, CPU seconds of that run, result)`` over ``repeats`` runs."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu, result


def machine() -> dict[str, Any]:
    """Cores, CPU model, load average and library versions, for the results table."""
    import jax
    import numpy

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"nproc": os.cpu_count(), "cpu": model, "jax": jax.__version__,
            "numpy": numpy.__version__, "jax_devices": len(jax.devices())}
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def row(name: str, wall: float, cpu: float) -> str:
    return f"  {name:44s} {wall:9.3f} s wall  {cpu:9.3f} s CPU"
