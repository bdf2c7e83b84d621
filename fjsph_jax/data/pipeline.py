"""Streaming input pipeline over a built dataset (grain): decode, resize, tokenise, batch.

For datasets too large to hold decoded in memory (COCO at 224 px), batches are read from
the ArrayRecord build on demand. The batch order is exactly the in-memory loop's
(:class:`fjsph_jax.data.batches.EpochBatcher`): the global batch of step ``s`` is rows
``train[perm_e[...]]`` of a per-epoch permutation seeded by ``(seed, epoch)``, and each
process loads only its slice of it (``parallel.host_slice``, per-host sharding). So the
data position is the step, a resumed run sees the batches an uninterrupted run sees,
and the streaming and in-memory paths train on identical batches.

Pieces, each usable alone:

* :class:`ExampleEncoder` - rows of the build -> host arrays: JPEG decode at reduced
  scale, resize + centre crop to ``image_size`` (CLIP's preprocessing), optional
  normalisation ``(x / 255 - mean) / std`` (default: uint8, normalised on device by the
  train step), the caption chosen as in memory, tokenised to ``[B, L]``.
* :func:`train_batches` - a ``grain.MapDataset`` whose element ``s`` is the host batch of
  step ``s`` (``images``, ``input_ids``, ``attention_mask``, ``labels``, ``index`` = the
  positions in the training split, which index the code bank).
* :class:`MeshBatchIterator` - iterates such a dataset from any step with grain's
  threaded read-ahead (``read_threads`` batches decoded in parallel; or ``workers``
  processes), assembles global ``jax.Array`` batches split over the mesh's ``data`` axis
  (``jax.make_array_from_process_local_data``), prefetches ``prefetch`` batches, and has a
  JSON state (``get_state`` / ``set_state``) to save in a checkpoint's metadata.
* :func:`row_batches` - sequential host batches of any rows (query / database encoding).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from fjsph_jax.data import images as images_lib
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.data.inmemory import check_caption_choice, example_captions, select_caption


@dataclasses.dataclass
class ExampleEncoder:
    """Rows of a built dataset -> a host batch of model inputs (picklable, thread-safe).

    Attributes:
      source: a random-access source of built examples (``BuiltDataset.data_source()``).
      tokenizer: anything with ``encode(texts, context_length) -> (ids, mask)``.
      image_size, context_length: output sizes.
      resize_mode: "center_crop" (CLIP) or "squash".
      caption: "first", "random" (seeded per row, as in memory) or an index.
      caption_seed: the seed of the "random" choice (``config.data.split_seed`` in memory).
      image_mean, image_std: if given, images come out float32 ``(x / 255 - mean) / std``;
        else uint8 (the train step normalises on device).
      with_labels: whether batches carry ``labels`` (training reads labels once, up front,
        for the similarity factors, so its batches leave them out).
    """

    source: Any
    tokenizer: Any
    image_size: int
    context_length: int
    resize_mode: str = "center_crop"
    caption: Any = "first"
    caption_seed: int = 0
    image_mean: Sequence[float] | None = None
    image_std: Sequence[float] | None = None
    with_labels: bool = True

    def __post_init__(self):
        check_caption_choice(self.caption)
        if self.resize_mode not in images_lib.RESIZE_MODES:
            raise ValueError(
                f"resize_mode={self.resize_mode!r} is unknown; allowed: {images_lib.RESIZE_MODES}"
            )
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("give both image_mean and image_std, or neither")

    @classmethod
    def from_config(
        cls, data_config, source, tokenizer, *, image_size: int | None = None,
        with_labels: bool = True,
    ) -> ExampleEncoder:
        """The encoder ``config.data`` describes (size, context length, resize, caption and
        its seed ``split_seed``, as the in-memory read uses); uint8 images."""
        return cls(
            source=source,
            tokenizer=tokenizer,
            image_size=data_config.image_size if image_size is None else image_size,
            context_length=data_config.context_length,
            resize_mode=data_config.resize,
            caption=data_config.caption,
            caption_seed=data_config.split_seed,
            with_labels=with_labels,
        )

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows (int ``[B]``) -> ``images [B, S, S, 3]``, ``input_ids`` / ``attention_mask``
        int32 ``[B, L]``, ``labels`` uint8 ``[B, C]`` (if ``with_labels``)."""
        rows = np.asarray(rows, np.int64)
        size = self.image_size
        pixels = np.empty((rows.size, size, size, 3), np.uint8)
        texts, labels = [], []
        for k, row in enumerate(rows.tolist()):
            example = self.source[row]
            pixels[k] = images_lib.decode_resized(example["image"], size, self.resize_mode)
            texts.append(
                select_caption(
                    example_captions(example), self.caption, seed=self.caption_seed, row=row
                )
            )
            labels.append(np.asarray(example["labels"], np.uint8))
        input_ids, attention_mask = self.tokenizer.encode(texts, self.context_length)
        batch = {
            "images": pixels,
            "input_ids": input_ids.astype(np.int32),
            "attention_mask": attention_mask.astype(np.int32),
        }
        if self.with_labels:
            batch["labels"] = np.stack(labels) if labels else np.zeros((0, 0), np.uint8)
        if self.image_mean is not None:
            mean = np.asarray(self.image_mean, np.float32)
            std = np.asarray(self.image_std, np.float32)
            batch["images"] = (pixels.astype(np.float32) / 255.0 - mean) / std
        return batch


class _StepBatch:
    """Element ``s`` of :func:`train_batches`: the host rows of step ``s``, encoded
    (positions from :class:`EpochBatcher`, which grain's threads may call concurrently)."""

    def __init__(
        self,
        encoder: ExampleEncoder,
        train_rows: np.ndarray,
        batcher: EpochBatcher,
        host_rows: slice,
    ):
        self.encoder = encoder
        self.train_rows = np.asarray(train_rows, np.int64)
        self.batcher = batcher
        self.host_rows = host_rows

    def positions(self, step: int) -> np.ndarray:
        """Positions in the training split of this host's rows of step ``step``."""
        return self.batcher.indices(step)[self.host_rows]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = self.positions(step)
        batch = self.encoder(self.train_rows[positions])
        batch["index"] = positions.astype(np.int32)
        return batch


def train_batches(
    encoder: ExampleEncoder,
    train_rows: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    num_steps: int,
    host_rows: slice | None = None,
):
    """``grain.MapDataset`` of ``num_steps`` host batches; element ``s`` is step ``s``'s batch.

    Args:
      encoder: turns dataset rows into arrays.
      train_rows: int ``[N]``, the dataset rows of the training split (``splits.train``).
      global_batch_size, seed: as ``EpochBatcher(N, global_batch_size, seed)``.
      num_steps: the dataset's length (total training steps).
      host_rows: this process's rows of each global batch (default ``parallel.host_slice``).
    """
    import grain

    if host_rows is None:
        from fjsph_jax import parallel

        host_rows = parallel.host_slice(global_batch_size)
    batcher = EpochBatcher(len(train_rows), global_batch_size, seed)
    return grain.MapDataset.range(int(num_steps)).map(
        _StepBatch(encoder, train_rows, batcher, host_rows)
    )


class MeshBatchIterator:
    """Global batches of a step-indexed dataset from ``start_step`` on, prefetched.

    ``next()`` returns a dict of ``jax.Array`` split over the mesh's ``data`` axis (or the
    host numpy batch when ``mesh`` is None). The state is ``{"step": s}``, the step of the
    next batch it returns: save it in the checkpoint metadata and pass it to
    :meth:`set_state` (or ``start_step``) to resume.

    Args:
      dataset: a ``grain.MapDataset`` like :func:`train_batches` (element s = step s).
      mesh: the training mesh, or None for host numpy batches.
      start_step: the first step to return.
      read_threads: grain threads decoding batches ahead (threads release the GIL in Pillow).
      workers: if > 0, grain worker processes instead (for tokenisers that hold the GIL).
      prefetch: batches assembled ahead of the consumer.
    """

    def __init__(
        self,
        dataset,
        mesh=None,
        *,
        start_step: int = 0,
        read_threads: int = 2,
        workers: int = 0,
        prefetch: int = 2,
    ):
        self._dataset = dataset
        self._mesh = mesh
        self._read_threads = max(1, int(read_threads))
        self._workers = int(workers)
        self._prefetch = max(1, int(prefetch))
        self._executor = concurrent.futures.ThreadPoolExecutor(1)  # keeps batch order
        self._pending: collections.deque = collections.deque()
        self._open(int(start_step))

    def _open(self, step: int) -> None:
        import grain

        if not 0 <= step <= len(self._dataset):
            raise ValueError(f"start step {step} is outside 0..{len(self._dataset)}")
        self._drain()
        self._next_step = step
        iter_dataset = self._dataset[step:].to_iter_dataset(
            grain.ReadOptions(
                num_threads=self._read_threads, prefetch_buffer_size=2 * self._read_threads
            )
        )
        if self._workers > 0:
            iter_dataset = iter_dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self._workers)
            )
        self._host_iterator = iter(iter_dataset)
        self._queued_step = step

    def _drain(self) -> None:
        while self._pending:
            future = self._pending.popleft()
            future.cancel()
            try:
                future.result()
            except (concurrent.futures.CancelledError, StopIteration):
                pass

    def _fill(self) -> None:
        while len(self._pending) < self._prefetch and self._queued_step < len(self._dataset):
            self._pending.append(self._executor.submit(self._assemble))
            self._queued_step += 1

    def _assemble(self):
        batch = next(self._host_iterator)
        if self._mesh is None:
            return batch
        from fjsph_jax import parallel

        return parallel.global_batch(batch, self._mesh)

    def __iter__(self) -> "MeshBatchIterator":
        return self

    def __next__(self) -> dict:
        self._fill()
        if not self._pending:
            raise StopIteration
        batch = self._pending.popleft().result()
        self._next_step += 1
        self._fill()
        return batch

    def get_state(self) -> dict:
        """``{"step": s}``: JSON, the step of the next batch."""
        return {"step": int(self._next_step)}

    def set_state(self, state: dict) -> None:
        """Continue from ``state`` (as :meth:`get_state` returned it)."""
        self._open(int(state["step"]))

    def close(self) -> None:
        self._drain()
        self._executor.shutdown(wait=True)


def row_batches(
    encoder: ExampleEncoder, rows: np.ndarray, batch_size: int, *, read_threads: int = 2
) -> Iterator[dict[str, np.ndarray]]:
    """Host batches of ``rows`` in order (the last one may be smaller), with ``index`` the
    position in ``rows``; for encoding the query and database sets."""
    import grain

    rows = np.asarray(rows, np.int64)
    starts = list(range(0, rows.size, int(batch_size)))

    def load(k: int) -> dict[str, np.ndarray]:
        chunk = np.arange(starts[k], min(rows.size, starts[k] + batch_size))
        batch = encoder(rows[chunk])
        batch["index"] = chunk.astype(np.int32)
        return batch

    dataset = grain.MapDataset.range(len(starts)).map(load)
    yield from dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=2 * read_threads)
    )


def measure_examples_per_second(iterator, num_batches: int, batch_size: int) -> float:
    """Examples/s of ``num_batches`` batches drawn from ``iterator`` (after one warm-up)."""
    import time

    next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    if hasattr(first, "block_until_ready"):
        first.block_until_ready()
    return num_batches * batch_size / (time.perf_counter() - start)
