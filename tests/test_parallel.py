"""Sharding rules: batches over 'data', parameters replicated, bank rows split over N."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fjsph_jax import parallel


def test_mesh_over_all_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert parallel.num_data_shards(mesh) == len(jax.devices()) == 8


def test_rows_sharding_splits_when_divisible_else_replicates():
    mesh = parallel.make_mesh()
    assert parallel.rows_sharding(mesh, 64).spec == P("data")
    assert parallel.rows_sharding(mesh, 63).spec == P()


def test_global_batch_places_rows_over_devices():
    mesh = parallel.make_mesh()
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = parallel.global_batch(local, mesh)
    assert batch["x"].shape == (16, 3)
    assert len(batch["x"].addressable_shards) == 8
    assert batch["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])


def test_check_global_batch():
    mesh = parallel.make_mesh()
    parallel.check_global_batch(32, mesh)
    with pytest.raises(ValueError, match="multiple of the device count 8"):
        parallel.check_global_batch(12, mesh)


def test_host_slice_single_process_is_everything():
    assert parallel.host_slice(32) == slice(0, 32)


def test_no_distributed_init_without_cluster_env(monkeypatch):
    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert parallel.maybe_initialize_distributed() is False


def test_map_batches_pads_gathers_and_keeps_row_order():
    mesh = parallel.make_mesh()
    arrays = {"x": np.arange(50, dtype=np.float32).reshape(25, 2)}
    rows = np.array([24, 0, 7, 7, 13])
    calls = []

    def fn(batch):
        calls.append(batch["x"].shape)
        return batch["x"] * 2, batch["x"].sum(axis=1)

    doubled, sums = parallel.map_batches(fn, arrays, rows, batch_size=3, mesh=mesh)
    np.testing.assert_array_equal(doubled, arrays["x"][rows] * 2)
    np.testing.assert_array_equal(sums, arrays["x"][rows].sum(axis=1))
    assert set(calls) == {(8, 2)}  # one padded shape: 3 rounded up to the 8 devices


def test_padded_num_rows_and_pad_rows():
    mesh = parallel.make_mesh()
    assert [parallel.padded_num_rows(n, mesh) for n in (1, 8, 63, 64, 65)] == [8, 8, 64, 64, 72]
    assert parallel.padded_num_rows(63, 1) == 63
    x = np.arange(6, dtype=np.int8).reshape(3, 2)
    padded = parallel.pad_rows(x, 5, value=1)
    assert isinstance(padded, np.ndarray)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [1, 1], [1, 1]])
    assert parallel.pad_rows(x, 3) is x
    ids = jax.numpy.asarray(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(parallel.pad_rows(ids, 4, axis=1),
                                  [[0, 1, 2, 0], [3, 4, 5, 0]])
    with pytest.raises(ValueError, match="more than 2"):
        parallel.pad_rows(x, 2)
    # A padded [N, ...] array always splits over the devices.
    assert parallel.rows_sharding(mesh, parallel.padded_num_rows(63, mesh)).spec == P("data")
    np.testing.assert_array_equal(np.asarray(parallel.row_mask(3, 5)),
                                  [True, True, True, False, False])
