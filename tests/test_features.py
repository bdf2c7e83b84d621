"""Frozen-encoder feature cache: computed once, reused, rebuilt when corrupt."""
import numpy as np

from fjsph_jax import features, parallel
from fjsph_jax.methods.fjsph import build
from tiny import tiny_config


def test_compute_features_shapes_and_cache(tmp_path):
    config = tiny_config()
    encoders = build.build_model(config, vocab_size=20, with_encoders=True, seed=0)
    rng = np.random.default_rng(0)
    inputs = {"images": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
              "input_ids": rng.integers(4, 20, (10, 12)).astype(np.int32),
              "attention_mask": np.ones((10, 12), np.int32)}
    calls = []

    def compute():
        calls.append(1)
        return features.compute_features(encoders, inputs, image_mean=(0.5,) * 3,
                                         image_std=(0.5,) * 3, batch_size=4,
                                         mesh=parallel.make_mesh())

    path = str(tmp_path / "features.npz")
    first = features.cached_features(path, compute)
    assert first["image_features"].shape == (10, 32) == first["text_features"].shape
    second = features.cached_features(path, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["image_features"], second["image_features"])
    (tmp_path / "features.npz").write_bytes(b"not an npz")
    third = features.cached_features(path, compute)
    assert len(calls) == 2
    np.testing.assert_allclose(third["text_features"], first["text_features"], atol=1e-6)


def test_fingerprint_changes_with_what_determines_features():
    base = features.features_fingerprint(tiny_config(), 100)
    assert features.features_fingerprint(tiny_config(), 100) == base
    assert features.features_fingerprint(tiny_config(seed=3), 100) != base
    assert features.features_fingerprint(tiny_config(), 101) != base
    assert features.features_fingerprint(tiny_config(bits=64), 100) == base  # heads only
