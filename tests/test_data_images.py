"""Tests for fjsph_jax.data.images: decode, resize / crop, JPEG checks."""

import io

import numpy as np
import pytest
from PIL import Image

from fjsph_jax.data import images


def two_colour_image(height=20, width=40):
    """Left half red, right half blue: uint8 [H, W, 3]."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)
    image[:, width // 2 :] = (0, 0, 255)
    return image


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_center_crop_keeps_the_central_square():
    # 20 x 40: the central 20 x 20 square spans columns 10..30, half red, half blue.
    out = images.resize_image(two_colour_image(), 10, "center_crop")
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[:, :4], np.broadcast_to([255, 0, 0], (10, 4, 3)), atol=3)
    np.testing.assert_allclose(out[:, 6:], np.broadcast_to([0, 0, 255], (10, 4, 3)), atol=3)


def test_center_crop_of_an_off_centre_stripe():
    # 20 x 40 with red only in columns 0..6: well outside the central square (10..30).
    image = np.full((20, 40, 3), 128, np.uint8)
    image[:, :6] = (255, 0, 0)
    out = images.resize_image(image, 8, "center_crop")
    np.testing.assert_allclose(out, np.full((8, 8, 3), 128), atol=2)
    squashed = images.resize_image(image, 8, "squash")  # the whole width: red on the left
    np.testing.assert_allclose(squashed[:, 0], np.broadcast_to([255, 0, 0], (8, 3)), atol=3)


def test_decode_resized_matches_decode_then_resize_for_png():
    image = two_colour_image()
    data = png_bytes(image)
    np.testing.assert_array_equal(images.decode_rgb(data), image)
    np.testing.assert_array_equal(images.decode_resized(data, 10), images.resize_image(image, 10))


def test_jpeg_draft_decode_keeps_the_requested_size():
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    data = images.encode_jpeg(image)
    small = images.decode_rgb(data, min_side=40)
    assert min(small.shape[:2]) >= 40 and small.shape[0] < 200  # decoded at reduced scale
    assert images.decode_resized(data, 40).shape == (40, 40, 3)


def test_as_jpeg_keeps_jpeg_bytes_and_converts_other_formats():
    image = two_colour_image()
    jpeg = images.encode_jpeg(image)
    assert images.as_jpeg(jpeg) is jpeg
    converted = images.as_jpeg(png_bytes(image))
    assert images.is_jpeg(converted)
    error = np.abs(images.decode_rgb(converted).astype(int) - image)
    assert error.mean() < 8  # lossy, but the same picture (chroma blurs at the red/blue edge)
    grey = np.full((8, 8), 77, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    assert images.decode_rgb(buffer.getvalue()).shape == (8, 8, 3)


def test_unreadable_and_truncated_images_raise():
    with pytest.raises(images.UnreadableImageError):
        images.check_image(b"definitely not an image")
    jpeg = images.encode_jpeg(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    with pytest.raises(images.UnreadableImageError):
        images.as_jpeg(jpeg[: len(jpeg) // 2])
    assert images.check_image(jpeg) == (64, 64)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="resize mode 'stretch'"):
        images.resize_image(two_colour_image(), 8, "stretch")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        images.decode_resized(png_bytes(two_colour_image()), 0)
