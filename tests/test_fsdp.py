"""The optional ``fsdp`` mesh axis: parameters and optimiser state split instead of
replicated, and the same training as the replicated mesh (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest

from fjsph_jax import inputs, parallel
from fjsph_jax.methods.fjsph.method import FJSPHMethod
from tiny import tiny_config

STEPS = 2  # the code bank is updated before step 1 (codes.update_every_steps = 1)


def test_fsdp_spec_splits_the_largest_divisible_dim():
    assert parallel.fsdp_spec((768, 3072), 4) == jax.sharding.PartitionSpec(None, "fsdp")
    assert parallel.fsdp_spec((49408, 512), 4) == jax.sharding.PartitionSpec("fsdp")
    assert parallel.fsdp_spec((6, 3), 4) == jax.sharding.PartitionSpec()  # nothing divides
    assert parallel.fsdp_spec((), 4) == jax.sharding.PartitionSpec()
    assert parallel.fsdp_spec((768, 3072), 1) == jax.sharding.PartitionSpec()


def test_make_mesh_shapes_and_checks():
    mesh = parallel.make_mesh(jax.devices()[:8], fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert parallel.num_batch_shards(mesh) == 8 and parallel.num_data_shards(mesh) == 2
    assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert parallel.make_mesh(jax.devices()[:8]).axis_names == ("data",)
    with pytest.raises(ValueError, match="fsdp=3"):
        parallel.make_mesh(jax.devices()[:8], fsdp=3)


def _train(fsdp: int, workdir: str):
    """FJSPHMethod as the loop runs it, STEPS steps on 8 devices with ``train.fsdp``."""
    config = tiny_config(**{"train.fsdp": fsdp, "codes.update_every_steps": 1})
    mesh = parallel.make_mesh(jax.devices()[:8], fsdp=fsdp)
    data = inputs.prepare_training_data(config, workdir, mesh)
    method = FJSPHMethod(config, data, mesh)
    state = method.init_state()
    batches = _batches(data, config, mesh)
    losses = []
    for step in range(STEPS):
        state = method.before_step(state, step)
        state, metrics = method.train_step(state, next(batches), step)
        losses.append(float(jax.device_get(metrics["loss"])))
    return state, losses


def _batches(data, config, mesh):
    from fjsph_jax.data.batches import EpochBatcher

    batcher = EpochBatcher(len(data.splits.train), config.train.global_batch_size, config.seed)
    for step in range(STEPS):
        positions = batcher.indices(step)
        host = data.load_rows(data.splits.train[positions])
        host["index"] = positions.astype(np.int32)
        yield parallel.global_batch(host, mesh)


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory):
    return _train(1, str(tmp_path_factory.mktemp("fsdp1")))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    return _train(4, str(tmp_path_factory.mktemp("fsdp4")))


def _split_leaves(tree):
    """(name, array) of the leaves of ``tree`` whose shard on a device is smaller than
    the whole array."""
    return [(jax.tree_util.keystr(path), x)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if x.addressable_shards[0].data.size < x.size]


def test_parameters_and_optimiser_state_are_split(fsdp_run):
    state, _ = fsdp_run
    params = jax.tree.leaves(state.params)
    split = _split_leaves(state.params)
    # Every matrix of the towers and heads has a dimension 4 divides here.
    matrices = [x for x in params if x.ndim >= 2]
    assert len(split) >= len(matrices) > 10
    for name, x in split:
        assert x.addressable_shards[0].data.size == x.size // 4, name
        assert "fsdp" in x.sharding.spec, name
    # Adam's moments are split like their parameters.
    assert len(_split_leaves(state.opt_state)) >= 2 * len(matrices)
    total = sum(x.size for x in params)
    per_device = sum(x.addressable_shards[0].data.size for x in params)
    assert per_device < 0.3 * total, (per_device, total)


def test_fsdp_trains_like_the_replicated_mesh(replicated_run, fsdp_run):
    (state1, losses1), (state4, losses4) = replicated_run, fsdp_run
    assert not _split_leaves(state1.params)  # fsdp=1: replicated
    np.testing.assert_allclose(losses4, losses1, rtol=2e-5, atol=2e-6)
    flat1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
    flat4 = jax.tree.leaves(jax.device_get(state4.params))
    assert len(flat1) == len(flat4)
    for (path, a), b in zip(flat1, flat4):
        name = jax.tree_util.keystr(path)
        if "k_proj']['bias" in name:  # zero gradient up to float noise (test_train.py)
            assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(jax.device_get(state1.bank.codes),
                                  jax.device_get(state4.bank.codes))
