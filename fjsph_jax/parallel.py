"""Every sharding rule of the project, in one place.

The training step is one `jax.jit` over a 1-D device mesh with axis ``data``:

* batches are split along their leading axis over ``data`` (``P('data')``);
* model parameters and optimiser state are replicated (``P()``);
* the code bank rows (``[N, K]`` arrays over the training set) are split along N over
  ``data`` when N divides evenly, so bank memory per device is ``N K / D``.

XLA inserts the collectives (the all-gather the global-batch contrastive loss needs,
the gradient all-reduce). On several hosts each process feeds only its slice of the
global batch and :func:`global_batch` assembles the global array.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
    """Starts JAX's multi-controller runtime when launched on several hosts.

    Triggered by the environment a cluster launcher sets (``JAX_COORDINATOR_ADDRESS``,
    or SLURM / Open MPI / TPU pod variables that ``jax.distributed.initialize`` detects
    itself). Must run before any other JAX call. Returns whether it initialised.
    """
    cluster_vars = (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
    )
    if not any(os.environ.get(v) for v in cluster_vars):
        return False
    jax.distributed.initialize()
    logging.info(
        "jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count()
    )
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: got an empty device list")
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding for parameters, optimiser state and scalars: a full copy everywhere."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for a global batch: leading axis split over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def rows_sharding(mesh: Mesh, num_rows: int) -> NamedSharding:
    """Sharding for ``[N, ...]`` banks: rows over ``data`` when ``N % devices == 0``.

    Otherwise the bank is replicated (and a warning logged): correct, only larger.
    """
    size = mesh.shape[DATA_AXIS]
    if num_rows % size == 0:
        return NamedSharding(mesh, P(DATA_AXIS))
    logging.warning(
        "bank of %d rows does not split over %d devices: replicating it", num_rows, size
    )
    return replicated(mesh)


def num_data_shards(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    """Raises unless the global batch splits evenly over devices and hosts."""
    devices = num_data_shards(mesh)
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"config.train.global_batch_size={global_batch_size} must be a positive "
            f"multiple of the device count {devices}"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"config.train.global_batch_size={global_batch_size} must be a multiple of the "
            f"process count {jax.process_count()}"
        )


def host_slice(global_batch_size: int) -> slice:
    """The rows of each global batch that this process loads (contiguous, equal size)."""
    per_host = global_batch_size // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy arrays (this process's rows) -> global arrays split over ``data``."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def map_batches(fn, source, rows: np.ndarray, *, batch_size: int, mesh: Mesh,
                prefetch: int = 2) -> Any:
    """``fn(global_batch)`` over dataset ``rows`` of ``source``, gathered back to numpy.

    ``source`` is a mapping of ``[N, ...]`` arrays or a row loader (``load(rows) -> dict``,
    :mod:`fjsph_jax.data.loaders`); loaders run ``prefetch`` batches ahead on threads.
    Rows go in batches of ``min(batch_size, len(rows))`` rounded up to a multiple of the
    device count; the last batch is padded by repeating its last row, so ``fn`` compiles
    for one shape. Each batch is split over ``data`` (every host loads its slice) and the
    outputs are all-gathered. Returns ``fn``'s output pytree with leaves ``[len(rows), ...]``.
    """
    from jax.experimental import multihost_utils

    from fjsph_jax.data.loaders import as_row_loader, prefetched

    load = as_row_loader(source)
    rows = np.asarray(rows)
    devices = num_data_shards(mesh)
    padded = -(-min(batch_size, max(len(rows), 1)) // devices) * devices
    starts = range(0, len(rows), padded)

    def host_rows(start: int) -> np.ndarray:
        chunk = rows[start : start + padded]
        take = np.concatenate([chunk, np.repeat(chunk[-1:], padded - len(chunk))])
        return take[host_slice(padded)]

    outputs = []
    local_batches = prefetched(load, (host_rows(s) for s in starts),
                               depth=0 if isinstance(source, Mapping) else prefetch)
    for start, local in zip(starts, local_batches):
        result = multihost_utils.process_allgather(fn(global_batch(local, mesh)), tiled=True)
        count = min(padded, len(rows) - start)
        outputs.append(jax.tree.map(lambda x, n=count: np.asarray(x)[:n], result))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` fully replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def put_rows(tree: Any, mesh: Mesh, num_rows: int) -> Any:
    """Places every ``[N, ...]`` leaf of ``tree`` with :func:`rows_sharding`."""
    return jax.device_put(tree, rows_sharding(mesh, num_rows))
