"""Every row's captions and labels of a built dataset, read once and cached beside it.

The streamed training path needs all texts (for the tokenizer's vocabulary) and all labels
(for the label similarity) before its first step, but not the images. Reading them from the
ArrayRecord shards means reading every record, JPEG bytes included (~0.25 ms per row here:
about 50 s for NUS-WIDE's 190k rows), at every start of training or encoding. So the first
read writes ``<build directory>/captions_labels.npz``:

    text_bytes  uint8 [total]   the rows' "\\n"-joined captions, UTF-8, concatenated
    offsets     int64 [N + 1]   row r is text_bytes[offsets[r]:offsets[r + 1]]
    labels      uint8 [N, C]

(no pickled objects), written atomically; later reads load it in well under a second. A
file that is unreadable or whose row count disagrees with the build is ignored and
rewritten, with a warning.
"""

from __future__ import annotations

import logging
import os

import numpy as np

CACHE_FILE = "captions_labels.npz"
_LOG_EVERY = 20000  # rows between progress lines while reading the shards


def _split_captions(text: str) -> list[str]:
    return [c for c in text.split("\n") if c.strip()]


def _read_cache(path: str, num_rows: int) -> tuple[list[list[str]], np.ndarray] | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            text_bytes, offsets, labels = data["text_bytes"], data["offsets"], data["labels"]
        if offsets.shape != (num_rows + 1,) or labels.shape[0] != num_rows:
            raise ValueError(f"{len(offsets) - 1} rows cached, the build has {num_rows}")
        raw = text_bytes.tobytes()
        captions = [
            _split_captions(raw[offsets[r] : offsets[r + 1]].decode("utf-8"))
            for r in range(num_rows)
        ]
        return captions, labels
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as error:
        logging.warning("caption cache %s is unusable (%s): reading the shards again", path, error)
        return None


def _write_cache(path: str, joined: list[bytes], labels: np.ndarray) -> None:
    offsets = np.zeros(len(joined) + 1, np.int64)
    np.cumsum([len(b) for b in joined], out=offsets[1:])
    text_bytes = np.frombuffer(b"".join(joined), np.uint8)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
        np.savez(tmp, text_bytes=text_bytes, offsets=offsets, labels=labels)
        os.replace(tmp, path)
    except OSError as error:  # a read-only data dir: keep going without the cache
        logging.warning("could not write the caption cache %s (%s)", path, error)


def captions_and_labels(built) -> tuple[list[list[str]], np.ndarray]:
    """``(captions, labels)`` of every row of ``built`` (a BuiltDataset): ``captions[r]`` the
    row's non-empty captions, ``labels`` uint8 ``[N, C]``; from the cache when present."""
    num_rows = len(built)
    path = os.path.join(built.directory, CACHE_FILE)
    cached = _read_cache(path, num_rows)
    if cached is not None:
        return cached
    logging.info("reading the captions and labels of %d rows from %s", num_rows, built.directory)
    source = built.data_source()
    joined, labels = [], []
    for row in range(num_rows):
        example = source[row]
        value = example["captions"]
        joined.append(value if isinstance(value, bytes) else str(value).encode("utf-8"))
        labels.append(np.asarray(example["labels"], np.uint8))
        if (row + 1) % _LOG_EVERY == 0:
            logging.info("  %d / %d rows", row + 1, num_rows)
    labels = np.stack(labels) if labels else np.zeros((0, 0), np.uint8)
    _write_cache(path, joined, labels)
    return [_split_captions(b.decode("utf-8")) for b in joined], labels
