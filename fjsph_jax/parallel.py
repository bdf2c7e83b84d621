"""Every sharding rule of the project, in one place.

The training step is one `jax.jit` over a device mesh with axis ``data``, or, with
``fsdp > 1`` (``config.train.fsdp``), a 2-D mesh ``('data', 'fsdp')`` of shape
``[D / fsdp, fsdp]`` over the D devices:

* batches are split along their leading axis over every batch axis (:func:`batch_axes`:
  ``P('data')``, or ``P(('data', 'fsdp'))``: B / D rows per device either way);
* model parameters and optimiser state are replicated (``P()``) on the 1-D mesh; on the
  2-D mesh each leaf is split over ``fsdp`` along its largest dimension that ``fsdp``
  divides (:func:`fsdp_spec`) and replicated over ``data``, so per-device parameter and
  optimiser memory is about ``1 / fsdp`` of the replicated one (XLA all-gathers a
  layer's weights where they are used and reduce-scatters their gradients);
* the code bank rows (``[N, K]`` arrays over the training set) are split along N over
  the batch axes when N divides evenly, so bank memory per device is ``N K / D``.

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
FSDP_AXIS = "fsdp"


CLUSTER_ENV_VARS = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> bool:
    """Starts JAX's multi-controller runtime when launched as several processes.

    Two ways in, both before any other JAX call:

    * explicit: ``coordinator_address`` (``host:port`` of process 0), ``num_processes``
      and ``process_id`` all given (``launch/train.py --coordinator_address=...
      --num_processes=... --process_id=...``). Cluster auto-detection is off, so the
      flags win over whatever Slurm / Open MPI variables the environment holds. A loopback
      coordinator (``127.0.0.1:port``, ``localhost:port``) binds to that address only.
    * detected: with none of them given, the environment a cluster launcher sets
      (``JAX_COORDINATOR_ADDRESS``, or the Slurm / Open MPI / TPU pod variables that
      ``jax.distributed.initialize`` detects itself) triggers JAX's own detection.

    CPU collectives across processes use gloo (``jax_cpu_collectives_implementation``;
    accelerators use their own: NCCL, ICI). JAX's preemption service starts with the
    runtime (``jax_enable_preemption_service``, on by default): a SIGTERM to any process
    becomes a step every process agrees on (:mod:`fjsph_jax.training.guards`).

    Returns whether it initialised (False: a single process, nothing to do).
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v not in (None, "") for v in explicit):
        missing = [name for name, v in zip(
            ("coordinator_address", "num_processes", "process_id"), explicit) if v in (None, "")]
        if missing:
            raise ValueError(
                "give --coordinator_address, --num_processes and --process_id together "
                f"(missing: {', '.join('--' + m for m in missing)}), or none of them to let "
                "JAX detect the cluster (TPU pod, Slurm, Open MPI)"
            )
        if not 0 <= int(process_id) < int(num_processes):
            raise ValueError(
                f"--process_id={process_id} must lie in [0, --num_processes={num_processes})"
            )
        host = coordinator_address.rsplit(":", 1)[0]
        bind = coordinator_address if host in ("127.0.0.1", "localhost", "[::1]") else None
        _use_gloo_on_cpu()
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=int(num_processes),
            process_id=int(process_id),
            cluster_detection_method="deactivate",
            initialization_timeout=initialization_timeout,
            coordinator_bind_address=bind,
        )
    elif any(os.environ.get(v) for v in CLUSTER_ENV_VARS):
        _use_gloo_on_cpu()
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
        return False
    logging.info(
        "jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count()
    )
    return True


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives of the CPU backend over gloo (unless set otherwise)."""
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):  # e.g. "mpi" on purpose
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_distributed() -> bool:
    """Whether this process runs under ``jax.distributed`` (any process count)."""
    from jax._src import distributed

    return distributed.global_state.client is not None


def make_mesh(devices: Sequence[jax.Device] | None = None, *, fsdp: int = 1) -> Mesh:
    """The training mesh over ``devices`` (default: every device of every host).

    ``fsdp == 1``: 1-D ``('data',)``. ``fsdp > 1``: 2-D ``('data', 'fsdp')`` of shape
    ``[len(devices) / fsdp, fsdp]`` (consecutive devices share an fsdp group, so on a
    multi-GPU host the parameter all-gathers stay on the fast intra-host links).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: got an empty device list")
    if not isinstance(fsdp, (int, np.integer)) or fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp!r} must be a positive divisor of the device count "
                         f"{len(devices)} (config.train.fsdp)")
    if fsdp == 1:
        return Mesh(np.array(devices), (DATA_AXIS,))
    return Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch's rows (and the bank's) are split over: ``('data',)`` or
    ``('data', 'fsdp')``."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.shape)


def batch_axis_name(mesh: Mesh) -> str | tuple[str, ...]:
    """The batch dimension's axis name for ``P``, ``shard_map`` and collectives:
    ``'data'``, or ``('data', 'fsdp')`` (their product) on an fsdp mesh."""
    axes = batch_axes(mesh)
    return axes[0] if len(axes) == 1 else axes


def _batch_spec(mesh: Mesh) -> P:
    return P(batch_axis_name(mesh))


def fsdp_size(mesh: Mesh) -> int:
    """The size of the mesh's ``fsdp`` axis (1 without one)."""
    return mesh.shape.get(FSDP_AXIS, 1)


def fsdp_spec(shape: Sequence[int], fsdp: int) -> P:
    """Where a parameter of ``shape`` is split on an fsdp mesh of ``fsdp`` devices.

    ``P`` with ``'fsdp'`` at the largest dimension that ``fsdp`` divides (the first of
    equal ones), e.g. ``[768, 3072] -> P(None, 'fsdp')``, ``[49408, 512] -> P('fsdp')``;
    ``P()`` (replicated) for scalars, for leaves with no such dimension and for
    ``fsdp == 1``. Each device then holds ``size / fsdp`` elements of a split leaf.
    """
    candidates = [(-n, i) for i, n in enumerate(shape) if fsdp > 1 and n % fsdp == 0]
    if not candidates:
        return P()
    dim = min(candidates)[1]
    return P(*([None] * dim + [FSDP_AXIS]))


def param_shardings(tree: Any, mesh: Mesh) -> Any:
    """A sharding per leaf of a parameter / optimiser-state tree (arrays or
    ``jax.ShapeDtypeStruct``): :func:`fsdp_spec` of its shape, replicated over ``data``.
    On a mesh without ``fsdp`` every leaf is replicated. Adam's moments have their
    parameter's shape, so they are split like it."""
    size = fsdp_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), size)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding for parameters, optimiser state and scalars: a full copy everywhere."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for a global batch: leading axis split over the batch axes (every device)."""
    return NamedSharding(mesh, _batch_spec(mesh))


def rows_sharding(mesh: Mesh, num_rows: int) -> NamedSharding:
    """Sharding for ``[N, ...]`` banks: rows over the batch axes when ``N % devices == 0``.

    Otherwise the bank is replicated (and a warning logged): correct, only larger. Arrays
    over the training set should not get here: pad them first (:func:`padded_num_rows`,
    :func:`pad_rows`; FJSPH's bank, label factors and cluster ids are padded so).
    """
    size = num_batch_shards(mesh)
    if num_rows % size == 0:
        return NamedSharding(mesh, _batch_spec(mesh))
    logging.warning(
        "bank of %d rows does not split over %d devices: replicating it (pad it to "
        "parallel.padded_num_rows(%d, mesh) = %d rows to split it)",
        num_rows, size, num_rows, padded_num_rows(num_rows, mesh),
    )
    return replicated(mesh)


def padded_num_rows(num_rows: int, mesh: Mesh | int) -> int:
    """``num_rows`` rounded up to a multiple of the device count (``mesh`` or a count).

    ``[N, ...]`` arrays over the training set are padded to this many rows, so that they
    always split over ``data`` (``N / devices`` rows per device, at most ``devices - 1``
    padding rows in all). Whoever pads masks the padding rows out of every result.
    """
    devices = mesh if isinstance(mesh, int) else num_batch_shards(mesh)
    if num_rows < 0 or devices < 1:
        raise ValueError(f"padded_num_rows: need num_rows >= 0 and devices >= 1, got "
                         f"{num_rows} and {devices}")
    return -(-num_rows // devices) * devices


def pad_rows(x, num_rows: int, *, axis: int = 0, value=0):
    """``x`` padded with ``value`` along ``axis`` to ``num_rows`` (numpy in, numpy out;
    jax in, jax out; works under ``jit``). Unchanged when it already has that many."""
    have = x.shape[axis]
    if have > num_rows:
        raise ValueError(f"pad_rows: axis {axis} has {have} rows, more than {num_rows}")
    if have == num_rows:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, num_rows - have)
    if isinstance(x, np.ndarray):
        return np.pad(x, widths, constant_values=value)
    import jax.numpy as jnp

    return jnp.pad(x, widths, constant_values=value)


def row_mask(num_valid: int, num_rows: int):
    """bool ``[num_rows]``: True on the first ``num_valid`` rows (the real ones). An iota
    comparison, so under ``jit`` it is computed where it is used, sharded like its use."""
    import jax.numpy as jnp

    return jnp.arange(num_rows) < num_valid


def num_data_shards(mesh: Mesh) -> int:
    """The size of the ``data`` axis (the device count on a 1-D mesh)."""
    return mesh.shape[DATA_AXIS]


def num_batch_shards(mesh: Mesh) -> int:
    """How many parts a batch splits into: the product of :func:`batch_axes`' sizes (every
    device of the mesh)."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    """Raises unless the global batch splits evenly over devices and hosts."""
    devices = num_batch_shards(mesh)
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
    """Host-local numpy arrays (this process's rows) -> global arrays split over the batch
    axes (:func:`batch_sharding`)."""
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
    devices = num_batch_shards(mesh)
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
