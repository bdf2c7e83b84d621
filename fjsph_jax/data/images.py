"""Encoded images: validate, decode, resize and crop, re-encode (Pillow, on the host).

Resizing follows the CLIP preprocessing: ``center_crop`` scales the image so its shorter
side is ``size`` (bicubic) and keeps the central ``size x size`` square, done in one
Pillow call by resizing the central square of side ``min(H, W)``; ``squash`` resizes the
whole image to ``size x size`` (the baselines' evaluation transform). JPEGs are decoded
at a reduced DCT scale when the target is small (``Image.draft``), which reads the whole
entropy-coded stream (a truncated file still fails) but is several times faster.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

RESIZE_MODES = ("center_crop", "squash")
JPEG_QUALITY = 95  # used only when a source image is not a JPEG already
_JPEG_SIGNATURE = b"\xff\xd8\xff"


class UnreadableImageError(ValueError):
    """The bytes are not a decodable image."""


def is_jpeg(data: bytes) -> bool:
    """True if ``data`` starts with the JPEG SOI marker."""
    return data[:3] == _JPEG_SIGNATURE


def _open(data: bytes, min_side: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": not an error here
            image = Image.open(io.BytesIO(data))
            if min_side is not None and image.format == "JPEG":
                w, h = image.size
                scale = min_side / max(1, min(w, h))
                image.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
            image.load()
        return image.convert("RGB") if image.mode != "RGB" else image
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise UnreadableImageError(f"cannot decode image: {error}") from error


def decode_rgb(data: bytes, *, min_side: int | None = None) -> np.ndarray:
    """Decode to uint8 ``[H, W, 3]``; with ``min_side`` a JPEG may come back smaller, but
    with its shorter side still ``>= min_side``. Raises UnreadableImageError."""
    return np.asarray(_open(data, min_side))


def check_image(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of a fully decodable image; UnreadableImageError otherwise."""
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception as error:
        raise UnreadableImageError(f"cannot decode image: {error}") from error
    _open(data, min_side=16)  # decodes everything (at reduced scale for a JPEG)
    return height, width


def _resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is unknown; allowed: {RESIZE_MODES}")
    w, h = image.size
    if mode == "squash":
        box = (0, 0, w, h)
    else:
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def resize_image(image_hwc: np.ndarray, size: int, mode: str = "center_crop") -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` by ``mode`` (see the module doc)."""
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return np.asarray(_resize(Image.fromarray(np.asarray(image_hwc, np.uint8)), int(size), mode))


def decode_resized(data: bytes, size: int, mode: str = "center_crop") -> np.ndarray:
    """Encoded image -> uint8 ``[size, size, 3]`` (decode at reduced scale, then resize)."""
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return np.asarray(_resize(_open(data, min_side=int(size)), int(size), mode))


def encode_jpeg(image_hwc: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 ``[H, W, 3]`` -> JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_hwc, np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def as_jpeg(data: bytes) -> bytes:
    """Checked JPEG bytes: a decodable JPEG is returned unchanged, any other decodable image
    (PNG, GIF, ...) is re-encoded; UnreadableImageError if ``data`` cannot be decoded."""
    if is_jpeg(data):
        check_image(data)
        return data
    return encode_jpeg(decode_rgb(data))
