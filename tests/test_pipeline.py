"""Tests for fjsph_jax.data.pipeline: grain batches equal the in-memory loop's batches."""

import numpy as np
import pytest

from fjsph_jax import parallel
from fjsph_jax.data import images, pipeline, testing
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.data.inmemory import read_paired_dataset, read_texts_and_labels
from fjsph_jax.data.tfds_builders import build_dataset
from fjsph_jax.data.tokenizer import WordTokenizer

SIZE, LENGTH = 12, 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("pipeline")
    rows = testing.make_rows(26, 5, size=16, seed=21)
    testing.write_text_files(str(root / "src"), rows, sentences=True)
    return build_dataset("coco", str(root / "src"), data_dir=str(root / "tfds"), workers=2)


@pytest.fixture(scope="module")
def in_memory(built):
    return read_paired_dataset(built, image_size=SIZE, caption="random", seed=4)


@pytest.fixture(scope="module")
def encoder(built, in_memory):
    tokenizer = WordTokenizer.from_texts(in_memory.texts)
    return pipeline.ExampleEncoder(
        built.data_source(), tokenizer, SIZE, LENGTH, caption="random", caption_seed=4
    )


def test_encoder_matches_decoding_by_hand(built, encoder, in_memory):
    rows = np.array([3, 0, 17])
    batch = encoder(rows)
    source = built.data_source()
    for k, row in enumerate(rows):
        np.testing.assert_array_equal(
            batch["images"][k], images.decode_resized(source[int(row)]["image"], SIZE)
        )
    ids, mask = encoder.tokenizer.encode([in_memory.texts[r] for r in rows], LENGTH)
    np.testing.assert_array_equal(batch["input_ids"], ids)
    np.testing.assert_array_equal(batch["attention_mask"], mask)
    np.testing.assert_array_equal(batch["labels"], in_memory.labels[rows])
    assert batch["images"].dtype == np.uint8 and batch["input_ids"].dtype == np.int32


def test_encoder_can_normalise_on_the_host(built, encoder):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    normalising = pipeline.ExampleEncoder(
        built.data_source(), encoder.tokenizer, SIZE, LENGTH, image_mean=mean, image_std=std
    )
    raw = encoder(np.array([5]))["images"].astype(np.float32)
    np.testing.assert_allclose(
        normalising(np.array([5]))["images"],
        (raw / 255.0 - np.array(mean)) / np.array(std),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="both image_mean and image_std"):
        pipeline.ExampleEncoder(None, None, SIZE, LENGTH, image_mean=mean)
    with pytest.raises(ValueError, match="config.data.caption='last'"):
        pipeline.ExampleEncoder(None, None, SIZE, LENGTH, caption="last")


def test_step_batches_are_the_in_memory_batches(encoder, in_memory):
    train_rows = np.array([1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 19, 20, 22, 25])
    dataset = pipeline.train_batches(
        encoder, train_rows, global_batch_size=4, seed=9, num_steps=8, host_rows=slice(1, 3)
    )
    batcher = EpochBatcher(len(train_rows), 4, 9)
    assert len(dataset) == 8
    for step in (0, 3, 5):  # steps of epoch 0 and epoch 1 (3 steps per epoch)
        positions = batcher.indices(step)[1:3]
        batch = dataset[step]
        np.testing.assert_array_equal(batch["index"], positions)
        np.testing.assert_array_equal(batch["images"], in_memory.images[train_rows[positions]])
        np.testing.assert_array_equal(batch["labels"], in_memory.labels[train_rows[positions]])


def test_mesh_iterator_gives_global_arrays_and_resumes(encoder):
    mesh = parallel.make_mesh()
    train_rows = np.arange(0, 26, 1)
    dataset = pipeline.train_batches(encoder, train_rows, global_batch_size=8, seed=0, num_steps=6)
    iterator = pipeline.MeshBatchIterator(dataset, mesh, start_step=0, read_threads=2)
    first = [next(iterator) for _ in range(3)]
    assert iterator.get_state() == {"step": 3}
    batch = first[1]
    assert batch["images"].shape == (8, SIZE, SIZE, 3)
    assert batch["images"].sharding.spec == parallel.batch_sharding(mesh).spec
    np.testing.assert_array_equal(np.asarray(batch["images"]), dataset[1]["images"])
    rest = [np.asarray(next(iterator)["index"]) for _ in range(3)]
    with pytest.raises(StopIteration):
        next(iterator)
    resumed = pipeline.MeshBatchIterator(dataset, mesh)
    resumed.set_state({"step": 3})  # as restored from a checkpoint
    for expected in rest:
        np.testing.assert_array_equal(np.asarray(next(resumed)["index"]), expected)
    iterator.close()
    resumed.close()


def test_row_batches_cover_the_rows_in_order(encoder, in_memory):
    rows = np.array([25, 3, 9, 0, 14])
    batches = list(pipeline.row_batches(encoder, rows, 2))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(
        np.concatenate([b["images"] for b in batches]), in_memory.images[rows]
    )


def test_texts_and_labels_without_images(built, in_memory):
    rows = np.array([7, 2, 19])
    texts, labels = read_texts_and_labels(built, rows, caption="random", seed=4)
    assert texts == [in_memory.texts[r] for r in rows]
    np.testing.assert_array_equal(labels, in_memory.labels[rows])
    all_texts, _ = read_texts_and_labels(built)
    assert len(all_texts) == len(in_memory)


def test_encoder_from_config_takes_the_data_settings(built):
    import ml_collections

    data = ml_collections.ConfigDict({
        "image_size": 20, "context_length": 7, "resize": "squash", "caption": "random",
        "split_seed": 9,
    })
    tokenizer = WordTokenizer.from_texts(["a b c"])
    encoder = pipeline.ExampleEncoder.from_config(data, built.data_source(), tokenizer,
                                                  with_labels=False)
    assert (encoder.image_size, encoder.context_length, encoder.resize_mode) == (20, 7, "squash")
    assert (encoder.caption, encoder.caption_seed, encoder.with_labels) == ("random", 9, False)
    batch = encoder(np.array([1, 2]))
    assert "labels" not in batch and batch["images"].shape == (2, 20, 20, 3)
    assert batch["input_ids"].shape == (2, 7)
    sized = pipeline.ExampleEncoder.from_config(data, built.data_source(), tokenizer, image_size=8)
    assert sized.image_size == 8 and sized.with_labels
