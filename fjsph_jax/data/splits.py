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

:func:`record_splits` writes the indices with their protocol next to a built dataset
(``splits/<protocol>-q<Q>-t<T>-seed<S>.json``) and checks an existing record against a
fresh computation, so a changed row order cannot go unnoticed.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fjsph_jax.data.dataset import Splits, make_splits

SPLIT_PROTOCOLS = ("random", "permutation", "small")
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
    """The query / database / train indices of ``protocol`` (see the module doc)."""
    query, train = split_sizes(protocol, num_items, num_query, num_train)
    if protocol == "permutation":
        return permutation_splits(num_items, query, train, seed)
    return make_splits(num_items, query, train, seed)


def config_splits(data_config, num_items: int) -> Splits:
    """:func:`protocol_splits` with the values of ``config.data``."""
    return protocol_splits(
        data_config.get("split_protocol", "random") or "random",
        num_items,
        data_config.num_query,
        data_config.num_train,
        data_config.split_seed,
    )


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
