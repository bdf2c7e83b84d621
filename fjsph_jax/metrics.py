"""Cross-modal hashing retrieval metrics: MAP@all, MAP@K, P@N and the Hamming PR curve.

Protocol (DCMH, DCHMT, MITH, DSPH):

* codes are ``{-1, +1}`` matrices, ``query_codes`` ``[Q, K]`` and ``db_codes`` ``[N, K]``,
  of any signed integer or floating dtype holding exactly +-1;
* labels are multi-hot ``{0, 1}`` matrices, ``query_labels`` ``[Q, C]`` and
  ``db_labels`` ``[N, C]``; a database item is *relevant* to a query when they share at
  least one label;
* the database is ranked per query by Hamming distance ``d = (K - q . b) / 2``
  ascending, ties broken stably by database index (lower index first).

Every metric is computed by one jitted kernel (:func:`_chunk_statistics`) that sorts each
query's distances once and derives all statistics from that ranking. The queries are
processed in fixed-size chunks with :func:`jax.lax.map` (the last chunk padded and
masked), so the working memory is ``O(query_chunk x N)``, never ``O(Q x N)``, and each
input shape compiles once. Per-chunk sums come back to the host and are reduced in
float64; results are Python floats or numpy arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_QUERY_CHUNK = 128
DEFAULT_PRECISION_NS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
_NS_BUCKET = 8  # ns lists are padded to a multiple of this length (fewer recompilations)


# ----------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------


def _check_matrix(array: Any, name: str) -> jax.Array:
    """Returns ``array`` as a non-empty 2-D jax array, else raises a ValueError."""
    array = jnp.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {tuple(array.shape)}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(array.shape)}.")
    return array


@jax.jit
def _holds_only_plus_minus_one(array: jax.Array) -> jax.Array:
    """True when every entry of ``array`` is -1 or +1."""
    return jnp.all(jnp.abs(array) == 1)


@jax.jit
def _holds_only_zero_one(array: jax.Array) -> jax.Array:
    """True when every entry of ``array`` is 0 or 1."""
    return jnp.all((array == 0) | (array == 1))


def _check_codes(codes: Any, name: str) -> jax.Array:
    """Validates a ``[M, K]`` code matrix: signed int or float dtype, values exactly +-1."""
    codes = _check_matrix(codes, name)
    if not (
        jnp.issubdtype(codes.dtype, jnp.signedinteger)
        or jnp.issubdtype(codes.dtype, jnp.floating)
    ):
        raise ValueError(
            f"{name} must have a signed integer or floating dtype holding -1/+1, "
            f"got dtype {codes.dtype}."
        )
    if not bool(_holds_only_plus_minus_one(codes)):
        raise ValueError(f"{name} must hold only the values -1 and +1.")
    return codes


def _check_labels(labels: Any, name: str) -> jax.Array:
    """Validates a ``[M, C]`` multi-hot label matrix (values 0 or 1, any numeric dtype)."""
    labels = _check_matrix(labels, name)
    if not bool(_holds_only_zero_one(labels)):
        raise ValueError(f"{name} must be multi-hot: only the values 0 and 1 are allowed.")
    return labels


def _check_pair(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Validates the four retrieval inputs and their agreement (Q, N, K and C)."""
    query_codes = _check_codes(query_codes, "query_codes")
    db_codes = _check_codes(db_codes, "db_codes")
    query_labels = _check_labels(query_labels, "query_labels")
    db_labels = _check_labels(db_labels, "db_labels")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            "query_codes and db_codes must have the same number of bits K, got "
            f"{query_codes.shape[1]} and {db_codes.shape[1]}."
        )
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(
            "query_labels and db_labels must have the same number of classes C, got "
            f"{query_labels.shape[1]} and {db_labels.shape[1]}."
        )
    if query_labels.shape[0] != query_codes.shape[0]:
        raise ValueError(
            f"query_labels has {query_labels.shape[0]} rows but query_codes has "
            f"{query_codes.shape[0]}; they must describe the same queries."
        )
    if db_labels.shape[0] != db_codes.shape[0]:
        raise ValueError(
            f"db_labels has {db_labels.shape[0]} rows but db_codes has "
            f"{db_codes.shape[0]}; they must describe the same database items."
        )
    return query_codes, db_codes, query_labels, db_labels


def _check_positive_int(value: Any, name: str) -> int:
    """Returns ``value`` as an int if it is a positive integer (bool excluded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}.")
    return int(value)


def _check_ns(ns: Any, num_db: int) -> np.ndarray:
    """Validates a non-empty sequence of positive ints; returns them clipped to ``N``."""
    if hasattr(ns, "dtype") and hasattr(ns, "ndim") and ns.ndim == 1:
        ns = np.asarray(ns).tolist()  # numpy or jax 1-D arrays
    if isinstance(ns, (str, bytes)) or not isinstance(ns, Sequence):
        raise ValueError(f"ns must be a sequence of positive integers, got {ns!r}.")
    if len(ns) == 0:
        raise ValueError("ns must contain at least one positive integer, got an empty sequence.")
    checked = [_check_positive_int(n, "each entry of ns") for n in ns]
    return np.minimum(np.asarray(checked, dtype=np.int64), num_db).astype(np.int32)


# ----------------------------------------------------------------------------------------
# Elementary quantities
# ----------------------------------------------------------------------------------------


@jax.jit
def _hamming_distance(query_codes_qk: jax.Array, db_codes_nk: jax.Array) -> jax.Array:
    """``d[q, n] = (K - <query_q, db_n>) / 2`` as int32 ``[Q, N]``.

    The inner product of +-1 vectors is an exact integer in float32 for K < 2**24 (the
    products are +-1 and are exact even in bf16 matmul passes, accumulation is float32).
    """
    num_bits = query_codes_qk.shape[1]
    inner_qn = jnp.matmul(
        query_codes_qk.astype(jnp.float32), db_codes_nk.astype(jnp.float32).T
    )
    return jnp.round((num_bits - inner_qn) * 0.5).astype(jnp.int32)


@jax.jit
def _relevance(query_labels_qc: jax.Array, db_labels_nc: jax.Array) -> jax.Array:
    """``rel[q, n] = <labels_q, labels_n> > 0`` as bool ``[Q, N]`` (share >= 1 label)."""
    shared_qn = jnp.matmul(
        query_labels_qc.astype(jnp.float32), db_labels_nc.astype(jnp.float32).T
    )
    return shared_qn > 0.5


def hamming_distance(query_codes_qk: Any, db_codes_nk: Any) -> jax.Array:
    """Hamming distances between +-1 codes: ``d = (K - Q_codes @ DB_codes^T) / 2``.

    Args:
      query_codes_qk: ``[Q, K]`` codes in {-1, +1} (signed int or float dtype).
      db_codes_nk: ``[N, K]`` codes in {-1, +1}.

    Returns:
      int32 ``[Q, N]`` with values in ``[0, K]``. This materialises the full matrix; the
      metrics below never do (they work on query chunks).
    """
    query_codes_qk = _check_codes(query_codes_qk, "query_codes_qk")
    db_codes_nk = _check_codes(db_codes_nk, "db_codes_nk")
    if query_codes_qk.shape[1] != db_codes_nk.shape[1]:
        raise ValueError(
            "query_codes_qk and db_codes_nk must have the same number of bits K, got "
            f"{query_codes_qk.shape[1]} and {db_codes_nk.shape[1]}."
        )
    return _hamming_distance(query_codes_qk, db_codes_nk)


def relevance(query_labels_qc: Any, db_labels_nc: Any) -> jax.Array:
    """Ground-truth relevance: ``rel[q, n] = (labels_q . labels_n) >= 1``.

    Args:
      query_labels_qc: ``[Q, C]`` multi-hot labels (values 0/1, any numeric dtype).
      db_labels_nc: ``[N, C]`` multi-hot labels.

    Returns:
      bool ``[Q, N]``: True where query ``q`` and item ``n`` share at least one label.
    """
    query_labels_qc = _check_labels(query_labels_qc, "query_labels_qc")
    db_labels_nc = _check_labels(db_labels_nc, "db_labels_nc")
    if query_labels_qc.shape[1] != db_labels_nc.shape[1]:
        raise ValueError(
            "query_labels_qc and db_labels_nc must have the same number of classes C, "
            f"got {query_labels_qc.shape[1]} and {db_labels_nc.shape[1]}."
        )
    return _relevance(query_labels_qc, db_labels_nc)


# ----------------------------------------------------------------------------------------
# The chunked kernel: one stable sort per query, every statistic from it
# ----------------------------------------------------------------------------------------


class _RetrievalSums(NamedTuple):
    """Sums over (valid) queries of the per-query statistics; ``R = K + 1`` radii."""

    average_precision_all: jax.Array  # scalar: sum_q AP@all
    average_precision_at_k: jax.Array  # scalar: sum_q AP@top_k
    precision_at_n: jax.Array  # [M]: sum_q P@n
    pr_precision: jax.Array  # [R]: sum over retrieving queries of precision(r)
    pr_num_retrieving: jax.Array  # [R]: number of queries retrieving >= 1 item at r
    pr_recall: jax.Array  # [R]: sum over queries with relevant items of recall(r)
    num_with_relevant: jax.Array  # scalar: number of queries with >= 1 relevant item


def _chunk_statistics(
    query_codes_bk: jax.Array,
    query_labels_bc: jax.Array,
    valid_b: jax.Array,
    db_codes_nk: jax.Array,
    db_labels_nc: jax.Array,
    top_k: jax.Array,
    ns_m: jax.Array,
) -> _RetrievalSums:
    """Statistics of one chunk of ``B`` queries against the whole database ``[N, ...]``.

    Ranking: ``(d_sorted, rel_sorted) = stable_sort_by_d(d, rel)`` per row, so ties keep
    database-index order. With ``hits = cumsum(rel_sorted)`` ``[B, N]`` and ranks
    ``r = 1..N``:

    * ``AP@k = sum_{r<=k} (hits_r / r) rel_r / hits_k`` (0 when ``hits_k = 0``);
    * ``P@n = hits_n / n``;
    * at Hamming radius ``t`` (0..K): ``retrieved_t = #(d <= t)`` (a searchsorted on
      ``d_sorted``), ``relevant_retrieved_t = hits_{retrieved_t}``; precision
      ``relevant_retrieved_t / retrieved_t``; recall ``relevant_retrieved_t / hits_N``.

    ``valid_b`` (float ``[B]``) zeroes the padded queries of the last chunk.
    """
    num_db = db_codes_nk.shape[0]
    num_bits = db_codes_nk.shape[1]
    distance_bn = _hamming_distance(query_codes_bk, db_codes_nk)
    relevant_bn = _relevance(query_labels_bc, db_labels_nc).astype(jnp.int32)
    distance_sorted_bn, relevant_sorted_bn = jax.lax.sort(
        (distance_bn, relevant_bn), dimension=1, is_stable=True, num_keys=1
    )
    hits_bn = jnp.cumsum(relevant_sorted_bn, axis=1)
    ranks_n = jnp.arange(1, num_db + 1, dtype=jnp.int32)
    precision_at_rank_bn = hits_bn.astype(jnp.float32) / ranks_n.astype(jnp.float32)
    relevant_precision_bn = precision_at_rank_bn * relevant_sorted_bn.astype(jnp.float32)

    def average_precision(k: jax.Array) -> jax.Array:
        """AP@k per query ``[B]``; 0 for queries with no relevant item in the top k."""
        in_top_k_n = ranks_n <= k
        precision_sum_b = jnp.sum(jnp.where(in_top_k_n, relevant_precision_bn, 0.0), axis=1)
        relevant_in_top_k_b = hits_bn[:, k - 1]
        return jnp.where(
            relevant_in_top_k_b > 0,
            precision_sum_b / jnp.maximum(relevant_in_top_k_b, 1).astype(jnp.float32),
            0.0,
        )

    ap_all_b = average_precision(jnp.int32(num_db))
    ap_at_k_b = average_precision(top_k)
    precision_at_n_bm = hits_bn[:, ns_m - 1].astype(jnp.float32) / ns_m.astype(jnp.float32)

    radii_r = jnp.arange(num_bits + 1, dtype=jnp.int32)
    retrieved_br = jax.vmap(lambda row: jnp.searchsorted(row, radii_r, side="right"))(
        distance_sorted_bn
    ).astype(jnp.int32)
    hits_with_zero_bn1 = jnp.pad(hits_bn, ((0, 0), (1, 0)))
    relevant_retrieved_br = jnp.take_along_axis(hits_with_zero_bn1, retrieved_br, axis=1)
    retrieves_br = (retrieved_br > 0).astype(jnp.float32) * valid_b[:, None]
    precision_br = relevant_retrieved_br.astype(jnp.float32) / jnp.maximum(
        retrieved_br, 1
    ).astype(jnp.float32)
    total_relevant_b = hits_bn[:, -1]
    has_relevant_b = (total_relevant_b > 0).astype(jnp.float32) * valid_b
    recall_br = relevant_retrieved_br.astype(jnp.float32) / jnp.maximum(
        total_relevant_b, 1
    ).astype(jnp.float32)[:, None]

    return _RetrievalSums(
        average_precision_all=jnp.sum(ap_all_b * valid_b),
        average_precision_at_k=jnp.sum(ap_at_k_b * valid_b),
        precision_at_n=jnp.sum(precision_at_n_bm * valid_b[:, None], axis=0),
        pr_precision=jnp.sum(precision_br * retrieves_br, axis=0),
        pr_num_retrieving=jnp.sum(retrieves_br, axis=0),
        pr_recall=jnp.sum(recall_br * has_relevant_b[:, None], axis=0),
        num_with_relevant=jnp.sum(has_relevant_b),
    )


@functools.partial(jax.jit, static_argnames="chunk")
def _chunked_statistics(
    query_codes_qk: jax.Array,
    query_labels_qc: jax.Array,
    db_codes_nk: jax.Array,
    db_labels_nc: jax.Array,
    top_k: jax.Array,
    ns_m: jax.Array,
    *,
    chunk: int,
) -> _RetrievalSums:
    """Maps :func:`_chunk_statistics` sequentially over ``T = ceil(Q / chunk)`` chunks.

    The queries are padded to ``T * chunk`` rows (all-(+1) codes, no labels, masked out
    by ``valid``) and reshaped to ``[T, chunk, ...]``; returns sums of shape ``[T, ...]``.
    """
    num_queries = query_codes_qk.shape[0]
    num_chunks = -(-num_queries // chunk)

    def split(array_qx: jax.Array, pad_value: float) -> jax.Array:
        padding = num_chunks * chunk - num_queries
        padded = jnp.pad(array_qx, ((0, padding), (0, 0)), constant_values=pad_value)
        return padded.reshape(num_chunks, chunk, array_qx.shape[1])

    chunks = (
        split(query_codes_qk.astype(jnp.float32), 1.0),
        split(query_labels_qc.astype(jnp.float32), 0.0),
        split(jnp.ones((num_queries, 1), jnp.float32), 0.0)[..., 0],
    )
    kernel = functools.partial(
        _chunk_statistics,
        db_codes_nk=db_codes_nk.astype(jnp.float32),
        db_labels_nc=db_labels_nc.astype(jnp.float32),
        top_k=top_k,
        ns_m=ns_m,
    )
    return jax.lax.map(lambda chunk_arrays: kernel(*chunk_arrays), chunks)


class _RetrievalMetrics(NamedTuple):
    """Host-side means (float64) of the statistics in :class:`_RetrievalSums`."""

    map_all: float
    map_at_k: float
    precision_at_n: np.ndarray  # [M]
    pr_precision: np.ndarray  # [K + 1]
    pr_recall: np.ndarray  # [K + 1]


def _compute_metrics(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    top_k: int | None,
    ns: Sequence[int],
    query_chunk: int,
) -> tuple[_RetrievalMetrics, np.ndarray]:
    """Validates inputs, runs the chunked kernel, averages; also returns the clipped ns."""
    query_chunk = _check_positive_int(query_chunk, "query_chunk")
    if top_k is not None:
        top_k = _check_positive_int(top_k, "top_k")
    query_codes, db_codes, query_labels, db_labels = _check_pair(
        query_codes, db_codes, query_labels, db_labels
    )
    num_queries, num_db = query_codes.shape[0], db_codes.shape[0]
    chunk = min(query_chunk, num_queries)
    effective_top_k = num_db if top_k is None else min(top_k, num_db)
    ns_m = _check_ns(ns, num_db)
    # Pad ns to a multiple of _NS_BUCKET (with n = 1) so most ns lists share one compile.
    padded_length = -(-len(ns_m) // _NS_BUCKET) * _NS_BUCKET
    padded_ns = np.pad(ns_m, (0, padded_length - len(ns_m)), constant_values=1)

    sums = _chunked_statistics(
        query_codes,
        query_labels,
        db_codes,
        db_labels,
        np.int32(effective_top_k),
        padded_ns,
        chunk=chunk,
    )
    totals = jax.tree.map(lambda x: np.asarray(x, dtype=np.float64).sum(axis=0), sums)
    num_retrieving = totals.pr_num_retrieving
    metrics = _RetrievalMetrics(
        map_all=float(totals.average_precision_all / num_queries),
        map_at_k=float(totals.average_precision_at_k / num_queries),
        precision_at_n=totals.precision_at_n[: len(ns_m)] / num_queries,
        pr_precision=np.where(
            num_retrieving > 0, totals.pr_precision / np.maximum(num_retrieving, 1), 0.0
        ),
        pr_recall=(
            totals.pr_recall / totals.num_with_relevant
            if totals.num_with_relevant > 0
            else np.zeros_like(totals.pr_recall)
        ),
    )
    return metrics, ns_m


# ----------------------------------------------------------------------------------------
# Public metrics
# ----------------------------------------------------------------------------------------


def mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    top_k: int | None = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> float:
    """Mean average precision over the queries, MAP@all or MAP@``top_k``.

    For one query with the database ranked by Hamming distance (ties by database index)
    and ``rel(r)`` the relevance of the item at rank ``r``::

        AP@K = (1 / R_K) * sum_{r <= K} P@r * rel(r),   P@r = (1/r) sum_{i <= r} rel(i),

    with ``R_K`` the number of relevant items in the top ``K``. A query with ``R_K = 0``
    has AP 0 and still counts in the mean over all ``Q`` queries: the ``calc_map_k``
    convention of the DCMH/DCHMT code bases.

    Args:
      query_codes: ``[Q, K]`` codes in {-1, +1}.
      db_codes: ``[N, K]`` codes in {-1, +1}.
      query_labels: ``[Q, C]`` multi-hot labels.
      db_labels: ``[N, C]`` multi-hot labels.
      top_k: rank cut-off ``K`` (clipped to ``N``); ``None`` for MAP@all.
      query_chunk: queries per chunk; memory is ``O(query_chunk * N)``.

    Returns:
      The MAP as a Python float in [0, 1].
    """
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=top_k, ns=(1,), query_chunk=query_chunk,
    )
    return metrics.map_all if top_k is None else metrics.map_at_k


def precision_at_n(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ns: Sequence[int],
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> np.ndarray:
    """Mean over queries of ``P@n = (1/n) * #relevant items among the top n``.

    Each ``n`` in ``ns`` is clipped to the database size ``N``. Ranking as in
    :func:`mean_average_precision`.

    Returns:
      float64 ``[len(ns)]``.
    """
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=None, ns=ns, query_chunk=query_chunk,
    )
    return metrics.precision_at_n


def precision_recall_curve(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-ball retrieval at radii ``r = 0..K``.

    For query ``q`` at radius ``r`` the retrieved set is ``{n : d(q, n) <= r}``.

    * ``precision[r]`` = mean of ``|retrieved and relevant| / |retrieved|`` over the
      queries that retrieve at least one item at radius ``r``; 0 if none does.
    * ``recall[r]`` = mean of ``|retrieved and relevant| / |relevant|`` over the queries
      with at least one relevant database item; all 0 if no query has one.

    Returns:
      ``(precision, recall)``, each float64 ``[K + 1]``; ``recall[K]`` is 1 whenever some
      query has a relevant item.
    """
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=None, ns=(1,), query_chunk=query_chunk,
    )
    return metrics.pr_precision, metrics.pr_recall


def evaluate_retrieval(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    top_k: int | None = None,
    ns: Sequence[int] = DEFAULT_PRECISION_NS,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> dict[str, Any]:
    """All retrieval metrics from one pass over the query chunks.

    Returns a JSON-serialisable dict::

        {"map_all": float,
         "map_at_k": float,                       # only when top_k is given
         "precision_at_n": {"ns": [int], "values": [float]},   # ns clipped to N
         "pr_curve": {"precision": [float] * (K+1), "recall": [float] * (K+1)}}

    Definitions as in :func:`mean_average_precision`, :func:`precision_at_n` and
    :func:`precision_recall_curve`.
    """
    metrics, ns_m = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=top_k, ns=ns, query_chunk=query_chunk,
    )
    result: dict[str, Any] = {"map_all": metrics.map_all}
    if top_k is not None:
        result["map_at_k"] = metrics.map_at_k
    result["precision_at_n"] = {
        "ns": [int(n) for n in ns_m],
        "values": [float(v) for v in metrics.precision_at_n],
    }
    result["pr_curve"] = {
        "precision": [float(v) for v in metrics.pr_precision],
        "recall": [float(v) for v in metrics.pr_recall],
    }
    return result
