"""The captions-and-labels cache beside a build: written once, equal to the shards, rebuilt
when unusable."""

import os

import numpy as np
import pytest

from fjsph_jax.data import captions_cache, testing
from fjsph_jax.data.inmemory import example_captions
from fjsph_jax.data.tfds_builders import build_dataset


@pytest.fixture()
def built(tmp_path):
    rows = testing.make_rows(9, 4, size=16, seed=5)
    testing.write_text_files(str(tmp_path / "src"), rows, sentences=True)
    return build_dataset("coco", str(tmp_path / "src"), data_dir=str(tmp_path / "tfds"), workers=1)


def _from_shards(built):
    source = built.data_source()
    examples = [source[r] for r in range(len(source))]
    return ([example_captions(e) for e in examples],
            np.stack([np.asarray(e["labels"], np.uint8) for e in examples]))


def test_cache_is_written_once_and_equals_the_shards(built, monkeypatch):
    want_captions, want_labels = _from_shards(built)
    assert any(len(c) > 1 for c in want_captions)  # several captions per row survive
    captions, labels = captions_cache.captions_and_labels(built)
    path = os.path.join(built.directory, captions_cache.CACHE_FILE)
    assert os.path.exists(path)
    assert captions == want_captions
    np.testing.assert_array_equal(labels, want_labels)

    def no_shard_reads(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(type(built), "data_source", no_shard_reads)
    again, again_labels = captions_cache.captions_and_labels(built)
    assert again == want_captions
    np.testing.assert_array_equal(again_labels, want_labels)


@pytest.mark.parametrize("damage", ["garbage", "wrong_rows"])
def test_unusable_cache_is_read_again_and_rewritten(built, damage, caplog):
    path = os.path.join(built.directory, captions_cache.CACHE_FILE)
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not an npz")
    else:
        np.savez(path, text_bytes=np.zeros(3, np.uint8), offsets=np.array([0, 1, 3]),
                 labels=np.zeros((2, 4), np.uint8))  # path ends in .npz: written as named
    captions, labels = captions_cache.captions_and_labels(built)
    assert "caption cache" in caplog.text and "unusable" in caplog.text
    want_captions, want_labels = _from_shards(built)
    assert captions == want_captions
    np.testing.assert_array_equal(labels, want_labels)
    with np.load(path) as data:  # rewritten whole
        assert data["offsets"].shape == (len(built) + 1,)
