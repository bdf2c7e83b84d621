"""Checkpointer: sharded round trip, config fingerprint guard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax import parallel
from fjsph_jax.training.checkpointing import CheckpointMismatchError, Checkpointer, config_fingerprint
from tiny import tiny_config


def _state(mesh):
    rows = parallel.rows_sharding(mesh, 16)
    return {
        "params": jax.device_put({"w": jnp.arange(6.0).reshape(2, 3)}, parallel.replicated(mesh)),
        "bank": jax.device_put(jnp.arange(32, dtype=jnp.int8).reshape(16, 2), rows),
        "step": jnp.asarray(7, jnp.int32),
    }


def test_round_trip_keeps_values_and_shardings(tmp_path):
    mesh = parallel.make_mesh()
    state = _state(mesh)
    ckpt = Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=1)
    assert ckpt.restore(state, fingerprint="abc") is None  # nothing saved yet
    ckpt.save(7, state, {"config_fingerprint": "abc", "data_position": 7}, force=True)
    ckpt.wait()
    zeros = jax.tree.map(jnp.zeros_like, state)
    restored, meta = ckpt.restore(zeros, fingerprint="abc")
    assert meta["data_position"] == 7
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert restored["bank"].sharding.spec == state["bank"].sharding.spec
    with pytest.raises(CheckpointMismatchError, match="another configuration.*new --workdir"):
        ckpt.restore(zeros, fingerprint="xyz")
    ckpt.close()


def test_fingerprint_ignores_logging_and_eval_keys_only():
    base = config_fingerprint(tiny_config())
    assert config_fingerprint(tiny_config(**{"train.log_every_steps": 99})) == base
    assert config_fingerprint(tiny_config(**{"eval.top_k": 5})) == base
    assert config_fingerprint(tiny_config(**{"train.learning_rate": 0.5})) != base
    assert config_fingerprint(tiny_config(bits=32)) != base
