"""End to end: sharded training agrees on 1 and 8 devices, resumes exactly, evaluates."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from fjsph_jax import inputs, parallel
from fjsph_jax.methods.fjsph import build
from fjsph_jax.methods.fjsph import method as fjsph_method
from fjsph_jax.training import loop as train
from fjsph_jax import similarity as similarity_lib
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.methods.fjsph.step import StepSettings, make_train_step
from test_guards import poisoned, poisoned_config  # noqa: F401  (fixture)
from tiny import tiny_built_config, tiny_config, write_tiny_mirflickr


def _one_step(config, devices, workdir):
    """Runs the first two train steps (the second with an active bank) on ``devices``."""
    mesh = parallel.make_mesh(devices)
    data = inputs.prepare_training_data(config, workdir, mesh)
    splits, vocab_size = data.splits, data.vocab_size
    model = build.build_model(config, vocab_size, with_encoders=True, seed=0)
    graphdef, params = nnx.split(model)
    optimizer = build.build_optimizer(config, params, total_steps=10)
    num_train = len(splits.train)
    sim = similarity_lib.build_joint_similarity(
        data.labels[splits.train], cluster_ks=(4, 8), eta=0.3, key=jax.random.PRNGKey(0)
    )
    sim = fjsph_method.pad_similarity_for(sim, mesh)
    # Created under jit on the mesh, with the bank statistics of the initial codes.
    state = fjsph_method.init_train_state(config, model, optimizer, num_train, mesh, sim)
    shardings = fjsph_method.state_shardings(state, mesh)
    step_fn = make_train_step(  # with the mesh: the contrastive term under shard_map
        graphdef, optimizer, StepSettings.from_config(config, mesh=mesh), shardings,
        parallel.replicated(mesh)
    )
    batcher = EpochBatcher(num_train, config.train.global_batch_size, seed=0)
    losses = []
    for step, active in ((0, 0.0), (1, 1.0)):
        pos = batcher.indices(step)
        local = data.load_rows(splits.train[pos])
        local["index"] = pos.astype(np.int32)
        state, metrics = step_fn(state, parallel.global_batch(local, mesh), sim, np.float32(active))
        losses.append(jax.device_get(metrics))
    return state, losses


def test_one_and_eight_devices_agree(tmp_path):
    config = tiny_config()
    state1, losses1 = _one_step(config, jax.devices()[:1], str(tmp_path / "a"))
    state8, losses8 = _one_step(config, jax.devices()[:8], str(tmp_path / "b"))
    assert len(state8.bank.codes.sharding.device_set) == 8
    for m1, m8 in zip(losses1, losses8):
        for key in m1:
            np.testing.assert_allclose(m1[key], m8[key], rtol=2e-5, atol=2e-6, err_msg=key)
    flat1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
    flat8 = jax.tree.leaves(jax.device_get(state8.params))
    assert len(flat1) == len(flat8) > 10
    for (path, a), b in zip(flat1, flat8):
        name = jax.tree_util.keystr(path)
        if "k_proj']['bias" in name:
            # softmax is invariant to the key bias, so its gradient is exactly zero up to
            # float noise, which Adam's g / sqrt(v) normalisation turns into tiny random
            # steps. Assert it stayed (near) zero on both meshes instead.
            assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(
        jax.device_get(state1.bank.image_outputs),
        jax.device_get(state8.bank.image_outputs),
        atol=1e-6,
    )


def test_resume_reaches_the_same_parameters(tmp_path):
    config = tiny_config()  # 8 steps; checkpoints every 4; code update every 3
    full = train.train_and_evaluate(config, str(tmp_path / "full"))
    assert train.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=5) is None
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints"))[-1] == "5"
    resumed = train.train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed["i2t"]["map_all"] == pytest.approx(full["i2t"]["map_all"], abs=1e-6)
    from fjsph_jax.training.checkpointing import Checkpointer

    finals = []
    for name in ("full", "split"):
        ckpt = Checkpointer(
            str(tmp_path / name / "checkpoints"), max_to_keep=2, save_interval_steps=4
        )
        assert ckpt.latest_step() == 8
        finals.append(ckpt.restore_untyped(8)[0])
        ckpt.close()
    leaves_full = jax.tree.leaves(finals[0])
    leaves_split = jax.tree.leaves(finals[1])
    assert len(leaves_full) == len(leaves_split) > 10
    for a, b in zip(leaves_full, leaves_split):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().strip().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps[-1] == 8 and 4 in steps


def test_streamed_run_resumes_in_memory_exactly(tmp_path):
    """The grain-streamed loader trains on the batches the in-memory one does: a run
    streamed to step 4 (iterator state saved with the checkpoint) and resumed with the
    memory loader ends with the parameters of an uninterrupted in-memory run."""
    from fjsph_jax.training.checkpointing import Checkpointer

    write_tiny_mirflickr(tmp_path)
    memory = tiny_built_config(tmp_path, **{"data.loader": "memory"})
    stream = tiny_built_config(tmp_path, **{"data.loader": "stream"})
    full = train.train_and_evaluate(memory, str(tmp_path / "full"))  # 6 steps
    assert train.train_and_evaluate(stream, str(tmp_path / "split"), stop_after_steps=4) is None
    ckpt = Checkpointer(str(tmp_path / "split" / "checkpoints"), max_to_keep=2,
                        save_interval_steps=4)
    assert ckpt.restore_untyped(4)[1]["data_position"] == {"step": 4}
    ckpt.close()
    resumed = train.train_and_evaluate(memory, str(tmp_path / "split"))
    assert resumed["t2i"]["map_all"] == pytest.approx(full["t2i"]["map_all"], abs=1e-6)
    finals = []
    for name in ("full", "split"):
        ckpt = Checkpointer(str(tmp_path / name / "checkpoints"), max_to_keep=2,
                            save_interval_steps=4)
        finals.append(jax.tree.leaves(ckpt.restore_untyped(6)[0]["params"]))
        ckpt.close()
    assert len(finals[0]) == len(finals[1]) > 10
    for a, b in zip(*finals):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_rejects_a_checkpoint_whose_data_position_disagrees():
    assert train._resumed_data_position({"data_position": {"step": 7}}, 7) == 7
    assert train._resumed_data_position({"data_position": 7}, 7) == 7  # older checkpoints
    with pytest.raises(ValueError, match="step 7 records data position 6"):
        train._resumed_data_position({"data_position": {"step": 6}}, 7)


def test_run_writes_results_plots_and_logs(tmp_path):
    config = tiny_config(**{"train.mode": "frozen_encoder"})
    results = train.train_and_evaluate(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["bits"] == 16
    for block in (on_disk, on_disk["random_codes"]):
        for d in ("i2t", "t2i"):
            assert 0.0 <= block[d]["map_all"] <= 1.0
    assert results["i2t"]["map_all"] == on_disk["i2t"]["map_all"]
    for png in ("pr_curve.png", "precision_at_n.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.startswith("features-") for p in os.listdir(tmp_path))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in (
        "loss",
        "contrastive",
        "similarity",
        "bank_similarity",
        "quantization",
        "balance",
        "examples_per_sec",
    ):
        assert key in record and np.isfinite(record[key])


def test_code_updates_per_epoch():
    every = fjsph_method.code_update_every
    assert every(tiny_config(), 156) == 3  # update_every_steps wins when > 0
    config = tiny_config(**{"codes.update_every_steps": -1, "codes.updates_per_epoch": 2})
    assert every(config, 156) == 78
    config.codes.updates_per_epoch = 1
    assert every(config, 156) == 156
    config.codes.updates_per_epoch = 500
    assert every(config, 156) == 1


def _tensorboard_scalars(logdir):
    """{tag: {step: value}} of the tensorboardX event files under ``logdir``."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for name in sorted(os.listdir(logdir)):
        data = (logdir / name).read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.mark.usefixtures("poisoned")
def test_periodic_evaluation_and_tensorboard_survive_a_resume(tmp_path):
    """eval.every_steps=4: eval_* records at 4, 8 and the end (12), each once, through a
    stop at step 6 and a rerun of the finished run; TensorBoard gets the same scalars."""
    pytest.importorskip("tensorboardX")
    config = poisoned_config(-1, **{"eval.every_steps": 4, "train.tensorboard": True,
                                    "train.log_every_steps": 2,
                                    "train.checkpoint_every_steps": 4})
    assert train.train_and_evaluate(config, str(tmp_path), stop_after_steps=6) is None
    results = train.train_and_evaluate(config, str(tmp_path))
    train.train_and_evaluate(config, str(tmp_path))  # finished: evaluates, logs nothing new
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    evals = {r["step"]: r for r in records if "eval_i2t_map_all" in r}
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert sorted(evals) == [4, 8, 12] and len(records) == 9
    assert evals[12]["eval_t2i_map_all"] == pytest.approx(results["t2i"]["map_all"])
    assert {"eval_i2t_map_at_k", "eval_t2i_p_at_5"} <= set(evals[4])
    for r in records:
        if "loss" in r:
            assert r["host_rss_mib"] > 0 and r["step_seconds"] > 0
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert sorted(scalars["loss"]) == [2, 4, 6, 8, 10, 12]
    assert sorted(scalars["eval_i2t_map_all"]) == [4, 8, 12]
    loss_at_10 = next(r["loss"] for r in records if r["step"] == 10)
    assert scalars["loss"][10] == pytest.approx(loss_at_10)


def test_tensorboard_without_tensorboardx_is_a_config_error(monkeypatch, tmp_path):
    from fjsph_jax.training.logs import TensorBoardMissingError

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(TensorBoardMissingError, match=r"pip install -e '\.\[tensorboard\]'"):
        train.train_and_evaluate(tiny_config(**{"train.tensorboard": True}), str(tmp_path))
    assert not os.listdir(tmp_path)  # before any work
