"""Checkpointer: sharded round trip, config fingerprint guard, abstract targets, damaged
and unfinished checkpoints skipped."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax import parallel
from fjsph_jax.training.checkpointing import CheckpointMismatchError, Checkpointer, config_fingerprint
from fjsph_jax.training import loop
from test_guards import poisoned, poisoned_config  # noqa: F401  (fixture)
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


def test_restore_onto_abstract_state_needs_its_shardings(tmp_path):
    """eval_shape drops shardings: restore takes them as ``shardings=``, and says so."""
    mesh = parallel.make_mesh()
    state = _state(mesh)
    ckpt = Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=1)
    ckpt.save(7, state, {"config_fingerprint": "abc", "step": 7}, force=True)
    ckpt.wait()
    abstract = jax.eval_shape(lambda: state)
    with pytest.raises(ValueError, match=r"\['bank'\] has no sharding.*shardings="):
        ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract),
                     fingerprint="abc")
    shardings = jax.tree.map(lambda x: x.sharding, state)
    restored, _ = ckpt.restore(abstract, fingerprint="abc", shardings=shardings)
    assert restored["bank"].sharding.spec == state["bank"].sharding.spec
    np.testing.assert_array_equal(np.asarray(restored["bank"]), np.asarray(state["bank"]))
    ckpt.close()


def test_a_state_of_other_shapes_fails_without_touching_the_checkpoints(tmp_path):
    from fjsph_jax.training.checkpointing import CheckpointRestoreError

    mesh = parallel.make_mesh()
    ckpt = Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=1)
    for step in (3, 7):
        ckpt.save(step, _state(mesh), {"config_fingerprint": "abc", "step": step}, force=True)
    ckpt.wait()
    other = dict(_state(mesh), params={"w": jnp.zeros((4, 3))})
    with pytest.raises(CheckpointRestoreError, match="step 7.*new --workdir"):
        ckpt.restore(other, fingerprint="abc")
    assert ckpt.all_steps() == [3, 7] and sorted(os.listdir(tmp_path)) == ["3", "7"]
    ckpt.close()


# ---- damaged checkpoints in a run (the fake method of test_guards: cheap and exact) ----

def _steps_logged(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _final_w(workdir, step=12):
    ckpt = Checkpointer(str(workdir / "checkpoints"), max_to_keep=10, save_interval_steps=4)
    w = np.asarray(ckpt.restore_untyped(step)[0]["w"])
    ckpt.close()
    return w


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("damage", ["metadata_missing", "array_data_garbage"])
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
    """A run stopped at step 8 whose checkpoint 8 got damaged (a metadata file lost, or its
    array data overwritten), and a half-written line at the end of metrics.jsonl: the rerun
    warns naming step 8, resumes from step 4, rewrites 8, ends as an uninterrupted run, and
    metrics.jsonl holds each step once."""
    config = poisoned_config(-1, **{"train.log_every_steps": 2,
                                    "train.checkpoint_every_steps": 4})
    loop.train_and_evaluate(config, str(tmp_path / "full"))
    run = tmp_path / "run"
    assert loop.train_and_evaluate(config, str(run), stop_after_steps=8) is None
    step8 = run / "checkpoints" / "8"
    if damage == "metadata_missing":
        (step8 / "state" / "_METADATA").unlink()
    else:
        for path in step8.glob("state/**/d/*"):
            path.write_bytes(b"\0garbage" * 8)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a process killed mid-write
    with caplog.at_level(logging.WARNING):
        results = loop.train_and_evaluate(config, str(run))
    assert results is not None
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 8" in warned and "resuming from step 4" in warned, warned
    names = sorted(os.listdir(run / "checkpoints"))
    assert [n for n in names if n.isdigit()] == ["12", "4", "8"]
    assert any(n.startswith("8.corrupt-") for n in names)
    assert _steps_logged(run) == _steps_logged(tmp_path / "full") == [2, 4, 6, 8, 10, 12]
    np.testing.assert_array_equal(_final_w(run), _final_w(tmp_path / "full"))


@pytest.mark.usefixtures("poisoned")
def test_unfinished_save_is_ignored_with_a_warning(tmp_path, caplog):
    config = poisoned_config(-1, **{"train.checkpoint_every_steps": 4})
    assert loop.train_and_evaluate(config, str(tmp_path), stop_after_steps=4) is None
    unfinished = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1796170000000000"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "_METADATA").write_text("{")
    with caplog.at_level(logging.WARNING):
        assert loop.train_and_evaluate(config, str(tmp_path)) is not None
    assert "checkpoint step 8" in caplog.text and "not finished" in caplog.text
    assert not unfinished.exists()
    assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == [
        "12", "4", "8"]


def test_row_padding_adapts_to_the_new_device_count(tmp_path):
    """[N_pad, K] arrays padded to a multiple of the device count (N = 60: 60 rows on 4
    devices, 64 on 8) restore across meshes: the real rows kept, padding cut or added
    (zeros); a replicated array of another shape still fails."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from fjsph_jax.training.checkpointing import CheckpointRestoreError

    def state(devices, rows, w_rows=2):
        mesh = parallel.make_mesh(jax.devices()[:devices])
        bank = np.zeros((rows, 2), np.float32)
        bank[:60] = np.arange(120, dtype=np.float32).reshape(60, 2) + 1
        return {"bank": jax.device_put(bank, NamedSharding(mesh, P("data"))),
                "w": jax.device_put(np.ones((w_rows, 3), np.float32), parallel.replicated(mesh))}

    for (save_devices, save_rows), (load_devices, load_rows) in (((4, 60), (8, 64)),
                                                                 ((8, 64), (4, 60))):
        directory = tmp_path / f"{save_devices}to{load_devices}"
        ckpt = Checkpointer(str(directory), max_to_keep=2, save_interval_steps=1)
        ckpt.save(3, state(save_devices, save_rows), {"config_fingerprint": "f", "step": 3},
                  force=True)
        ckpt.wait()
        restored, _ = ckpt.restore(state(load_devices, load_rows), fingerprint="f")
        bank = restored["bank"]
        assert bank.shape == (load_rows, 2) and len(bank.sharding.device_set) == load_devices
        np.testing.assert_array_equal(np.asarray(bank)[:60],
                                      np.asarray(state(save_devices, save_rows)["bank"])[:60])
        assert not np.asarray(bank)[60:].any()  # padding rows: zeros
        with pytest.raises(CheckpointRestoreError):
            ckpt.restore(state(load_devices, load_rows, w_rows=3), fingerprint="f")
        ckpt.close()
