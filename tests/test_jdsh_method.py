"""JDSH through the shared loop: config checks, sharded step, learning, exact resume."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from fjsph_jax import parallel
from fjsph_jax.configuration import ConfigError, validate_config
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.methods.jdsh import method as jdsh_method
from fjsph_jax.methods.jdsh import objective
from fjsph_jax.training import loop
from fjsph_jax.training.checkpointing import Checkpointer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import jdsh_demo  # noqa: E402
import jdsh_mirflickr  # noqa: E402
import jdsh_nuswide  # noqa: E402


def tiny_jdsh(**overrides):
    """configs/jdsh_demo.py shrunk: 400 scenes, 40 query, 300 train, batch 32 (9 steps per
    epoch), 16 bits, a 64-wide text MLP, the authors' fixed MIRFlickr DSDW constants (both
    branches fire on these features)."""
    config = jdsh_demo.get_config()
    config.jdsh.dsdw = "fixed"
    config.bits = 16
    config.data.num_items = 400
    config.data.num_query = 40
    config.data.num_train = 300
    config.data.num_validation = 30
    config.jdsh.text_hidden_dim = 64
    config.train.num_epochs = 20
    config.train.log_every_steps = 9
    config.train.checkpoint_every_steps = 45
    config.eval.batch_size = 128
    config.eval.top_k = 20
    config.eval.precision_ns = (1, 5, 20)
    config.eval.query_chunk = 16
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def test_configs_carry_the_authors_values():
    mir, nus = jdsh_mirflickr.get_config().jdsh, jdsh_nuswide.get_config().jdsh
    order = ("image_weight", "text_weight", "high_order_weight", "scale", "intra_weight",
             "left_loc", "left_scale", "left_width", "right_loc", "right_scale", "right_width",
             "min_value", "max_value", "left_gain", "right_gain")
    assert [mir[k] for k in order] == [0.5, 0.1, 0.4, 1.4, 0.1, -0.49, 0.019, 2, -0.49, 0.088,
                                       4, -0.52, 0.68, 0.1, 0.2]
    assert [nus[k] for k in order] == [0.4, 0.3, 0.3, 1.4, 0.1, -0.62, 0.0128, 2, -0.62, 0.086,
                                       4, -0.64, 0.75, 0.2, 0.2]
    for config in (jdsh_mirflickr.get_config(), jdsh_nuswide.get_config()):
        assert config.method == "jdsh" and config.eval.top_k == 50
        assert config.data.split_protocol == "djsrh"
        assert (config.data.num_query, config.data.num_train) == (2000, 5000)
        train = config.train
        assert (train.global_batch_size, train.num_epochs, train.learning_rate, train.momentum,
                train.weight_decay) == (32, 300, 0.01, 0.9, 5e-4)
        assert config.jdsh.text_hidden_dim == 4096
    validate_config(jdsh_demo.get_config(), num_devices=8)
    validate_config(tiny_jdsh(), num_devices=8)


@pytest.mark.parametrize("key,value,message", [
    ("data.features", "", r"config.data.features is empty.*launch/encode.py"),
    ("jdsh.dsdw", "gauss", r"config.jdsh.dsdw='gauss'"),
    ("jdsh.scale", 0.0, r"config.jdsh.scale=0.0 must be a number > 0"),
    ("jdsh.left_gain", -0.1, r"config.jdsh.left_gain=-0.1 must be a number >= 0"),
    ("jdsh.left_loc", float("nan"), r"config.jdsh.left_loc=nan must be a finite number"),
    ("jdsh.text_hidden_dim", 0, r"config.jdsh.text_hidden_dim=0 must be a positive integer"),
    ("jdsh.fit_batches", -3, r"config.jdsh.fit_batches=-3 must be a positive integer"),
    ("train.momentum", 1.0, r"config.train.momentum=1.0 must lie in \[0.0, 1.0\)"),
    ("train.global_batch_size", 30, r"global_batch_size=30 must be a positive multiple"),
])
def test_bad_values_name_the_key(key, value, message):
    config = tiny_jdsh()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, num_devices=4)


def test_a_missing_key_is_named():
    config = tiny_jdsh()
    del config.jdsh["right_gain"]
    with pytest.raises(ConfigError, match="config.jdsh.right_gain is missing"):
        validate_config(config, num_devices=1)


def _steps(config, devices, workdir, num_steps=3, labels=True):
    mesh = parallel.make_mesh(devices)
    method, data = loop.build_method(config, workdir, mesh)
    if not labels:  # unsupervised: the method must not need them
        data = data._replace(labels=None)
        method = jdsh_method.JDSHMethod(config, data, mesh)
    state = method.init_state()
    batcher = EpochBatcher(len(data.splits.train), config.train.global_batch_size, config.seed)
    metrics = []
    for step in range(num_steps):
        pos = batcher.indices(step)
        local = data.load_rows(data.splits.train[pos])
        local["index"] = pos.astype(np.int32)
        state, m = method.train_step(state, parallel.global_batch(local, mesh), step)
        metrics.append(jax.device_get(m))
    return method, state, metrics


def test_sharded_step_equals_single_device_step(tmp_path):
    config = tiny_jdsh()
    _, state1, metrics1 = _steps(config, jax.devices()[:1], str(tmp_path / "one"))
    method8, state8, metrics8 = _steps(config, jax.devices()[:8], str(tmp_path / "eight"))
    assert method8.steps_per_epoch == 9
    for m1, m8 in zip(metrics1, metrics8):
        assert set(m1) >= {"loss", "intra", "inter", "agreement", "dsdw_left", "dsdw_right"}
        for key in m1:
            np.testing.assert_allclose(m1[key], m8[key], rtol=2e-5, atol=2e-6, err_msg=key)
    assert metrics1[0]["dsdw_left"] > 0 and metrics1[0]["dsdw_right"] > 0
    leaves1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
    leaves8 = jax.tree.leaves(jax.device_get(state8.params))
    assert len(leaves1) == len(leaves8) == 6  # image W, b; text W1, b1, W2, b2
    for (path, a), b in zip(leaves1, leaves8):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert int(state8.step) == 3


def test_step_is_torch_sgd_with_coupled_weight_decay(tmp_path):
    """Two steps by hand: g' = g + wd p, v = m v + g' (v0 = g'), p <- p - lr v."""
    config = tiny_jdsh(**{"train.learning_rate": 0.05})
    mesh = parallel.make_mesh(jax.devices()[:1])
    method, data = loop.build_method(config, str(tmp_path), mesh)
    state = method.init_state()
    params = jax.device_get(state.params)
    batcher = EpochBatcher(len(data.splits.train), 32, config.seed)
    p = jax.tree.map(np.asarray, params)
    v = None
    for step in range(2):
        batch = data.load_rows(data.splits.train[batcher.indices(step)])
        target = objective.similarity_target(batch["image_features"], batch["text_features"],
                                             method.objective)

        def loss_fn(q, batch=batch, target=target):
            model = nnx.merge(method.graphdef, q)
            ci, ct = model.codes(batch["image_features"], batch["text_features"], 0)
            return objective.loss(ci, ct, target, method.objective)

        g = jax.tree.map(np.asarray, jax.grad(loss_fn)(jax.tree.map(np.asarray, p)))
        g = jax.tree.map(lambda gi, pi: gi + 5e-4 * pi, g, p)
        v = g if v is None else jax.tree.map(lambda vi, gi: 0.9 * vi + gi, v, g)
        p = jax.tree.map(lambda pi, vi: pi - 0.05 * vi, p, v)
        batch["index"] = np.zeros(32, np.int32)
        state, _ = method.train_step(state, parallel.global_batch(batch, mesh), step)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(jax.device_get(state.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_training_never_reads_labels_and_codes_are_pm1(tmp_path):
    method, state, _ = _steps(tiny_jdsh(), jax.devices()[:8], str(tmp_path), 2, labels=False)
    assert jdsh_method.JDSHMethod.supervised is False
    codes = method.encode(state, method.data.splits.query, role="query")
    for key in ("image", "text"):
        assert codes[key].shape == (40, 16) and codes[key].dtype == np.int8
        assert set(np.unique(codes[key])) <= {-1, 1}


def test_fitted_constants_are_deterministic_and_fit_the_first_batches(tmp_path):
    config = tiny_jdsh(**{"jdsh.dsdw": "fitted", "jdsh.fit_batches": 4})
    mesh = parallel.make_mesh(jax.devices()[:8])
    method, data = loop.build_method(config, str(tmp_path / "a"), mesh)
    again, _ = loop.build_method(config, str(tmp_path / "b"), mesh)
    assert method.fitted == again.fitted  # a resumed run fits the very same numbers
    batcher = EpochBatcher(300, 32, config.seed)
    values = []
    for step in range(4):
        rows = data.load_rows(data.splits.train[batcher.indices(step)])
        s = objective.joint_similarity(rows["image_features"], rows["text_features"],
                                       config.jdsh)
        values.append(objective.off_diagonal(np.asarray(s)))
    want = objective.fit_dsdw(np.concatenate(values))
    for key, value in want.items():
        assert method.fitted[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert method.objective[key] == method.fitted[key]
    left, right = objective.dsdw_thresholds(method.objective)
    assert want["min_value"] < want["left_loc"] < want["max_value"] and left < right
    assert "DSDW fitted" in method.describe()


def test_training_learns_and_resumes_exactly(tmp_path):
    config = tiny_jdsh()  # 20 epochs x 9 steps, the authors' MIRFlickr constants
    full = loop.train_and_evaluate(config, str(tmp_path / "full"))
    lines = [json.loads(x) for x in
             (tmp_path / "full" / "metrics.jsonl").read_text().strip().splitlines()]
    first, last = lines[0]["loss"], lines[-1]["loss"]
    assert last < first - 0.1, (first, last)
    assert lines[-1]["code_scale"] == pytest.approx(np.sqrt(20))
    for direction in ("i2t", "t2i"):
        chance = full["random_codes"][direction]["map_all"]
        assert full[direction]["map_all"] > chance + 0.05, (direction, full[direction], chance)
    assert full["map_convention"] == "top_k" and full["top_k"] == 20

    assert loop.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=58) is None
    resumed = loop.train_and_evaluate(config, str(tmp_path / "split"))
    for direction in ("i2t", "t2i"):
        assert resumed[direction]["map_all"] == full[direction]["map_all"]
    finals = []
    for name in ("full", "split"):
        ckpt = Checkpointer(str(tmp_path / name / "checkpoints"), max_to_keep=2,
                            save_interval_steps=45)
        assert ckpt.latest_step() == 180
        finals.append(jax.tree.leaves(ckpt.restore_untyped(180)[0]))
        ckpt.close()
    assert len(finals[0]) == len(finals[1]) > 6
    for a, b in zip(*finals):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
