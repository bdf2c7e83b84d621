"""Cross-modal hashing retrieval metrics: MAP@all, MAP@K, P@N and the Hamming PR curve.

Protocol (DCMH, DCHMT, MITH, DSPH):

* codes are ``{-1, +1}`` matrices, ``query_codes`` ``[Q, K]`` and ``db_codes`` ``[N, K]``,
  of any signed integer or floating dtype holding exactly +-1;
* labels are multi-hot ``{0, 1}`` matrices, ``query_labels`` ``[Q, C]`` and
  ``db_labels`` ``[N, C]``; a database item is *relevant* to a query when they share at
  least one label;
* the database is ranked per query by Hamming distance ``d = (K - q . b) / 2``
  ascending, ties broken stably by database index (lower index first).

MAP@K comes in the two conventions of the field (``convention=``, both computed in the
same pass; MAP@all is the same under both):

* ``"top_k"`` (default), JSPSH's ``mAP.m`` and DJSRH/JDSH's ``calculate_top_map``: the
  mean of ``P@r`` over the relevant items inside the top K, ``AP = (1/R_K) sum_{r <= K}
  P@r rel(r)`` with ``R_K`` the relevant items in the top K;
* ``"dcmh"``, DCMH/DCHMT's ``calc_map_k``: the mean of ``P@rank_i = i / rank_i`` over the
  first ``min(K, R)`` relevant items wherever they rank, ``R`` all relevant items.

Sparse codes (``code_format="sparse"``, e.g. JSPSH): ``{0, 1}`` matrices ``[Q, D]`` and
``[N, D]`` (bool, integer or floating dtype) with exactly the same number ``r >= 1`` of
ones in every query and database row, ranked by inner product ``<q, b>`` descending, ties
by database index. For such codes ``popcount(q XOR b) = 2 (r - <q, b>)``, so the ranking is
the ranking by ``d = r - <q, b> = popcount(q XOR b) / 2`` ascending, which takes only the
``r + 1`` values ``0..r``: the codes are packed as bits (1 where the code is 1) and both
paths below run unchanged with ``r + 1`` distance buckets instead of ``K + 1``. The PR
curve then has ``r + 1`` points, thresholds ``d <= t`` for ``t = 0..r``, i.e. inner
product ``>= r - t``. Inputs are validated (values 0/1 only, equal row sums ``r``).

Every metric comes from one jitted kernel (:func:`_chunk_statistics`) that finds the exact
rank of every database item without sorting: Hamming distances take only ``K + 1``
values, so with per-query histograms over distance buckets (pass 1) and, in row order,
the running count of items already seen in each bucket (pass 2)::

    rank(n) = #{m : d_m < d_n} + #{m < n : d_m = d_n} + 1

which is the stable (row) tie-break. Codes and labels are packed into uint32 words
(distance = XOR + popcount, relevance = AND != 0), queries are processed in chunks of at
most ``query_chunk`` (optionally split over a mesh), and the database is streamed in tiles,
so memory is ``O(query_chunk * (K + tile))`` and time ``O(Q N)``, never ``O(Q N log N)``.
Per-query statistics come back to the host and are averaged in float64.

On CPU the same per-query statistics come from :mod:`fjsph_jax.evaluation.metrics_host` instead:
JAX computes the distances of a chunk of queries and the host ranks each query with a
stable counting sort of its items by distance (compiled, ``O(N)``), one thread per core.
The kernel's per-pair gathers and scatter-adds are scalar loops on XLA:CPU (about 25 ns
per pair in all, against about 6 ns for the host ranking); on GPU/TPU the kernel stays.
``method="auto"`` (the default of every metric) picks ``"host"`` when the computation runs
on CPU devices and ``"device"`` (the kernel) otherwise; both give the same statistics
(counts exactly, sums to float rounding).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fjsph_jax.evaluation import index as index_lib
from fjsph_jax import parallel
from fjsph_jax.evaluation import metrics_host

DEFAULT_QUERY_CHUNK = 256
RANK_BLOCK_ROWS = 32  # database rows per step of the ranking pass (pairwise within a block)
TILE_ROWS = 4096  # database rows whose distances are computed in one go
DEFAULT_PRECISION_NS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
_NS_BUCKET = 8  # ns lists are padded to a multiple of this length (fewer recompilations)
METHODS = ("auto", "device", "host")  # how the ranking statistics are computed
# MAP@K conventions: "top_k" (JSPSH mAP.m, DJSRH/JDSH calculate_top_map) averages P@r over
# the relevant items inside the top K; "dcmh" (DCMH/DCHMT calc_map_k) over the first
# min(K, R) relevant items wherever they rank.
CONVENTIONS = ("top_k", "dcmh")
# Code formats: "pm1" {-1, +1} codes ranked by Hamming distance; "sparse" {0, 1} codes with
# the same number r of ones in every row, ranked by inner product (descending).
CODE_FORMATS = ("pm1", "sparse")


# ----------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------


def _check_matrix(array: Any, name: str) -> jax.Array:
    """Returns ``array`` as a non-empty 2-D jax array, else raises a ValueError."""
    return jnp.asarray(index_lib._check_2d(array, name))


_holds_only_plus_minus_one = index_lib._all_plus_minus_one  # True when all entries are ±1


@jax.jit
def _holds_only_zero_one(array: jax.Array) -> jax.Array:
    """True when every entry of ``array`` is 0 or 1."""
    return jnp.all((array == 0) | (array == 1))


def _check_codes(codes: Any, name: str) -> jax.Array:
    """Validates a ``[M, K]`` code matrix: signed int or float dtype, values exactly +-1."""
    codes = index_lib._check_2d(codes, name)  # dtype checked before any conversion to jax
    if not (
        np.issubdtype(codes.dtype, np.signedinteger)
        or np.issubdtype(codes.dtype, np.floating)
    ):
        raise ValueError(
            f"{name} must have a signed integer or floating dtype holding -1/+1, "
            f"got dtype {codes.dtype}."
        )
    codes = jnp.asarray(codes)
    if not bool(_holds_only_plus_minus_one(codes)):
        raise ValueError(f"{name} must hold only the values -1 and +1.")
    return codes


@jax.jit
def _zero_one_rows(codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: True when it holds only 0 and 1, and its number of ones (int32)."""
    return (jnp.all((codes == 0) | (codes == 1), axis=1),
            jnp.sum(codes == 1, axis=1, dtype=jnp.int32))


def _check_sparse_codes(codes: Any, name: str) -> tuple[jax.Array, np.ndarray]:
    """Validates a ``[M, D]`` sparse code matrix (bool, integer or floating dtype, values
    exactly 0/1); returns it and the number of ones of every row (int [M])."""
    codes = index_lib._check_2d(codes, name)
    if not (
        np.issubdtype(codes.dtype, np.bool_)
        or np.issubdtype(codes.dtype, np.integer)
        or np.issubdtype(codes.dtype, np.floating)
    ):
        raise ValueError(
            f"{name} must have a bool, integer or floating dtype holding 0/1 for "
            f"code_format='sparse', got dtype {codes.dtype}."
        )
    codes = jnp.asarray(codes)
    valid_m, ones_m = (np.asarray(x) for x in _zero_one_rows(codes))
    if not valid_m.all():
        row = int(np.flatnonzero(~valid_m)[0])
        bad = np.asarray(codes[row])
        value = bad[(bad != 0) & (bad != 1)][0].item()
        raise ValueError(
            f"{name} must hold only the values 0 and 1 for code_format='sparse'; row {row} "
            f"holds {value!r}."
        )
    return codes, ones_m


def _check_same_number_of_ones(query_ones_q: np.ndarray, db_ones_n: np.ndarray) -> int:
    """The common number ``r >= 1`` of ones of every query and database row, else a
    ValueError naming the first offending array and row."""
    r = int(query_ones_q[0])
    if r < 1:
        raise ValueError(
            "sparse codes need r >= 1 ones in every row, but row 0 of query_codes has none."
        )
    for ones_m, name in ((query_ones_q, "query_codes"), (db_ones_n, "db_codes")):
        bad = np.flatnonzero(ones_m != r)
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"sparse codes need the same number r of ones in every row of query_codes "
                f"and db_codes: {name} row {row} has {int(ones_m[row])} ones, but row 0 of "
                f"query_codes has r = {r}."
            )
    return r


def _check_labels(labels: Any, name: str) -> jax.Array:
    """Validates a ``[M, C]`` multi-hot label matrix (values 0 or 1, any numeric dtype)."""
    labels = _check_matrix(labels, name)
    if not bool(_holds_only_zero_one(labels)):
        raise ValueError(f"{name} must be multi-hot: only the values 0 and 1 are allowed.")
    return labels


def _check_pair(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any,
    code_format: str = "pm1",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, int | None]:
    """Validates the four retrieval inputs and their agreement (Q, N, K and C); for
    ``code_format="sparse"`` also the common number ``r`` of ones per row, returned last
    (None for ``"pm1"``)."""
    if code_format == "sparse":
        query_codes, query_ones = _check_sparse_codes(query_codes, "query_codes")
        db_codes, db_ones = _check_sparse_codes(db_codes, "db_codes")
        width = "dimension D"
    else:
        query_codes = _check_codes(query_codes, "query_codes")
        db_codes = _check_codes(db_codes, "db_codes")
        width = "number of bits K"
    query_labels = _check_labels(query_labels, "query_labels")
    db_labels = _check_labels(db_labels, "db_labels")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query_codes and db_codes must have the same {width}, got "
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
    ones = _check_same_number_of_ones(query_ones, db_ones) if code_format == "sparse" else None
    return query_codes, db_codes, query_labels, db_labels, ones


def _check_choice(value: Any, allowed: tuple[str, ...], name: str, meaning: str = "") -> str:
    """``value`` if it is one of the strings ``allowed``, else a ValueError naming them."""
    if not (isinstance(value, str) and value in allowed):
        raise ValueError(f"{name} must be one of {allowed}{meaning}, got {value!r}.")
    return value


def _check_convention(convention: Any) -> str:
    return _check_choice(
        convention, CONVENTIONS, "convention",
        " ('top_k': JSPSH mAP.m, DJSRH/JDSH calculate_top_map; 'dcmh': DCMH/DCHMT "
        "calc_map_k)")


def _check_code_format(code_format: Any) -> str:
    return _check_choice(
        code_format, CODE_FORMATS, "code_format",
        " ('pm1': {-1, +1} codes, Hamming distance; 'sparse': {0, 1} codes with r ones per "
        "row, inner product)")


def _use_host_ranking(method: Any, mesh: Mesh | None) -> bool:
    """True for ``method="host"``, and for ``"auto"`` when the work would run on CPU
    devices (the mesh's, else the default backend's); False for ``"device"``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if method != "auto":
        return method == "host"
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return platform == "cpu"


def _check_ns(ns: Any, num_db: int) -> np.ndarray:
    """Validates a non-empty sequence of positive ints; returns them clipped to ``N``."""
    if hasattr(ns, "dtype") and hasattr(ns, "ndim") and ns.ndim == 1:
        ns = np.asarray(ns).tolist()  # numpy or jax 1-D arrays
    if isinstance(ns, (str, bytes)) or not isinstance(ns, Sequence):
        raise ValueError(f"ns must be a sequence of positive integers, got {ns!r}.")
    if len(ns) == 0:
        raise ValueError("ns must contain at least one positive integer, got an empty sequence.")
    checked = [index_lib._check_positive_int(n, "each entry of ns") for n in ns]
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
# The chunked kernel: exact ranks by counting, no sort
# ----------------------------------------------------------------------------------------


class _QueryStatistics(NamedTuple):
    """Per-query outputs of :func:`_query_statistics`; ``V = K + 2`` distance buckets
    (``r + 2`` for sparse codes; the last bucket holds the padding rows and is ignored)."""

    count_by_distance: jax.Array  # int32 [Q, V]: database items at each Hamming distance
    relevant_by_distance: jax.Array  # int32 [Q, V]: relevant items at each distance
    precision_sum_all: jax.Array  # float32 [Q]: sum over relevant items of hits(r) / r
    precision_sum_top_k: jax.Array  # float32 [Q]: the same over relevant items with r <= top_k
    relevant_in_top_k: jax.Array  # int32 [Q]: relevant items with r <= top_k
    relevant_in_top_n: jax.Array  # int32 [Q, M]: relevant items with r <= ns[m]
    # float32 [Q]: the sum of hits(r) / r over the first min(top_k, R) relevant items,
    # wherever they rank (relevant items with hits(r) <= top_k): the DCMH/DCHMT MAP@K.
    precision_sum_first_k: jax.Array


def _tile_distance_and_relevance(query_words_wc, query_labels_lc, db_words_tw, db_labels_tl,
                                 valid_t, pad_bucket, halve=False):
    """Distances int32 [T, C] (``pad_bucket`` on padding rows) and relevance bool [T, C] of a
    tile of T database rows to a chunk of C queries (queries in the minor axis).

    ``d = sum_w popcount(db_w XOR q_w)`` on packed uint32 words (halved for sparse codes,
    ``halve``: ``r - <q, b>``); ``relevant = any_w (db_labels_w AND q_labels_w) != 0`` (at
    least one shared label)."""
    distance = index_lib.hamming_rows_by_queries(db_words_tw, query_words_wc)
    if halve:
        distance = distance >> 1
    distance = distance.astype(jnp.int32)
    distance = jnp.where(valid_t[:, None], distance, pad_bucket)
    shared = None
    for word in range(db_labels_tl.shape[1]):
        overlap = (db_labels_tl[:, word : word + 1] & query_labels_lc[word][None, :]) != 0
        shared = overlap if shared is None else shared | overlap
    return distance, shared & valid_t[:, None]


def _kahan_add(total: jax.Array, compensation: jax.Array, value: jax.Array):
    """Compensated float32 summation step: ``total + value`` with the rounding error kept."""
    corrected = value - compensation
    new_total = total + corrected
    return new_total, (new_total - total) - corrected


def _chunk_statistics(query_words_wc, query_labels_lc, db_words_nw, db_labels_nl, num_db,
                      top_k, ns_m, *, num_bits, with_top_k, sparse_ones=None):
    """:class:`_QueryStatistics` (bucket-major, ``[V, C]`` / ``[C]`` / ``[M, C]``) of one
    chunk of C queries against the padded database ``[N_pad, ...]``.

    ``num_bits`` is K for ``{-1, +1}`` codes (``sparse_ones=None``, ``K + 1`` distances);
    for sparse codes with ``r = sparse_ones`` ones per row the distance is ``popcount(XOR)
    / 2 = r - <q, b>`` and takes ``r + 1`` values.

    Ranking by (distance, row). For an item ``n`` at distance ``v``::

        rank(n) = #{m : d_m < v} + #{m < n : d_m = v} + 1
        hits(n) = #{relevant m : d_m < v} + #{relevant m <= n : d_m = v}

    Pass 1 counts items and relevant items per distance bucket (a scatter-add per tile);
    their exclusive prefix sums over buckets give the first terms. Pass 2 walks the
    database in row order, ``RANK_BLOCK_ROWS`` rows per step, carrying those prefixes plus
    the running count per bucket of the rows already seen (a gather before and a
    scatter-add after each block); inside a block the earlier rows at the same distance are
    counted pairwise. Everything is O(N) per query; no sort.

    The distances of a tile of ``TILE_ROWS`` rows are computed in bulk and handed to the
    inner loop over blocks: that materialises them (XLA:CPU would otherwise fuse and
    recompute the popcounts inside every consumer, e.g. 2 * RANK_BLOCK_ROWS times in the
    pairwise comparison).
    """
    num_queries = query_words_wc.shape[1]
    max_distance = num_bits if sparse_ones is None else sparse_ones
    num_buckets = max_distance + 2
    pad_bucket = max_distance + 1
    padded_rows = db_words_nw.shape[0]
    num_tiles = padded_rows // TILE_ROWS
    lanes = jnp.arange(num_queries, dtype=jnp.int32)
    tiles = (db_words_nw.reshape(num_tiles, TILE_ROWS, -1),
             db_labels_nl.reshape(num_tiles, TILE_ROWS, -1),
             (jnp.arange(padded_rows, dtype=jnp.int32) < num_db).reshape(num_tiles, TILE_ROWS))

    def tile_distances(tile):
        return _tile_distance_and_relevance(query_words_wc, query_labels_lc, *tile, pad_bucket,
                                            halve=sparse_ones is not None)

    # Pass 1: histograms over distance buckets, flattened as bucket * C + query.
    def histogram_step(carry, tile):
        count_flat, relevant_flat = carry
        distance, relevant = tile_distances(tile)
        # One scatter-add per tile of all + 65536 * relevant (a tile has < 65536 rows).
        packed = jnp.zeros_like(count_flat).at[distance * num_queries + lanes].add(
            jnp.where(relevant, 65537, 1), mode="promise_in_bounds")
        return (count_flat + (packed & 0xFFFF), relevant_flat + (packed >> 16)), None

    zeros_flat = jnp.zeros((num_buckets * num_queries,), jnp.int32)
    (count_flat, relevant_flat), _ = jax.lax.scan(histogram_step, (zeros_flat, zeros_flat), tiles)
    count_vc = count_flat.reshape(num_buckets, num_queries)
    relevant_vc = relevant_flat.reshape(num_buckets, num_queries)

    # Pass 2: ranks in row order, RANK_BLOCK_ROWS rows per step.
    block_rows = RANK_BLOCK_ROWS
    compare_dtype = jnp.uint8 if pad_bucket < 256 else jnp.int32
    earlier_row = (jnp.arange(block_rows)[:, None] > jnp.arange(block_rows)[None, :])[:, :, None]

    def rank_step(carry, block):
        tables, seen_flat, sums, counts_k, counts_n = carry
        before_all, before_relevant = tables
        distance, relevant = block
        # Earlier rows of this block at the same distance, packed as all + 256 * relevant
        # (at most RANK_BLOCK_ROWS - 1 < 256 of each).
        weight = jnp.where(relevant, jnp.uint16(257), jnp.uint16(1))
        small = distance.astype(compare_dtype)
        same = (small[:, None, :] == small[None, :, :]) & earlier_row
        in_block = jnp.sum(jnp.where(same, weight[None], jnp.uint16(0)), axis=1,
                           dtype=jnp.uint16).astype(jnp.int32)
        flat = distance * num_queries + lanes
        # Earlier blocks of this tile at the same distance: all + 65536 * relevant (a tile
        # has fewer than 65536 rows).
        seen = seen_flat.at[flat].get(mode="promise_in_bounds")
        seen_flat = seen_flat.at[flat].add(jnp.where(relevant, 65537, 1), mode="promise_in_bounds")
        # Earlier tiles and smaller distances: the carried tables.
        rank = (before_all.at[flat].get(mode="promise_in_bounds") + (seen & 0xFFFF)
                + (in_block & 255) + 1)
        hits = (before_relevant.at[flat].get(mode="promise_in_bounds") + (seen >> 16)
                + (in_block >> 8) + 1)
        precision = jnp.where(relevant, hits.astype(jnp.float32) / rank.astype(jnp.float32), 0.0)
        sum_all, comp_all, sum_k, comp_k, sum_first, comp_first = sums
        sum_all, comp_all = _kahan_add(sum_all, comp_all, jnp.sum(precision, axis=0))
        if with_top_k:
            in_top_k = rank <= top_k
            sum_k, comp_k = _kahan_add(
                sum_k, comp_k, jnp.sum(jnp.where(in_top_k, precision, 0.0), axis=0))
            counts_k = counts_k + jnp.sum(relevant & in_top_k, axis=0, dtype=jnp.int32)
            # DCMH/DCHMT: the first top_k relevant items, wherever they rank.
            sum_first, comp_first = _kahan_add(
                sum_first, comp_first, jnp.sum(jnp.where(hits <= top_k, precision, 0.0), axis=0))
        if ns_m.shape[0]:
            counts_n = counts_n + jnp.sum(
                relevant[None] & (rank[None] <= ns_m[:, None, None]), axis=1, dtype=jnp.int32)
        sums = (sum_all, comp_all, sum_k, comp_k, sum_first, comp_first)
        return (tables, seen_flat, sums, counts_k, counts_n), None

    def rank_tile(carry, tile):
        (before_all, before_relevant), sums, counts_k, counts_n = carry
        distance, relevant = tile_distances(tile)
        shape = (TILE_ROWS // block_rows, block_rows, num_queries)
        inner = ((before_all, before_relevant), jnp.zeros_like(before_all), sums, counts_k,
                 counts_n)
        (_, seen_flat, sums, counts_k, counts_n), _ = jax.lax.scan(
            rank_step, inner, (distance.reshape(shape), relevant.reshape(shape)))
        tables = (before_all + (seen_flat & 0xFFFF), before_relevant + (seen_flat >> 16))
        return (tables, sums, counts_k, counts_n), None

    exclusive = lambda x: (jnp.cumsum(x, axis=0) - x).reshape(-1)  # noqa: E731
    zeros_c = jnp.zeros((num_queries,), jnp.float32)
    init = ((exclusive(count_vc), exclusive(relevant_vc)), (zeros_c,) * 6,
            jnp.zeros((num_queries,), jnp.int32),
            jnp.zeros((ns_m.shape[0], num_queries), jnp.int32))
    (_, (sum_all, _, sum_k, _, sum_first, _), counts_k, counts_n), _ = jax.lax.scan(
        rank_tile, init, tiles)
    return _QueryStatistics(count_vc, relevant_vc, sum_all, sum_k, counts_k, counts_n, sum_first)


def _chunk_layout(num_queries: int, query_chunk: int, num_devices: int) -> tuple[int, int]:
    """``(chunks per device, queries per chunk)``: the fewest chunks of at most
    ``query_chunk`` queries (rounded up to a multiple of 8) covering ``Q`` queries split
    evenly over ``num_devices`` devices."""
    per_device = -(-num_queries // num_devices)
    chunks = -(-per_device // query_chunk)
    size = -(-per_device // chunks)
    return chunks, -(-size // 8) * 8


@functools.partial(
    jax.jit, static_argnames=("num_bits", "query_chunk", "with_top_k", "mesh", "sparse_ones"))
def _query_statistics(query_words_qw, query_labels_ql, db_words_nw, db_labels_nl, top_k, ns_m,
                      *, num_bits, query_chunk, with_top_k, mesh,
                      sparse_ones=None) -> _QueryStatistics:
    """Maps :func:`_chunk_statistics` over the query chunks (``lax.map``); with a mesh the
    chunks are split over its ``data`` axis and the database is replicated. ``sparse_ones``:
    None for ``{-1, +1}`` codes, ``r`` for sparse ``{0, 1}`` codes with ``r`` ones per row.

    Inputs are packed uint32 words (:func:`fjsph_jax.evaluation.index.code_words`,
    :func:`fjsph_jax.evaluation.index.label_words`). The database is padded to a multiple of
    ``TILE_ROWS`` rows (padding rows are masked), the queries to whole chunks (their
    outputs dropped). Working memory per device is ``O(query_chunk * (K + TILE_ROWS +
    RANK_BLOCK_ROWS**2))`` plus the inputs. Returns per-query statistics ``[Q, ...]``.
    """
    num_db = db_words_nw.shape[0]
    padded_db = -(-num_db // TILE_ROWS) * TILE_ROWS
    db_words_nw = jnp.pad(db_words_nw, ((0, padded_db - num_db), (0, 0)))
    db_labels_nl = jnp.pad(db_labels_nl, ((0, padded_db - num_db), (0, 0)))
    num_queries = query_words_qw.shape[0]
    num_devices = 1 if mesh is None else mesh.shape[parallel.DATA_AXIS]
    chunks_per_device, chunk_size = _chunk_layout(num_queries, query_chunk, num_devices)
    num_chunks = num_devices * chunks_per_device

    def split(array_qx):
        padded = jnp.pad(array_qx, ((0, num_chunks * chunk_size - num_queries), (0, 0)))
        return jnp.swapaxes(padded.reshape(num_chunks, chunk_size, array_qx.shape[1]), 1, 2)

    def map_chunks(query_words_twc, query_labels_tlc, db_words, db_labels, top_k, ns_m):
        def chunk(arrays):
            stats = _chunk_statistics(*arrays, db_words, db_labels, num_db, top_k, ns_m,
                                      num_bits=num_bits, with_top_k=with_top_k,
                                      sparse_ones=sparse_ones)
            return _QueryStatistics(*(jnp.moveaxis(x, -1, 0) for x in stats))  # queries first

        return jax.lax.map(chunk, (query_words_twc, query_labels_tlc))

    if mesh is not None:
        sharded, replicated = P(parallel.DATA_AXIS), P()
        map_chunks = jax.shard_map(
            map_chunks, mesh=mesh, out_specs=sharded, check_vma=False,
            in_specs=(sharded, sharded, replicated, replicated, replicated, replicated))
    stats = map_chunks(split(query_words_qw), split(query_labels_ql), db_words_nw, db_labels_nl,
                       top_k, ns_m)
    return _QueryStatistics(
        *(x.reshape((num_chunks * chunk_size,) + x.shape[2:])[:num_queries] for x in stats))


class _RetrievalMetrics(NamedTuple):
    """Host-side means (float64) of the per-query statistics; ``V = K + 1`` PR points
    (``r + 1`` for sparse codes)."""

    map_all: float
    map_at_k: float  # the "top_k" convention (JSPSH mAP.m, DJSRH/JDSH calculate_top_map)
    precision_at_n: np.ndarray  # [M]
    pr_precision: np.ndarray  # [V]
    pr_recall: np.ndarray  # [V]
    map_at_k_dcmh: float  # the "dcmh" convention (DCMH/DCHMT calc_map_k)

    def map_at_k_in(self, convention: str) -> float:
        return self.map_at_k if convention == "top_k" else self.map_at_k_dcmh


def _compute_metrics(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    top_k: int | None,
    ns: Sequence[int] | None,
    query_chunk: int,
    mesh: Mesh | None = None,
    method: str = "auto",
    code_format: str = "pm1",
) -> tuple[_RetrievalMetrics, np.ndarray]:
    """Validates inputs, computes the per-query statistics (the kernel, or the host ranking
    of :mod:`fjsph_jax.evaluation.metrics_host`, see :func:`_use_host_ranking`), averages them in
    float64; also returns the clipped ns. Both MAP@K conventions come from the same pass."""
    on_host = _use_host_ranking(method, mesh)
    code_format = _check_code_format(code_format)
    query_chunk = index_lib._check_positive_int(query_chunk, "query_chunk")
    if top_k is not None:
        top_k = index_lib._check_positive_int(top_k, "top_k")
    query_codes, db_codes, query_labels, db_labels, sparse_ones = _check_pair(
        query_codes, db_codes, query_labels, db_labels, code_format
    )
    num_bits = query_codes.shape[1]
    num_buckets = (num_bits if sparse_ones is None else sparse_ones) + 1  # distances 0..max
    num_db = db_codes.shape[0]
    effective_top_k = num_db if top_k is None else min(top_k, num_db)
    ns_m = _check_ns(ns, num_db) if ns is not None else np.zeros((0,), np.int32)
    # Pad ns to a multiple of _NS_BUCKET (with n = 1) so most ns lists share one compile.
    padded_length = -(-len(ns_m) // _NS_BUCKET) * _NS_BUCKET
    padded_ns = np.pad(ns_m, (0, padded_length - len(ns_m)), constant_values=1)

    if sparse_ones is None:
        code_words = lambda codes, name: index_lib.code_words(codes, name=name)[0]  # noqa: E731
    else:  # {0, 1} codes: bit 1 where the code is 1 (the packing of multi-hot labels)
        code_words = index_lib.label_words
    words = (
        code_words(query_codes, name="query_codes"),
        index_lib.label_words(query_labels, name="query_labels"),
        code_words(db_codes, name="db_codes"),
        index_lib.label_words(db_labels, name="db_labels"),
    )
    if on_host:
        stats = _QueryStatistics(*metrics_host.query_statistics(
            *words, num_bits=num_bits, top_k=None if top_k is None else effective_top_k,
            ns_m=ns_m, query_chunk=query_chunk, sparse_ones=sparse_ones))
    else:
        stats = jax.device_get(_query_statistics(
            *words,
            np.int32(effective_top_k),
            padded_ns,
            num_bits=num_bits,
            query_chunk=query_chunk,
            with_top_k=top_k is not None,
            mesh=mesh,
            sparse_ones=sparse_ones,
        ))
    count_qv = stats.count_by_distance[:, :num_buckets].astype(np.float64)
    relevant_qv = stats.relevant_by_distance[:, :num_buckets].astype(np.float64)
    num_relevant = relevant_qv.sum(axis=1)
    map_all = np.where(num_relevant > 0, stats.precision_sum_all / np.maximum(num_relevant, 1), 0)
    # "top_k": divided by R_K, the relevant items in the top K.
    relevant_k = stats.relevant_in_top_k.astype(np.float64)
    map_at_k = np.where(relevant_k > 0, stats.precision_sum_top_k / np.maximum(relevant_k, 1), 0)
    # "dcmh": divided by min(K, R), the number of the first relevant items summed over.
    first_k = np.minimum(effective_top_k, num_relevant)
    map_at_k_dcmh = np.where(
        first_k > 0, stats.precision_sum_first_k / np.maximum(first_k, 1), 0)
    precision_at_n = (stats.relevant_in_top_n[:, : len(ns_m)] / ns_m).mean(axis=0)

    retrieved_qr = np.cumsum(count_qv, axis=1)  # items within radius r
    relevant_retrieved_qr = np.cumsum(relevant_qv, axis=1)
    retrieving_qr = retrieved_qr > 0
    num_retrieving = retrieving_qr.sum(axis=0)
    precision_qr = np.where(retrieving_qr, relevant_retrieved_qr / np.maximum(retrieved_qr, 1), 0)
    has_relevant = num_relevant > 0
    metrics = _RetrievalMetrics(
        map_all=float(map_all.mean()),
        map_at_k=float(map_at_k.mean()),
        map_at_k_dcmh=float(map_at_k_dcmh.mean()),
        precision_at_n=precision_at_n,
        pr_precision=np.where(
            num_retrieving > 0, precision_qr.sum(axis=0) / np.maximum(num_retrieving, 1), 0.0),
        pr_recall=(
            (relevant_retrieved_qr[has_relevant] / num_relevant[has_relevant, None]).mean(axis=0)
            if has_relevant.any() else np.zeros(num_buckets)),
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
    convention: str = "top_k",
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    mesh: Mesh | None = None,
    method: str = "auto",
    code_format: str = "pm1",
) -> float:
    """Mean average precision over the queries, MAP@all or MAP@``top_k``.

    For one query with the database ranked by Hamming distance (ties by database index),
    ``rel(r)`` the relevance of the item at rank ``r``, ``P@r = (1/r) sum_{i <= r} rel(i)``,
    ``R`` the number of relevant database items and ``rank_1 < rank_2 < ...`` their ranks
    (so ``P@rank_i = i / rank_i``)::

        AP@all = (1 / R) * sum_{i <= R} i / rank_i

    MAP@K has two conventions in the cross-modal hashing literature (``convention``):

    * ``"top_k"`` (the default): JSPSH's ``mAP.m`` and DJSRH/JDSH's
      ``calculate_top_map``. AP over the relevant items *inside the top K*::

          AP@K = (1 / R_K) * sum_{r <= K} P@r * rel(r),   R_K = #relevant in the top K

    * ``"dcmh"``: DCMH/DCHMT's ``calc_map_k``. AP over the *first* ``min(K, R)`` relevant
      items, wherever they rank (beyond rank K too)::

          AP@K = (1 / min(K, R)) * sum_{i <= min(K, R)} i / rank_i

      The first ``R_K`` terms are those of ``"top_k"``; the two differ exactly when fewer
      than ``min(K, R)`` relevant items rank inside the top K (the extra terms come from
      ranks beyond K and the denominator is larger). E.g. random 16-bit codes at K = 50
      give about 0.26 under ``"top_k"`` and 0.23 under ``"dcmh"``.

    A query whose AP denominator is 0 (no relevant item: ``R = 0``; ``"top_k"``: none in
    the top K) has AP 0 and still counts in the mean over all ``Q`` queries. For ``K >= N``
    both conventions equal MAP@all.

    Args:
      query_codes: ``[Q, K]`` codes in {-1, +1} (``code_format="pm1"``), or ``[Q, D]``
        codes in {0, 1} with ``r`` ones per row (``code_format="sparse"``).
      db_codes: ``[N, K]`` codes in {-1, +1}, or ``[N, D]`` codes in {0, 1} with the same
        ``r`` ones per row as the queries.
      query_labels: ``[Q, C]`` multi-hot labels.
      db_labels: ``[N, C]`` multi-hot labels.
      top_k: rank cut-off ``K`` (clipped to ``N``); ``None`` for MAP@all.
      convention: ``"top_k"`` or ``"dcmh"``, the MAP@K convention above (MAP@all is the
        same under both).
      query_chunk: at most this many queries are processed at once (rounded up to a
        multiple of 8). Kernel: the queries of a chunk are its vector lanes, memory
        ``O(query_chunk * (K + 4096))``. Host ranking: the distances of a chunk are
        computed in one go, at most ``metrics_host.MAX_CHUNK_PAIRS`` query-item pairs.
      mesh: optional mesh; the kernel splits the query chunks over its ``data`` axis (the
        database is replicated on every device). The host ranking uses it only to choose
        the method: it ranks on one thread per core.
      method: ``"device"``: the counting kernel, on the mesh or default device;
        ``"host"``: distances in JAX, then a stable counting sort per query on the host,
        one thread per core (:mod:`fjsph_jax.evaluation.metrics_host`); ``"auto"``: ``"host"``
        when the devices are CPUs, else ``"device"``. All give the same result (counts
        exactly, sums to float rounding).
      code_format: ``"pm1"``: ``{-1, +1}`` codes ranked by Hamming distance; ``"sparse"``:
        ``{0, 1}`` codes with the same number ``r >= 1`` of ones in every row, ranked by
        inner product descending (ties by database index), i.e. by ``d = r - <q, b>``
        ascending (see the module docstring).

    Returns:
      The MAP as a Python float in [0, 1].
    """
    convention = _check_convention(convention)
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=top_k, ns=None, query_chunk=query_chunk, mesh=mesh, method=method,
        code_format=code_format,
    )
    return metrics.map_all if top_k is None else metrics.map_at_k_in(convention)


def precision_at_n(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ns: Sequence[int],
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    mesh: Mesh | None = None,
    method: str = "auto",
    code_format: str = "pm1",
) -> np.ndarray:
    """Mean over queries of ``P@n = (1/n) * #relevant items among the top n``.

    Each ``n`` in ``ns`` is clipped to the database size ``N``. Ranking, ``query_chunk``,
    ``mesh``, ``method`` and ``code_format`` as in :func:`mean_average_precision`.

    Returns:
      float64 ``[len(ns)]``.
    """
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=None, ns=ns, query_chunk=query_chunk, mesh=mesh, method=method,
        code_format=code_format,
    )
    return metrics.precision_at_n


def precision_recall_curve(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    mesh: Mesh | None = None,
    method: str = "auto",
    code_format: str = "pm1",
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-ball retrieval at radii ``t = 0..K``.

    For query ``q`` at radius ``t`` the retrieved set is ``{n : d(q, n) <= t}``. For
    ``code_format="sparse"`` the distance is ``d = r - <q, n>``, so ``t = 0..r`` retrieves
    the items with inner product ``>= r - t`` (``r + 1`` points).

    * ``precision[t]`` = mean of ``|retrieved and relevant| / |retrieved|`` over the
      queries that retrieve at least one item at radius ``t``; 0 if none does.
    * ``recall[t]`` = mean of ``|retrieved and relevant| / |relevant|`` over the queries
      with at least one relevant database item; all 0 if no query has one.

    ``query_chunk``, ``mesh``, ``method`` and ``code_format`` as in
    :func:`mean_average_precision`.

    Returns:
      ``(precision, recall)``, each float64 ``[K + 1]`` (``[r + 1]`` for sparse codes);
      the last recall is 1 whenever some query has a relevant item.
    """
    metrics, _ = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=None, ns=None, query_chunk=query_chunk, mesh=mesh, method=method,
        code_format=code_format,
    )
    return metrics.pr_precision, metrics.pr_recall


def evaluate_retrieval(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    top_k: int | None = None,
    convention: str = "top_k",
    ns: Sequence[int] = DEFAULT_PRECISION_NS,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    mesh: Mesh | None = None,
    method: str = "auto",
    code_format: str = "pm1",
) -> dict[str, Any]:
    """All retrieval metrics from one pass over the query chunks.

    Returns a JSON-serialisable dict::

        {"map_all": float,
         # only when top_k is given (both conventions come from the same pass):
         "map_at_k": float,                       # under `convention`
         "map_at_k_convention": "top_k" | "dcmh", # = convention
         "map_at_k_by_convention": {"top_k": float, "dcmh": float},
         "precision_at_n": {"ns": [int], "values": [float]},   # ns clipped to N
         "pr_curve": {"precision": [float] * V, "recall": [float] * V}}

    with ``V = K + 1`` radii (``r + 1`` thresholds for ``code_format="sparse"``).
    Definitions (and ``convention``, ``query_chunk``, ``mesh``, ``method``,
    ``code_format``) as in :func:`mean_average_precision`, :func:`precision_at_n` and
    :func:`precision_recall_curve`.
    """
    convention = _check_convention(convention)
    metrics, ns_m = _compute_metrics(
        query_codes, db_codes, query_labels, db_labels,
        top_k=top_k, ns=ns, query_chunk=query_chunk, mesh=mesh, method=method,
        code_format=code_format,
    )
    result: dict[str, Any] = {"map_all": metrics.map_all}
    if top_k is not None:
        result["map_at_k"] = metrics.map_at_k_in(convention)
        result["map_at_k_convention"] = convention
        result["map_at_k_by_convention"] = {
            name: metrics.map_at_k_in(name) for name in CONVENTIONS}
    result["precision_at_n"] = {
        "ns": [int(n) for n in ns_m],
        "values": [float(v) for v in metrics.precision_at_n],
    }
    result["pr_curve"] = {
        "precision": [float(v) for v in metrics.pr_precision],
        "recall": [float(v) for v in metrics.pr_recall],
    }
    return result
