"""prepare_training_data: the memory and stream loaders read the same rows the same way."""

import numpy as np
import pytest
from tiny import tiny_built_config as built_config
from tiny import tiny_config, write_tiny_mirflickr

from fjsph_jax import inputs, parallel
from fjsph_jax.data.loaders import ArrayRows
from fjsph_jax.data.pipeline import ExampleEncoder


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    return write_tiny_mirflickr(tmp_path_factory.mktemp("inputs"))


def test_memory_and_stream_loaders_agree(source_dir, tmp_path):
    mesh = parallel.make_mesh()
    memory = inputs.prepare_training_data(
        built_config(source_dir, **{"data.loader": "memory"}), str(tmp_path / "m"), mesh
    )
    stream = inputs.prepare_training_data(
        built_config(source_dir, **{"data.loader": "stream"}), str(tmp_path / "s"), mesh
    )
    assert isinstance(memory.load_rows, ArrayRows) and memory.loader == "memory"
    assert isinstance(stream.load_rows, ExampleEncoder) and stream.loader == "stream"
    assert stream.num_items == memory.num_items == 40
    for part in ("query", "database", "train"):
        np.testing.assert_array_equal(getattr(stream.splits, part), getattr(memory.splits, part))
    np.testing.assert_array_equal(stream.labels, memory.labels)
    assert stream.label_names == memory.label_names
    assert stream.tokenizer == memory.tokenizer and stream.vocab_size == memory.vocab_size
    rows = np.array([39, 0, 17, 17])
    got, want = stream.load_rows(rows), memory.load_rows(rows)
    assert sorted(got) == sorted(want) == ["attention_mask", "images", "input_ids"]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert want["images"].shape == (4, 32, 32, 3)


def test_frozen_encoder_features_are_the_same_from_either_loader(source_dir, tmp_path):
    mesh = parallel.make_mesh()
    results = {}
    for loader in ("memory", "stream"):
        config = built_config(
            source_dir, **{"data.loader": loader, "train.mode": "frozen_encoder"}
        )
        data = inputs.prepare_training_data(config, str(tmp_path / loader), mesh,
                                            input_kind="features")
        assert isinstance(data.load_rows, ArrayRows)
        assert data.input_kind == "features" and data.feature_dims == (32, 32)
        assert list((tmp_path / loader).glob("features-*.npz"))
        results[loader] = data.load_rows(np.arange(40))
    for key in ("image_features", "text_features"):
        assert results["stream"][key].shape == (40, 32)
        np.testing.assert_allclose(results["stream"][key], results["memory"][key], atol=1e-6)


def test_stream_needs_a_built_dataset(tmp_path):
    config = tiny_config(**{"data.loader": "stream"})
    with pytest.raises(ValueError, match=r"loader='stream' reads a built dataset"):
        inputs.prepare_training_data(config, str(tmp_path), parallel.make_mesh())
    with pytest.raises(ValueError, match=r"config.data.loader='disk' is not supported"):
        inputs.prepare_training_data(
            tiny_config(**{"data.loader": "disk"}), str(tmp_path), parallel.make_mesh()
        )
