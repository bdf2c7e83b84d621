"""normalize_images: (x / 255 - mean) / std per channel."""
import numpy as np

from fjsph_jax.data.preprocess import CLIP_MEAN, CLIP_STD, normalize_images


def test_matches_numpy_formula():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    got = np.asarray(normalize_images(images, CLIP_MEAN, CLIP_STD))
    expected = (images / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32


def test_extremes_with_half_mean_and_std():
    images = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1).repeat(3, axis=-1)
    got = np.asarray(normalize_images(images, (0.5,) * 3, (0.5,) * 3))
    np.testing.assert_allclose(got[:, 0, 0, 0], [-1.0, 1.0], atol=1e-6)
