"""Paired image-text datasets and the retrieval split protocol.

A :class:`PairedDataset` holds N aligned rows: an RGB image ``images[i]`` (uint8
``[N, H, W, 3]``), a caption ``texts[i]`` and a multi-hot label row ``labels[i]``
(uint8 ``[N, C]``, names in ``label_names``). Two items are relevant to each other
when their label rows share at least one positive.

:func:`make_splits` implements the protocol of the cross-modal hashing literature:
a random query set, the retrieval database is every other item, and the training
set is a random subset of the database.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

_MAX_ROWS_LISTED = 5


@dataclasses.dataclass
class PairedDataset:
    """N aligned (image, caption, labels) rows; checked by :meth:`validate` on creation.

    Attributes:
      name: a short identifier, e.g. ``"synthetic"``.
      images: uint8 ``[N, H, W, 3]``.
      texts: N non-empty captions.
      labels: uint8 multi-hot ``[N, C]`` with values in {0, 1}, at least one 1 per row.
      label_names: C names, ``label_names[c]`` names column ``c`` of ``labels``.
    """

    name: str
    images: np.ndarray
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]

    def __post_init__(self):
        self.validate()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """C, the number of label columns."""
        return int(self.labels.shape[1])

    def validate(self) -> None:
        """Raise ValueError naming the offending field if the rows are inconsistent."""
        if not isinstance(self.images, np.ndarray) or not isinstance(self.labels, np.ndarray):
            raise ValueError(
                "images and labels must be numpy arrays, got "
                f"images={type(self.images).__name__}, labels={type(self.labels).__name__}")
        if isinstance(self.texts, str) or not all(isinstance(t, str) for t in self.texts):
            raise ValueError("texts must be a list of str (one caption per row)")
        counts = {"images": self.images.shape[0] if self.images.ndim else 0,
                  "texts": len(self.texts),
                  "labels": self.labels.shape[0] if self.labels.ndim else 0}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{field}={n}" for field, n in counts.items())
            raise ValueError(f"row counts of images, texts and labels must agree, got {detail}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                "images must be uint8 [N, H, W, 3], got "
                f"dtype={self.images.dtype} shape={self.images.shape}")
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be 2-D [N, C], got shape {self.labels.shape}")
        if self.labels.shape[1] != len(self.label_names):
            raise ValueError(
                f"labels has C={self.labels.shape[1]} columns but label_names has "
                f"{len(self.label_names)} names; they must agree")
        if self.labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 multi-hot, got dtype {self.labels.dtype}")
        if self.labels.size and self.labels.max() > 1:
            raise ValueError("labels must be multi-hot with values in {0, 1}, "
                             f"found the value {int(self.labels.max())}")
        empty = [i for i, text in enumerate(self.texts) if not text.strip()]
        if empty:
            raise ValueError(f"texts[{empty[0]}] is empty ({len(empty)} empty captions in all); "
                             "every row needs a caption")
        unlabelled = np.flatnonzero(self.labels.sum(axis=1) == 0)
        if unlabelled.size:
            first = unlabelled[:_MAX_ROWS_LISTED].tolist()
            raise ValueError(
                f"{unlabelled.size} label rows have no positive label (first rows: {first}); "
                "drop unlabelled items before building the dataset")

    def subset(self, indices: np.ndarray) -> "PairedDataset":
        """The rows ``indices`` (int ``[M]``) as a new dataset with the same label space."""
        indices = np.asarray(indices, dtype=np.int64)
        return PairedDataset(
            name=self.name,
            images=self.images[indices],
            texts=[self.texts[i] for i in indices.tolist()],
            labels=self.labels[indices],
            label_names=list(self.label_names))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Splits:
    """Sorted int64 row indices of the query, retrieval database and training sets.

    ``query`` and ``database`` partition the items; ``train`` is a subset of ``database``.
    """

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray

    def sizes(self) -> dict[str, int]:
        """``{"query": Q, "database": D, "train": T}``."""
        return {"query": int(self.query.size), "database": int(self.database.size),
                "train": int(self.train.size)}


def make_splits(num_items: int, num_query: int, num_train: int, seed: int) -> Splits:
    """Random query / database / train split of ``num_items`` items.

    query: ``num_query`` items drawn at random; database: the other
    ``num_items - num_query`` items; train: ``num_train`` items drawn at random from the
    database. All three are sorted int64 arrays; the same seed gives the same split.
    """
    for arg, value in (("num_items", num_items), ("num_query", num_query),
                       ("num_train", num_train)):
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if num_query >= num_items:
        raise ValueError(f"num_query must be < num_items={num_items} so the database is "
                         f"not empty, got num_query={num_query}")
    if num_train > num_items - num_query:
        raise ValueError(
            f"num_train must be <= num_items - num_query = {num_items - num_query} "
            f"(the training set is drawn from the database), got num_train={num_train}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_items)
    query = np.sort(order[:num_query]).astype(np.int64)
    database = np.sort(order[num_query:]).astype(np.int64)
    train = np.sort(rng.choice(database, size=num_train, replace=False)).astype(np.int64)
    return Splits(query=query, database=database, train=train)
