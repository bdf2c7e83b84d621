"""A built dataset read whole into a :class:`PairedDataset` (images decoded and resized).

For datasets that fit in host memory at the training resolution (MIRFlickr-25K at 224 px
is 3 GB of uint8): every JPEG is decoded at reduced scale, resized and centre-cropped to
``image_size`` on a thread pool (Pillow releases the GIL), and one caption per row is
chosen by :func:`select_caption`. Larger datasets stream through
:mod:`fjsph_jax.data.pipeline` instead.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from fjsph_jax.data import images as images_lib
from fjsph_jax.data.dataset import PairedDataset

CAPTION_CHOICES = ("first", "random")
_CHUNK = 256  # rows read per round; their images are decoded in parallel


def example_captions(example: dict) -> list[str]:
    """The captions of a built example (``captions`` is "\\n"-joined UTF-8)."""
    value = example["captions"]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return [c for c in text.split("\n") if c.strip()]


def check_caption_choice(choice) -> None:
    """ValueError unless ``choice`` is "first", "random" or a caption index >= 0."""
    if isinstance(choice, str) and choice in CAPTION_CHOICES:
        return
    try:
        ok = int(choice) >= 0 and not isinstance(choice, bool) and float(choice) == int(choice)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"config.data.caption={choice!r} is not supported; allowed: 'first', "
            "'random' (one per image, seeded), or a caption index 0, 1, ..."
        )


def select_caption(captions: list[str], choice, *, seed: int, row: int) -> str:
    """One caption of a row: the first, the ``choice``-th (the last if fewer), or a random one
    drawn from ``numpy.random.default_rng([seed, row])`` (the same for every read)."""
    check_caption_choice(choice)
    if not captions:
        raise ValueError(f"row {row} has no caption")
    if choice == "first":
        return captions[0]
    if choice == "random":
        return captions[int(np.random.default_rng([seed, row]).integers(len(captions)))]
    return captions[min(int(choice), len(captions) - 1)]


def read_paired_dataset(
    built,
    *,
    image_size: int,
    resize_mode: str = "center_crop",
    caption="first",
    seed: int = 0,
    workers: int | None = None,
    name: str | None = None,
) -> PairedDataset:
    """All rows of ``built`` (a :class:`~fjsph_jax.data.tfds_builders.BuiltDataset`) as a
    PairedDataset with images uint8 ``[N, image_size, image_size, 3]``."""
    check_caption_choice(caption)
    if resize_mode not in images_lib.RESIZE_MODES:
        raise ValueError(
            f"config.data.resize={resize_mode!r} is unknown; allowed: {images_lib.RESIZE_MODES}"
        )
    source = built.data_source()
    num = len(source)
    images = np.empty((num, image_size, image_size, 3), np.uint8)
    texts: list[str] = [""] * num
    labels: list[np.ndarray] = [None] * num  # type: ignore[list-item]

    def decode(row_and_data) -> None:
        row, data = row_and_data
        images[row] = images_lib.decode_resized(data, image_size, resize_mode)

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for start in range(0, num, _CHUNK):
            rows = range(start, min(num, start + _CHUNK))
            examples = [source[row] for row in rows]  # records are read on this thread
            for row, example in zip(rows, examples):
                texts[row] = select_caption(example_captions(example), caption, seed=seed, row=row)
                labels[row] = np.asarray(example["labels"], np.uint8)
            list(pool.map(decode, [(row, ex["image"]) for row, ex in zip(rows, examples)]))
    return PairedDataset(
        name=name or built.dataset,
        images=images,
        texts=texts,
        labels=np.stack(labels) if labels else np.zeros((0, 0), np.uint8),
        label_names=built.label_names,
    )


def read_texts_and_labels(
    built, rows=None, *, caption="first", seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Texts and uint8 labels ``[M, C]`` of ``rows`` (default: all), without decoding images.

    What the streaming path needs up front: the tokenizer's vocabulary and the label
    similarity come from the training rows' texts and labels. The captions and labels of
    all rows are read once and cached beside the build
    (:func:`fjsph_jax.data.captions_cache.captions_and_labels`).
    """
    from fjsph_jax.data.captions_cache import captions_and_labels

    check_caption_choice(caption)
    captions, all_labels = captions_and_labels(built)
    rows = range(len(captions)) if rows is None else [int(r) for r in np.asarray(rows).tolist()]
    texts = [select_caption(captions[row], caption, seed=seed, row=row) for row in rows]
    return texts, all_labels[list(rows)] if len(all_labels) else all_labels
