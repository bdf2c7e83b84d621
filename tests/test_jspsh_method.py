"""JSPSH through the shared loop: learns above chance, sparse codes, B as the database,
float64, and clear errors for code dimensions the training set cannot hold."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
import jspsh  # noqa: E402

from fjsph_jax.configuration import ConfigError, apply_overrides, validate_config  # noqa: E402
from fjsph_jax.training import loop  # noqa: E402

TINY = {"data.num_items": 700, "data.num_query": 60, "data.num_train": 500,
        "bits": 8, "jspsh.cluster_ks": (10, 20), "jspsh.anchors": 200,
        "eval.batch_size": 128, "eval.query_chunk": 64}


def tiny(**overrides):
    return apply_overrides(jspsh.get_config(), {**TINY, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jspsh")
    return loop.train_and_evaluate(tiny(), str(workdir)), workdir


def test_learns_well_above_the_random_codes_level(run):
    results, _ = run
    for direction in ("i2t", "t2i"):
        assert results[direction]["map_all"] > results["random_codes"][direction]["map_all"] + 0.1
    assert results["code_format"] == "sparse" and results["code_dim"] == 160
    assert results["map_convention"] == "top_k"


def test_results_have_the_shared_keys_and_the_fit_is_logged(run):
    results, workdir = run
    for key in ("method", "bits", "code_format", "code_dim", "map_convention", "top_k", "split",
                "split_sizes", "i2t", "t2i", "random_codes", "train_seconds"):
        assert key in results, key
    record = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["code_dim"] == 160 and len(record["h_step_ranks"]) == 5
    assert (workdir / "pr_curve.png").exists() and (workdir / "checkpoints").is_dir()


def test_database_codes_are_the_training_codes(run, tmp_path):
    """Rows of the training set get their row of B for both modalities; the other database
    rows (and queries) get top-r of their features' projection; every code has r ones."""
    from fjsph_jax import parallel
    from fjsph_jax.methods.jspsh.method import JSPSHMethod
    from fjsph_jax.training.loop import build_method

    _, workdir = run
    method, data = build_method(tiny(), str(tmp_path), parallel.make_mesh())
    assert isinstance(method, JSPSHMethod)
    state = method.init_state()
    from fjsph_jax.training.checkpointing import Checkpointer, config_fingerprint

    ckpt = Checkpointer(str(workdir / "checkpoints"), max_to_keep=1, save_interval_steps=1)
    state, _ = ckpt.restore(state, fingerprint=config_fingerprint(tiny()))
    ckpt.close()
    rows = data.splits.database
    codes = method.encode(state, rows, role="database")
    in_train = np.isin(rows, data.splits.train)
    assert in_train.sum() == 500 and (~in_train).sum() == 140
    b = np.asarray(state.B)
    np.testing.assert_array_equal(codes["image"][in_train], codes["text"][in_train])
    np.testing.assert_array_equal(codes["image"][in_train], b)
    queries = method.encode(state, rows[~in_train], role="query")
    np.testing.assert_array_equal(codes["text"][~in_train], queries["text"])
    for c in (codes["image"], codes["text"]):
        assert c.dtype == np.uint8 and set(np.unique(c)) == {0, 1}
        assert np.all(c.sum(axis=1) == 8)


def test_float64_solve_agrees_with_float32(run, tmp_path):
    results32, _ = run
    results64 = loop.train_and_evaluate(tiny(**{"jspsh.dtype": "float64"}), str(tmp_path))
    for direction in ("i2t", "t2i"):
        assert abs(results64[direction]["map_all"] - results32[direction]["map_all"]) < 0.03


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    """A tiny .npz in the launch/encode.py layout: 60 training / database rows, 10 queries."""
    from fjsph_jax.data.feature_files import write_feature_file

    rng = np.random.default_rng(0)

    def labels(rows):
        values = (rng.random((rows, 5)) < 0.3).astype(np.uint8)
        values[np.arange(rows), rng.integers(0, 5, rows)] = 1
        return values

    path = str(tmp_path_factory.mktemp("features") / "features.npz")
    write_feature_file(path, {
        "I_tr": rng.random((60, 12), np.float32), "T_tr": rng.random((60, 7), np.float32),
        "L_tr": labels(60), "I_te": rng.random((10, 12), np.float32),
        "T_te": rng.random((10, 7), np.float32), "L_te": labels(10)})
    return path


@pytest.mark.parametrize("name, anchors", [("jspsh_mirflickr", 1000), ("jspsh_nuswide", 5000),
                                           ("jspsh_coco", 1000)])
def test_dataset_configs_validate_on_a_feature_file(name, anchors, feature_file):
    """Each dataset config loads, needs a feature file, and validates with one; the solve
    settings are the authors' (configs/jspsh.py) with their anchor count."""
    import importlib

    config = importlib.import_module(name).get_config()
    assert config.method == "jspsh" and config.jspsh.anchors == anchors
    base = jspsh.get_config().jspsh
    for key in ("mu", "alpha", "omega", "beta", "theta", "lam", "iterations", "sparsity",
                "cluster_ks"):
        assert config.jspsh[key] == base[key], key
    with pytest.raises(ConfigError, match=r"config\.data\.features is empty.*launch/encode\.py"):
        validate_config(config, num_devices=1)
    config.data.features = feature_file
    validate_config(config, num_devices=1)


@pytest.mark.parametrize("overrides, message", [
    ({"bits": 32}, r"bits / sparsity = 32 / 0.05 = 640 dimensions, which must be fewer than "
                   r"the 500 training rows"),
    ({"jspsh.sparsity": 0.03}, r"config\.bits / config\.jspsh\.sparsity = 8 / 0\.03"),
    ({"jspsh.dtype": "float16"}, r"config\.jspsh\.dtype='float16'"),
    ({"jspsh.iterations": 0}, r"config\.jspsh\.iterations=0 must be a positive integer"),
    ({"jspsh.mu": -1.0}, r"config\.jspsh\.mu=-1\.0 must be a number >= 0"),
    ({"jspsh.rank_rule": "eig"}, r"config\.jspsh\.rank_rule='eig' is not supported"),
])
def test_bad_settings_name_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny(**overrides), num_devices=8)
        loop.train_and_evaluate(tiny(**overrides), str(tmp_path))


def test_rank_rule_reaches_the_solver():
    from fjsph_jax.methods.jspsh.method import params_from_config

    config = tiny()
    assert params_from_config(config.jspsh, (10, 20)).rank_rule == "row_space"
    config.jspsh.rank_rule = "authors"
    assert params_from_config(config.jspsh, (10, 20)).rank_rule == "authors"
