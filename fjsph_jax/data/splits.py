"""Split protocols of the cross-modal hashing literature, and their record on disk.

Every protocol gives a query set, a retrieval database (all other items) and a training
set drawn from the database, seeded by ``split_seed``:

* ``random`` (default): :func:`fjsph_jax.data.dataset.make_splits` with
  ``num_query`` / ``num_train`` from the config. The dataset configs hold the field's
  sizes: MIRFlickr 2,000 / rest / 10,000 (MITH, DCHMT), NUS-WIDE 2,100 / rest / 10,500,
  MS-COCO 5,000 / rest / 10,000.
* ``permutation``: the procedure of the DCHMT and MITH code, to reproduce their exact
  splits: ``p = numpy.random.RandomState(seed).permutation(N)`` (MITH fixes seed 1),
  query ``p[:Q]``, train ``p[Q:Q+T]``, database ``p[Q:]`` (all returned sorted).
* ``small``: for tiny datasets (the 730-pair MIRFlickr subset, say): ``Q = round(0.1 N)``
  and ``T = round(0.6 N)`` (at least 1 each, T at most N - Q), the ``random`` draw.
* ``djsrh``: the per-label draw of the DJSRH / JDSH code (``datasets.py``), which needs
  the labels (:func:`djsrh_splits`, :func:`djsrh_counts`): for each label in column order
  its not-yet-taken items are shuffled and the first ones become queries, the next ones
  training items; the database is every non-query item. MIRFlickr: 160 + 400 from the
  first label, 80 + 200 from every other one, the training set then topped up to 5,000
  from the database at random (2,000 / 5,000 with 24 labels); NUS-WIDE TC-10: 200 + 500
  from every label, no top-up.

:func:`record_splits` writes the indices with their protocol next to a built dataset
(``splits/<protocol>-q<Q>-t<T>-seed<S>.json``) and checks an existing record against a
fresh computation, so a changed row order cannot go unnoticed.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from fjsph_jax.data.dataset import Splits, make_splits

SPLIT_PROTOCOLS = ("random", "permutation", "small", "djsrh")
SMALL_QUERY_FRACTION = 0.1
SMALL_TRAIN_FRACTION = 0.6


def split_sizes(protocol: str, num_items: int, num_query: int, num_train: int) -> tuple[int, int]:
    """``(Q, T)`` that ``protocol`` uses for ``num_items`` items (config sizes unless small)."""
    if protocol not in SPLIT_PROTOCOLS:
        raise ValueError(
            f"config.data.split_protocol={protocol!r} is unknown; allowed: "
            + ", ".join(map(repr, SPLIT_PROTOCOLS))
        )
    if protocol != "small":
        return int(num_query), int(num_train)
    if num_items < 3:
        raise ValueError(f"the small split protocol needs at least 3 items, got {num_items}")
    query = max(1, int(round(SMALL_QUERY_FRACTION * num_items)))
    train = min(num_items - query, max(1, int(round(SMALL_TRAIN_FRACTION * num_items))))
    return query, train


def check_split_fits(num_items: int, num_query: int, num_train: int) -> None:
    """ValueError naming the sizes and the fix unless ``num_query`` queries and ``num_train``
    training rows (drawn from the rest) fit ``num_items`` items."""
    if 0 < num_query < num_items and 0 < num_train <= num_items - num_query:
        return
    raise ValueError(
        f"the split does not fit the dataset's {num_items} items: --config.data.num_query="
        f"{num_query} must lie in 1..{num_items - 1} and --config.data.num_train={num_train} "
        f"in 1..{max(num_items - num_query, 0)} (the rest after the queries); lower them, or "
        f"use --config.data.split_protocol=small ({SMALL_QUERY_FRACTION:.0%} queries, "
        f"{SMALL_TRAIN_FRACTION:.0%} training rows of any dataset)"
    )


def permutation_splits(num_items: int, num_query: int, num_train: int, seed: int) -> Splits:
    """DCHMT / MITH: one legacy-numpy permutation; query first, train right after it."""
    if not 0 < num_query < num_items:
        raise ValueError(f"num_query must be in 1..{num_items - 1}, got {num_query}")
    if not 0 < num_train <= num_items - num_query:
        raise ValueError(
            f"num_train must be in 1..{num_items - num_query} (drawn from the "
            f"database), got {num_train}"
        )
    order = np.random.RandomState(seed).permutation(num_items)
    return Splits(
        query=np.sort(order[:num_query]).astype(np.int64),
        database=np.sort(order[num_query:]).astype(np.int64),
        train=np.sort(order[num_query : num_query + num_train]).astype(np.int64),
    )


def protocol_splits(
    protocol: str, num_items: int, num_query: int, num_train: int, seed: int
) -> Splits:
    """The query / database / train indices of ``protocol`` (see the module doc).

    ``djsrh`` draws per label: use :func:`config_splits` or :func:`djsrh_splits`, which get
    the labels.
    """
    if protocol == "djsrh":
        raise ValueError(
            "split_protocol='djsrh' samples per label: call config_splits(data_config, "
            "num_items, labels=...) or djsrh_splits(labels, ...)"
        )
    query, train = split_sizes(protocol, num_items, num_query, num_train)
    check_split_fits(num_items, query, train)
    if protocol == "permutation":
        return permutation_splits(num_items, query, train, seed)
    return make_splits(num_items, query, train, seed)


def config_splits(data_config, num_items: int, labels=None) -> Splits:
    """:func:`protocol_splits` with the values of ``config.data``.

    ``labels`` (``[num_items, C]`` multi-hot) is read by the ``djsrh`` protocol only, with
    the per-label counts :func:`djsrh_counts` gives for ``config.data.name`` and its
    ``num_query`` / ``num_train``.
    """
    protocol = data_config.get("split_protocol", "random") or "random"
    if protocol == "djsrh":
        if labels is None:
            raise ValueError("split_protocol='djsrh' samples per label, but no labels were given")
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[0] != num_items:
            raise ValueError(
                f"split_protocol='djsrh': labels must be [{num_items}, C], got {labels.shape}"
            )
        counts = djsrh_counts(
            data_config.get("name", ""), labels.shape[1], data_config.num_query,
            data_config.num_train,
        )
        return djsrh_splits(labels, seed=data_config.split_seed, **counts._asdict())
    return protocol_splits(
        protocol,
        num_items,
        data_config.num_query,
        data_config.num_train,
        data_config.split_seed,
    )


class DjsrhCounts(NamedTuple):
    """Per-label draw sizes of the ``djsrh`` protocol (see :func:`djsrh_splits`)."""

    first_query: int  # queries drawn from the first label's items
    first_train: int  # training items drawn from the first label's items
    query_per_label: int  # queries drawn from every other label's not-yet-taken items
    train_per_label: int  # training items drawn from them
    top_up_to: int  # training set topped up to this size from the database (0: no top-up)


def djsrh_counts(dataset_name: str, num_labels: int, num_query: int, num_train: int
                 ) -> DjsrhCounts:
    """The DJSRH / JDSH draw sizes for ``num_query`` queries and ``num_train`` training items.

    * ``nuswide`` (their NUS-WIDE branch): every label gives ``num_query // C`` queries and
      ``num_train // C`` training items; no top-up (200 + 500 per label of TC-10 for
      2,000 / 5,000).
    * any other dataset (their MIRFlickr branch): the first label gives twice as many as
      every other one, ``q = num_query // (C + 1)`` and ``t = num_train // (C + 1)``, and
      the training set is topped up to ``num_train`` (160 + 400, then 80 + 200 per label
      of MIRFlickr's 24 for 2,000 / 5,000).
    """
    for key, value in (("num_labels", num_labels), ("num_query", num_query),
                       ("num_train", num_train)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"djsrh split: {key} must be a positive integer, got {value!r}")
    if dataset_name == "nuswide":
        query, train = num_query // num_labels, num_train // num_labels
        counts = DjsrhCounts(query, train, query, train, 0)
    else:
        query, train = num_query // (num_labels + 1), num_train // (num_labels + 1)
        counts = DjsrhCounts(2 * query, 2 * train, query, train, int(num_train))
    if counts.query_per_label <= 0 or counts.train_per_label <= 0:
        raise ValueError(
            f"djsrh split: num_query={num_query} / num_train={num_train} are too small for "
            f"{num_labels} labels (every label must give at least one query and one "
            "training item)"
        )
    return counts


def djsrh_splits(labels, *, first_query: int, first_train: int, query_per_label: int,
                 train_per_label: int, top_up_to: int, seed: int) -> Splits:
    """The DJSRH / JDSH split (their ``datasets.py``), seeded.

    With ``rng = numpy.random.RandomState(seed)`` (so the draws equal their code's after
    ``numpy.random.seed(seed)``; theirs is unseeded), for each label ``c`` in column order:
    ``index = rows with labels[:, c] == 1``, shuffled by ``rng.permutation``; label 0 gives
    queries ``index[:first_query]`` and training items ``index[first_query:first_query +
    first_train]``; every other label drops the rows already taken (query or train) and
    gives the next ``query_per_label`` queries and ``train_per_label`` training items. The
    database is every non-query row. With ``top_up_to > 0`` and fewer training items, the
    training set is filled up with a shuffled draw of the database rows not in it.
    Labels run out gracefully: a label with fewer free rows gives what it has.

    Returns sorted :class:`Splits` (their code keeps draw order; the sets are the same).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] < 2 or labels.shape[1] < 1:
        raise ValueError(f"djsrh split: labels must be [N, C] with N >= 2, got {labels.shape}")
    num_items = labels.shape[0]
    rng = np.random.RandomState(seed)
    query = np.zeros(0, np.int64)
    train = np.zeros(0, np.int64)
    for label in range(labels.shape[1]):
        index = np.flatnonzero(labels[:, label] == 1).astype(np.int64)
        index = index[rng.permutation(index.shape[0])]
        if label == 0:
            query = index[:first_query]
            train = index[first_query : first_query + first_train]
        else:
            free = index[~np.isin(index, np.concatenate([train, query]))]
            query = np.concatenate([query, free[:query_per_label]])
            train = np.concatenate(
                [train, free[query_per_label : query_per_label + train_per_label]]
            )
    database = np.setdiff1d(np.arange(num_items, dtype=np.int64), query)
    if top_up_to and train.shape[0] < top_up_to:
        pick = database[~np.isin(database, train)]
        pick = pick[rng.permutation(pick.shape[0])]
        train = np.concatenate([train, pick[: top_up_to - train.shape[0]]])
    if query.size == 0 or train.size == 0 or database.size == 0:
        raise ValueError(
            f"djsrh split of {num_items} items gave {query.size} queries, {train.size} "
            f"training items and {database.size} database items; every set needs one"
        )
    return Splits(query=np.sort(query), database=database, train=np.sort(train))


def record_path(directory: str, protocol: str, splits: Splits, seed: int) -> str:
    sizes = splits.sizes()
    return os.path.join(
        directory, "splits", f"{protocol}-q{sizes['query']}-t{sizes['train']}-seed{seed}.json"
    )


def record_splits(directory: str, protocol: str, splits: Splits, seed: int) -> str:
    """Write (or verify) the record of ``splits`` under ``directory``; returns its path.

    Raises ValueError if a record for the same protocol, sizes and seed holds other indices.
    """
    path = record_path(directory, protocol, splits, seed)
    document = {
        "protocol": protocol,
        "seed": int(seed),
        "sizes": splits.sizes(),
        "query": splits.query.tolist(),
        "database": splits.database.tolist(),
        "train": splits.train.tolist(),
    }
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        if any(recorded.get(k) != document[k] for k in ("query", "database", "train")):
            raise ValueError(
                f"the recorded split {path!r} differs from the one computed now: "
                "the dataset's rows changed since it was written. Delete the file "
                "(or rebuild the dataset) to record the new split."
            )
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(document, f)
    os.replace(tmp, path)
    return path


def read_recorded_splits(path: str) -> Splits:
    """The :class:`Splits` stored by :func:`record_splits`."""
    with open(path) as f:
        document = json.load(f)
    return Splits(**{k: np.asarray(document[k], np.int64) for k in ("query", "database", "train")})


def validation_splits(splits: Splits, num_validation: int, seed: int) -> Splits:
    """Validation queries carved from the training set, for tuning without the test queries.

    ``num_validation`` training rows (drawn with ``seed``) become the queries; they leave
    the training set and the database, so nothing is trained on or retrieves itself. The
    test queries appear nowhere: ``query' ⊂ train``, ``train' = train \\ query'``,
    ``database' = database \\ query'``.
    """
    if not isinstance(num_validation, (int, np.integer)) or isinstance(num_validation, bool):
        raise ValueError(f"config.data.num_validation={num_validation!r} must be an integer")
    if not 0 < num_validation < len(splits.train):
        raise ValueError(
            f"config.data.num_validation={num_validation} must be in 1..{len(splits.train) - 1}: "
            f"the validation queries are carved from the {len(splits.train)} training rows"
        )
    rng = np.random.default_rng([int(seed), 0x7A1])
    query = np.sort(rng.choice(splits.train, size=int(num_validation), replace=False))
    return Splits(
        query=query.astype(np.int64),
        database=np.setdiff1d(splits.database, query).astype(np.int64),
        train=np.setdiff1d(splits.train, query).astype(np.int64),
    )
