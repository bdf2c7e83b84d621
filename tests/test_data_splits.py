"""Tests for fjsph_jax.data.splits: protocols and their record beside a built dataset."""

import json

import ml_collections
import numpy as np
import pytest

from fjsph_jax.data import splits as splits_lib
from fjsph_jax.data.dataset import make_splits


def test_random_protocol_is_make_splits():
    got = splits_lib.protocol_splits("random", 50, 5, 20, seed=3)
    want = make_splits(50, 5, 20, 3)
    for part in ("query", "database", "train"):
        np.testing.assert_array_equal(getattr(got, part), getattr(want, part))


def test_permutation_protocol_reproduces_the_dchmt_code():
    # DCHMT / MITH: np.random.seed(seed); p = np.random.permutation(N); q = p[:Q];
    # train = p[Q:Q+T]; database = p[Q:].
    np.random.seed(1)
    p = np.random.permutation(40)
    got = splits_lib.protocol_splits("permutation", 40, 6, 10, seed=1)
    np.testing.assert_array_equal(got.query, np.sort(p[:6]))
    np.testing.assert_array_equal(got.train, np.sort(p[6:16]))
    np.testing.assert_array_equal(got.database, np.sort(p[6:]))


def test_small_protocol_sizes():
    assert splits_lib.split_sizes("small", 730, 2000, 10000) == (73, 438)
    assert splits_lib.split_sizes("small", 3, 0, 0) == (1, 2)
    got = splits_lib.protocol_splits("small", 730, 2000, 10000, seed=0)
    assert got.sizes() == {"query": 73, "database": 657, "train": 438}
    assert np.isin(got.train, got.database).all() and not np.isin(got.query, got.database).any()


def test_config_splits_reads_the_protocol_key():
    config = ml_collections.ConfigDict(
        {"num_query": 5, "num_train": 10, "split_seed": 1, "split_protocol": "permutation"}
    )
    np.testing.assert_array_equal(
        splits_lib.config_splits(config, 30).query,
        splits_lib.permutation_splits(30, 5, 10, 1).query,
    )
    del config["split_protocol"]  # configs without the key keep the old behaviour
    np.testing.assert_array_equal(
        splits_lib.config_splits(config, 30).query, make_splits(30, 5, 10, 1).query
    )


def test_record_is_written_once_and_checked(tmp_path):
    s = splits_lib.protocol_splits("random", 20, 4, 8, seed=0)
    path = splits_lib.record_splits(str(tmp_path), "random", s, 0)
    assert path.endswith("splits/random-q4-t8-seed0.json")
    with open(path) as f:
        assert json.load(f)["sizes"] == {"query": 4, "database": 16, "train": 8}
    back = splits_lib.read_recorded_splits(path)
    np.testing.assert_array_equal(back.train, s.train)
    assert splits_lib.record_splits(str(tmp_path), "random", s, 0) == path  # same: accepted
    other = splits_lib.protocol_splits("random", 20, 4, 8, seed=1)
    with pytest.raises(ValueError, match="differs from the one computed now"):
        splits_lib.record_splits(str(tmp_path), "random", other, 0)


def test_bad_protocol_and_sizes_raise():
    with pytest.raises(
        ValueError, match=r"split_protocol='mith'.*'random', 'permutation', 'small'"
    ):
        splits_lib.split_sizes("mith", 10, 1, 1)
    with pytest.raises(ValueError, match="num_train must be in 1..5"):
        splits_lib.permutation_splits(10, 5, 6, 0)


def test_validation_queries_come_from_train_and_leave_train_and_database():
    splits = make_splits(200, 20, 120, 0)
    val = splits_lib.validation_splits(splits, 15, seed=4)
    assert val.sizes() == {"query": 15, "database": 165, "train": 105}
    assert np.isin(val.query, splits.train).all()
    assert not np.isin(val.query, val.train).any() and not np.isin(val.query, val.database).any()
    assert not np.isin(splits.query, np.concatenate([val.query, val.database])).any()
    again = splits_lib.validation_splits(splits, 15, seed=4)
    np.testing.assert_array_equal(val.query, again.query)  # seeded
    with pytest.raises(ValueError, match=r"num_validation=120 must be in 1\.\.119"):
        splits_lib.validation_splits(splits, 120, seed=4)
