"""Tests for fjsph_jax.data.sources on the real 730-pair MIRFlickr subset."""

import os

import ml_collections
import numpy as np
import pytest

from fjsph_jax.data import images
from fjsph_jax.data.sources import DatasetNotFoundError, load_dataset, load_splits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO_ROOT, "..", "shared", "data", "mirflickr25k-mini")
needs_mini = pytest.mark.skipif(
    not os.path.isdir(MINI), reason=f"the 730-pair MIRFlickr subset is not at {MINI}"
)


def data_config(tmp_path, **overrides):
    config = ml_collections.ConfigDict(
        {
            "name": "mirflickr",
            "manual_dir": MINI,
            "data_dir": str(tmp_path / "tfds"),
            "image_root": "",
            "image_size": 24,
            "num_query": 100,
            "num_train": 400,
            "split_seed": 0,
            "split_protocol": "small",
            "caption": "first",
            "resize": "center_crop",
            "min_tag_count": 20,
            "num_items": 0,
        }
    )
    config.update(overrides)
    return config


@needs_mini
def test_mini_mirflickr_loads_equal_to_its_files(tmp_path):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    config = data_config(tmp_path)
    dataset = load_dataset(config, seed=0)

    def lines(name):
        with open(os.path.join(MINI, name), encoding="utf-8") as f:
            return f.read().splitlines()

    assert len(dataset) == 730 and dataset.name == "mirflickr"
    assert dataset.texts == [" ".join(line.split(",")) for line in lines("all_tags.txt")]
    np.testing.assert_array_equal(
        dataset.labels, np.array([line.split() for line in lines("all_labels.txt")], np.uint8)
    )
    assert dataset.label_names == lines("label_names.txt")
    assert dataset.images.shape == (730, 24, 24, 3)
    for row in (0, 411, 729):  # pixels: the file decoded and centre-cropped to 24 px
        with open(os.path.join(MINI, lines("all_imgs.txt")[row]), "rb") as f:
            np.testing.assert_array_equal(dataset.images[row], images.decode_resized(f.read(), 24))

    splits = load_splits(config, dataset)
    assert splits.sizes() == {"query": 73, "database": 657, "train": 438}
    recorded = [
        os.path.join(root, f)
        for root, _, fs in os.walk(tmp_path / "tfds")
        for f in fs
        if f.startswith("small-q73-t438-seed0")
    ]
    assert len(recorded) == 1


def test_missing_manual_dir_names_it(tmp_path):
    config = data_config(tmp_path, manual_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*does not exist.*docs/datasets.md"):
        load_dataset(config, seed=0)
    with pytest.raises(DatasetNotFoundError, match="manual_dir is empty"):
        load_dataset(data_config(tmp_path, manual_dir=""), seed=0)


def test_directory_without_a_layout_gives_the_download_instructions(tmp_path):
    (tmp_path / "empty").mkdir()
    config = data_config(tmp_path, name="coco", manual_dir=str(tmp_path / "empty"))
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)no complete dataset layout.*cocodataset.org"
    ):
        load_dataset(config, seed=0)


def test_synthetic_path_is_unchanged(tmp_path):
    config = ml_collections.ConfigDict({"name": "synthetic", "num_items": 12, "image_size": 16})
    assert len(load_dataset(config, seed=0)) == 12
    with pytest.raises(ValueError, match="config.data.name='flickr'"):
        load_dataset(ml_collections.ConfigDict({"name": "flickr"}), seed=0)
