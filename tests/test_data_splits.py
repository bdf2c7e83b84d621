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


# ------------------------------------------------------------------ djsrh (DJSRH / JDSH)


def _labels(num_items=3000, num_labels=6, seed=0):
    """Multi-hot labels: every row one to three labels, label c with weight C - c."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((num_items, num_labels), np.uint8)
    weights = np.arange(num_labels, 0, -1) / np.arange(1, num_labels + 1).sum()
    for row in range(num_items):
        labels[row, rng.choice(num_labels, rng.integers(1, 4), replace=False, p=weights)] = 1
    return labels


def _their_procedure(labels, fq, ft, q, t, top_up, seed):
    """The DJSRH / JDSH datasets.py procedure written out with Python lists and the global
    numpy generator, as their code does it (the reference for djsrh_splits)."""
    np.random.seed(seed)
    test, train = [], []
    for label in range(labels.shape[1]):
        index = np.where(labels[:, label] == 1)[0]
        index = index[np.random.permutation(index.shape[0])]
        if label == 0:
            test, train = list(index[:fq]), list(index[fq:fq + ft])
        else:
            free = [i for i in index if i not in train + test]
            test += free[:q]
            train += free[q:q + t]
    database = [i for i in range(labels.shape[0]) if i not in test]
    if top_up and len(train) < top_up:
        pick = np.array([i for i in database if i not in train])
        pick = pick[np.random.permutation(pick.shape[0])]
        train += list(pick[:top_up - len(train)])
    return sorted(test), database, sorted(train)


def test_djsrh_counts_of_the_two_datasets():
    assert splits_lib.djsrh_counts("mirflickr", 24, 2000, 5000) == (160, 400, 80, 200, 5000)
    assert splits_lib.djsrh_counts("nuswide", 10, 2000, 5000) == (200, 500, 200, 500, 0)
    with pytest.raises(ValueError, match="too small"):
        splits_lib.djsrh_counts("mirflickr", 24, 10, 5000)


@pytest.mark.parametrize("name", ["mirflickr", "nuswide"])
def test_djsrh_reproduces_their_procedure(name):
    labels = _labels()
    counts = splits_lib.djsrh_counts(name, labels.shape[1], 700, 1400)
    got = splits_lib.djsrh_splits(labels, seed=7, **counts._asdict())
    test, database, train = _their_procedure(labels, *counts, seed=7)
    np.testing.assert_array_equal(got.query, test)
    np.testing.assert_array_equal(got.database, database)
    np.testing.assert_array_equal(got.train, train)


def test_djsrh_per_label_sampling_sizes_and_seeding():
    labels = _labels()
    counts = splits_lib.djsrh_counts("mirflickr", 6, 700, 1400)  # 200+400, 100+200 per label
    assert counts == (200, 400, 100, 200, 1400)
    s = splits_lib.djsrh_splits(labels, seed=3, **counts._asdict())
    # enough items per label: 200 + 5 * 100 queries; 400 + 5 * 200 = 1400 train, no top-up
    assert s.sizes() == {"query": 700, "database": 2300, "train": 1400}
    np.testing.assert_array_equal(s.database, np.setdiff1d(np.arange(3000), s.query))
    assert not np.isin(s.train, s.query).any() and np.isin(s.train, s.database).all()
    assert len(np.unique(s.query)) == 700 and len(np.unique(s.train)) == 1400
    # every query and training item was drawn for one of its own labels: at least the
    # first label's share carries label 0
    assert labels[s.query, 0].sum() >= 200 and labels[s.train, 0].sum() >= 400
    assert labels[s.query].sum(axis=1).min() >= 1
    same = splits_lib.djsrh_splits(labels, seed=3, **counts._asdict())
    other = splits_lib.djsrh_splits(labels, seed=4, **counts._asdict())
    np.testing.assert_array_equal(same.query, s.query)
    np.testing.assert_array_equal(same.train, s.train)
    assert not np.array_equal(other.query, s.query)


def test_djsrh_tops_up_mirflickr_but_not_nuswide():
    labels = _labels(num_items=800, num_labels=4)
    kwargs = {"first_query": 40, "first_train": 50, "query_per_label": 20,
              "train_per_label": 50, "seed": 0}
    mir = splits_lib.djsrh_splits(labels, top_up_to=500, **kwargs)
    nus = splits_lib.djsrh_splits(labels, top_up_to=0, **kwargs)
    assert mir.sizes() == {"query": 100, "database": 700, "train": 500}
    assert nus.sizes() == {"query": 100, "database": 700, "train": 200}
    np.testing.assert_array_equal(nus.query, mir.query)  # the top-up draws after the rest
    assert np.isin(nus.train, mir.train).all()


def test_config_splits_djsrh_needs_the_labels():
    labels = _labels(num_items=1200, num_labels=4)
    config = ml_collections.ConfigDict({"name": "synthetic", "num_query": 250, "num_train": 500,
                                        "split_seed": 2, "split_protocol": "djsrh"})
    got = splits_lib.config_splits(config, 1200, labels=labels)
    want = splits_lib.djsrh_splits(labels, seed=2, **splits_lib.djsrh_counts(
        "synthetic", 4, 250, 500)._asdict())
    np.testing.assert_array_equal(got.query, want.query)
    assert got.sizes()["train"] == 500
    with pytest.raises(ValueError, match="no labels were given"):
        splits_lib.config_splits(config, 1200)
    with pytest.raises(ValueError, match="samples per label"):
        splits_lib.protocol_splits("djsrh", 1200, 250, 500, seed=0)
