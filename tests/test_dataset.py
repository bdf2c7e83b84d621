"""Tests for fjsph_jax.data.dataset: PairedDataset validation and the split protocol."""

import numpy as np
import pytest

from fjsph_jax.data.dataset import PairedDataset, Splits, make_splits


def make_rows(n=4, num_classes=3, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    texts = [f"caption {i}" for i in range(n)]
    labels = np.zeros((n, num_classes), np.uint8)
    labels[np.arange(n), np.arange(n) % num_classes] = 1
    names = [f"class{c}" for c in range(num_classes)]
    return dict(name="toy", images=images, texts=texts, labels=labels, label_names=names)


def test_valid_dataset_len_and_num_classes():
    dataset = PairedDataset(**make_rows(n=5, num_classes=3))
    assert len(dataset) == 5
    assert dataset.num_classes == 3
    dataset.validate()  # idempotent


def test_subset_takes_the_same_rows_of_every_field():
    rows = make_rows(n=6)
    part = PairedDataset(**rows).subset(np.array([4, 1]))
    assert len(part) == 2 and part.texts == ["caption 4", "caption 1"]
    np.testing.assert_array_equal(part.images, rows["images"][[4, 1]])
    np.testing.assert_array_equal(part.labels, rows["labels"][[4, 1]])
    assert part.label_names == rows["label_names"]


def test_mismatched_row_counts_name_each_field():
    rows = make_rows(n=4)
    rows["texts"] = rows["texts"][:3]
    with pytest.raises(ValueError, match=r"images=4, texts=3, labels=4"):
        PairedDataset(**rows)
    rows = make_rows(n=4)
    rows["labels"] = rows["labels"][:2]
    with pytest.raises(ValueError, match=r"images=4, texts=4, labels=2"):
        PairedDataset(**rows)


def test_empty_text_names_the_row():
    rows = make_rows(n=4)
    rows["texts"][2] = "   "
    with pytest.raises(ValueError, match=r"texts\[2\] is empty"):
        PairedDataset(**rows)


def test_label_rows_without_positive_give_count_and_first_rows():
    rows = make_rows(n=5)
    rows["labels"][[1, 3]] = 0
    with pytest.raises(ValueError, match=r"2 label rows have no positive.*\[1, 3\]"):
        PairedDataset(**rows)


@pytest.mark.parametrize("field, value, message", [
    ("images", np.zeros((4, 8, 8, 3), np.float32), "uint8"),
    ("images", np.zeros((4, 8, 8), np.uint8), r"\[N, H, W, 3\]"),
    ("images", np.zeros((4, 8, 8, 1), np.uint8), r"\[N, H, W, 3\]"),
    ("labels", np.ones(4, np.uint8), "2-D"),
    ("labels", np.ones((4, 3), np.int32), "uint8"),
    ("labels", np.full((4, 3), 2, np.uint8), r"\{0, 1\}"),
    ("label_names", ["a", "b"], "label_names has 2"),
    ("texts", "one string", "list of str"),
])
def test_malformed_fields_raise(field, value, message):
    rows = make_rows(n=4, num_classes=3)
    rows[field] = value
    with pytest.raises(ValueError, match=message):
        PairedDataset(**rows)


def test_splits_follow_the_protocol():
    splits = make_splits(100, num_query=20, num_train=50, seed=0)
    assert isinstance(splits, Splits)
    assert splits.sizes() == {"query": 20, "database": 80, "train": 50}
    for part in (splits.query, splits.database, splits.train):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    assert np.intersect1d(splits.query, splits.database).size == 0
    np.testing.assert_array_equal(np.union1d(splits.query, splits.database), np.arange(100))
    assert np.isin(splits.train, splits.database).all()
    # Random, not the first items.
    assert not np.array_equal(splits.query, np.arange(20))


def test_splits_are_deterministic_from_seed():
    a, b = make_splits(50, 10, 30, seed=7), make_splits(50, 10, 30, seed=7)
    c = make_splits(50, 10, 30, seed=8)
    for field in ("query", "database", "train"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.query, c.query)


def test_training_set_may_be_the_whole_database():
    splits = make_splits(10, 3, 7, seed=0)
    np.testing.assert_array_equal(splits.train, splits.database)


@pytest.mark.parametrize("args, message", [
    ((10, 10, 1), r"num_query must be < num_items=10"),
    ((10, 4, 7), r"num_train must be <= num_items - num_query = 6"),
    ((10, 0, 5), "num_query must be a positive integer"),
    ((10, 3, 0), "num_train must be a positive integer"),
    ((0, 3, 2), "num_items must be a positive integer"),
    ((10, 2.5, 2), "num_query must be a positive integer"),
])
def test_split_sizes_that_do_not_fit_raise(args, message):
    with pytest.raises(ValueError, match=message):
        make_splits(*args, seed=0)
