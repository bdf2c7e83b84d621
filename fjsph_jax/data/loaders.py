"""Row loaders: the one interface through which training, evaluation and feature caching
read a dataset.

A *row loader* is any callable ``load(rows) -> dict[str, np.ndarray]`` that maps dataset
rows (int ``[B]``) to host arrays ``[B, ...]`` (model inputs such as ``images``,
``input_ids``, ``attention_mask``, or cached ``image_features`` / ``text_features``).
Two kinds exist:

* :class:`ArrayRows` - everything already in host memory (the embedded synthetic scenes,
  a real dataset decoded up front, cached frozen-encoder features): ``load`` is a gather.
* :class:`fjsph_jax.data.pipeline.ExampleEncoder` - rows read from the ArrayRecord build
  and decoded, resized and tokenised on demand (``config.data.loader = "stream"``).

Loaders must be thread-safe: :func:`prefetched` and grain call them from worker threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

RowLoader = Callable[[np.ndarray], dict]


class ArrayRows:
    """Row loader over in-memory arrays: ``load(rows) = {k: arrays[k][rows]}``.

    Args:
      arrays: name -> ``[N, ...]`` array, every array with the same N.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        sizes = {name: len(array) for name, array in arrays.items()}
        if not sizes:
            raise ValueError("ArrayRows needs at least one array")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays disagree on their number of rows: {sizes}")
        self.arrays = dict(arrays)
        self.num_rows = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.num_rows

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        return {name: array[rows] for name, array in self.arrays.items()}


def as_row_loader(source: RowLoader | Mapping[str, np.ndarray]) -> RowLoader:
    """A mapping of arrays becomes :class:`ArrayRows`; a callable is returned as it is."""
    if isinstance(source, Mapping):
        return ArrayRows(source)
    if not callable(source):
        raise TypeError(f"expected a row loader (callable) or a mapping of arrays, got {source!r}")
    return source


def prefetched(
    load: RowLoader, row_batches: Iterable[np.ndarray], *, depth: int = 2
) -> Iterator[dict[str, np.ndarray]]:
    """``load(rows)`` for each batch of rows, in order, with up to ``depth`` batches loaded
    ahead on worker threads (decoding overlaps the device work of the consumer).

    ``depth <= 0`` loads synchronously.
    """
    if depth <= 0:
        for rows in row_batches:
            yield load(rows)
        return
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max_workers=depth) as pool:
        for rows in row_batches:
            pending.append(pool.submit(load, rows))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
