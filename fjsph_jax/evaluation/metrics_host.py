"""Host ranking for the retrieval metrics on CPU: JAX distances, a counting sort per query.

:mod:`fjsph_jax.evaluation.metrics` ranks the database without sorting, by counting
(:func:`fjsph_jax.evaluation.metrics._chunk_statistics`). That kernel needs a gather and a
scatter-add into per-distance counters for every query-item pair, which XLA:CPU emits as
scalar loops (about 25 ns per pair in all). On CPU this module computes the same per-query
statistics in about a quarter of the time:

1. JAX computes, for a chunk of ``C`` queries, the Hamming distances ``d`` [C, N] (uint8
   for K <= 255) and the relevance ``rel`` [C, N] (bool), queries in the major axis: a
   fused XOR / popcount / AND, about 1 ns per pair. For sparse ``{0, 1}`` codes with ``r``
   ones per row (``sparse_ones=r``) the distance is ``popcount(q XOR b) / 2 = r - <q, b>``
   (``r + 1`` buckets instead of ``K + 1``).
2. On the host, each query's items are put in rank order by a *stable counting sort* on
   the distance (``K + 1`` buckets; within a bucket, database rows stay in increasing
   order), which is exactly the ranking of the metrics (distance ascending, lower row
   first). The sort moves the relevance bits, ``ranked[r] = rel[item at rank r]``, and
   yields the bucket ends ``e_v = #{n : d_n <= v}``. It runs in scipy's compiled
   COO-to-CSR conversion (the distance as the row, the database row as the column), about
   4 ns per item; where that private routine is missing or misbehaves, numpy's stable
   ``argsort`` (a radix sort for 8 and 16-bit keys) and a gather take over (about 8 ns).
3. With ``rank_1 < ... < rank_R`` the 1-based ranks of the ``R`` relevant items (the
   non-zeros of ``ranked``), ``hits(rank_i) = i``, so::

       sum_all       = sum_i i / rank_i
       sum_top_k     = sum_{i : rank_i <= K} i / rank_i,   in_top_k = #{i : rank_i <= K}
       sum_first_k   = sum_{i <= min(K, R)} i / rank_i     (the first K relevant items)
       in_top_n[m]   = #{i : rank_i <= n_m}
       count[v]      = e_v - e_{v-1},   relevant[v] = #{i : rank_i <= e_v} - (same at v-1)

   (binary searches in the sorted ``rank`` vector).
4. Queries are ranked on a pool of threads (the compiled sort and numpy's array loops
   release the GIL) while JAX computes the next chunk's distances.

Memory is two ``[C, N]`` byte arrays per chunk (``C * N <=`` :data:`MAX_CHUNK_PAIRS`), at
most three chunks alive, plus ``O(N)`` scratch per thread. Sums are float64 (the kernel's are
compensated float32); counts are exact, so the statistics equal the kernel's: the counts
exactly, the sums to about 1e-7 relative.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MAX_CHUNK_PAIRS = 1 << 24  # query-item pairs per distance chunk (2 x 16 MiB for K <= 255)


def default_threads() -> int:
    """Threads that rank queries: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def distance_dtype(num_bits: int) -> np.dtype:
    """Smallest dtype holding the distances ``0..K``: uint8, uint16, else int32."""
    if num_bits <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if num_bits <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


@functools.partial(jax.jit, static_argnames=("num_bits", "halve"))
def _distances_and_relevance(query_words_cw, query_labels_cl, db_words_wn, db_labels_ln, *,
                             num_bits, halve=False):
    """Distances and relevance of a chunk of queries to the whole database.

    Args:
      query_words_cw: uint32 [C, W] packed query codes.
      query_labels_cl: uint32 [C, L] packed query labels.
      db_words_wn: uint32 [W, N] packed database codes, transposed (items minor, so every
        op is vectorised over items).
      db_labels_ln: uint32 [L, N] packed database labels, transposed.
      num_bits: the largest distance: K, or r for sparse codes.
      halve: sparse codes (the same number of ones in every row): the distance is half
        the popcount, ``r - <q, db>``.

    Returns:
      ``d`` [C, N] of :func:`distance_dtype`, ``d = sum_w popcount(q_w XOR db_w)`` (halved
      when ``halve``), and ``rel`` bool [C, N], ``rel = any_l (q_l AND db_l) != 0``.
    """
    distance = None
    for word in range(db_words_wn.shape[0]):
        count = jax.lax.population_count(
            query_words_cw[:, word : word + 1] ^ db_words_wn[word][None, :])
        distance = count if distance is None else distance + count
    if halve:
        distance = distance >> 1
    relevant = None
    for word in range(db_labels_ln.shape[0]):
        overlap = (query_labels_cl[:, word : word + 1] & db_labels_ln[word][None, :]) != 0
        relevant = overlap if relevant is None else relevant | overlap
    return distance.astype(distance_dtype(num_bits)), relevant


# ----------------------------------------------------------------------------------------
# Stable counting sort of one query's items by distance
# ----------------------------------------------------------------------------------------


class _Scratch:
    """Per-thread buffers for one query of ``N`` items and ``V`` distance buckets."""

    def __init__(self, num_db: int, num_buckets: int):
        self.keys = np.empty(num_db, np.int32)  # the distances, as sort keys
        self.rows = np.empty(num_db, np.int32)  # database rows in rank order (unused)
        self.starts = np.empty(num_buckets + 1, np.int32)  # bucket starts, then N
        # ranked[r] = relevance of the item at rank r (1-based: ranked[0] stays False).
        self.ranked = np.zeros(num_db + 1, np.bool_)


@functools.cache
def _coo_to_csr() -> Callable[..., Any]:
    """scipy's compiled COO-to-CSR conversion ``coo_tocsr(n_row, n_col, nnz, Ai, Aj, Ax,
    Bp, Bj, Bx)``: a stable counting sort of ``(Aj, Ax)`` by ``Ai``. Private to scipy."""
    from scipy.sparse import _sparsetools

    return _sparsetools.coo_tocsr


def _sort_with_scipy(distance_n, relevant_n, scratch, columns_n):
    """Counting sort by scipy's ``coo_tocsr`` (rows = distances, columns = database rows,
    values = relevance): fills ``scratch.ranked[1:]`` and ``scratch.starts``."""
    num_buckets = scratch.starts.shape[0] - 1
    np.copyto(scratch.keys, distance_n)
    _coo_to_csr()(num_buckets, columns_n.shape[0], columns_n.shape[0], scratch.keys,
                  columns_n, relevant_n, scratch.starts, scratch.rows, scratch.ranked[1:])


def _sort_with_numpy(distance_n, relevant_n, scratch, columns_n):
    """The same with numpy: a stable ``argsort`` (radix sort for 8/16-bit keys), a gather of
    the relevance, and the bucket starts from a histogram."""
    del columns_n
    num_buckets = scratch.starts.shape[0] - 1
    order = np.argsort(distance_n, kind="stable")
    np.take(relevant_n, order, out=scratch.ranked[1:])
    scratch.starts[0] = 0
    np.cumsum(np.bincount(distance_n, minlength=num_buckets), out=scratch.starts[1:])


@functools.cache
def _scipy_sort_works() -> bool:
    """True when :func:`_sort_with_scipy` imports and sorts a small case correctly."""
    try:
        distance = np.array([2, 0, 2, 1, 0], np.uint8)
        relevant = np.array([True, False, False, True, True])
        scratch = _Scratch(5, 3)
        _sort_with_scipy(distance, relevant, scratch, np.arange(5, dtype=np.int32))
    except Exception:  # noqa: BLE001  (missing module, changed signature, ...)
        return False
    # Rank order: rows 1, 4 (d = 0), 3 (d = 1), 0, 2 (d = 2).
    return (scratch.starts.tolist() == [0, 2, 3, 5]
            and scratch.ranked.tolist() == [False, False, True, True, True, False])


def _sorter(name: str, num_db: int):
    """The counting sort to use: ``"scipy"`` (when it works and int32 indexes the
    database, else numpy) or ``"numpy"``."""
    if name not in ("scipy", "numpy"):
        raise ValueError(f"sort must be 'scipy' or 'numpy', got {name!r}.")
    if name == "scipy" and num_db < np.iinfo(np.int32).max and _scipy_sort_works():
        return _sort_with_scipy
    return _sort_with_numpy


# ----------------------------------------------------------------------------------------
# Per-query statistics
# ----------------------------------------------------------------------------------------


def _rank_query(distance_n, relevant_n, row, *, sort, scratch_for, columns_n, hits_n, top_k,
                ns_m, out):
    """Writes the statistics of one query (``d``, ``rel`` [N]) into row ``row`` of ``out``:
    the tuple that :func:`query_statistics` returns, except that the first two arrays get
    the cumulative counts ``#{n : d_n <= v}`` and ``#{relevant n : d_n <= v}``."""
    ends_qv, relevant_ends_qv, sum_all_q, sum_top_k_q, in_top_k_q, in_top_n_qm, sum_first_k_q = out
    scratch = scratch_for()
    sort(distance_n, relevant_n, scratch, columns_n)
    rank_r = np.flatnonzero(scratch.ranked)  # 1-based ranks of the relevant items, increasing
    precision_r = hits_n[: rank_r.shape[0]] / rank_r  # hits(rank_i) / rank_i = i / rank_i
    sum_all_q[row] = precision_r.sum()
    ends_qv[row] = scratch.starts[1:]  # e_v = #{n : d_n <= v}
    relevant_ends_qv[row] = np.searchsorted(rank_r, scratch.starts[1:], side="right")
    if top_k is not None:
        in_top_k = int(np.searchsorted(rank_r, top_k, side="right"))
        in_top_k_q[row] = in_top_k
        sum_top_k_q[row] = precision_r[:in_top_k].sum()
        sum_first_k_q[row] = precision_r[:top_k].sum()  # the first min(top_k, R) relevant
    if ns_m.shape[0]:
        in_top_n_qm[row] = np.searchsorted(rank_r, ns_m, side="right")


def query_statistics(query_words_qw: Any, query_labels_ql: Any, db_words_nw: Any,
                     db_labels_nl: Any, *, num_bits: int, top_k: int | None, ns_m: Any,
                     query_chunk: int, threads: int | None = None,
                     sort: str = "scipy",
                     sparse_ones: int | None = None) -> tuple[np.ndarray, ...]:
    """Per-query ranking statistics, computed on the host (see the module docstring).

    Args:
      query_words_qw: uint32 [Q, W] packed query codes (:func:`fjsph_jax.evaluation.index.code_words`).
      query_labels_ql: uint32 [Q, L] packed query labels (:func:`fjsph_jax.evaluation.index.label_words`).
      db_words_nw: uint32 [N, W] packed database codes.
      db_labels_nl: uint32 [N, L] packed database labels.
      num_bits: K, the code length (D for sparse codes).
      top_k: rank cut-off of MAP@K (at most N), or None to skip it.
      ns_m: int [M] cut-offs of P@n (each at most N), possibly empty.
      query_chunk: at most this many queries per distance chunk (fewer when
        ``chunk * N`` would exceed :data:`MAX_CHUNK_PAIRS`).
      threads: ranking threads (default :func:`default_threads`).
      sort: ``"scipy"`` (falls back to numpy where scipy's routine is unavailable) or
        ``"numpy"``.
      sparse_ones: None for packed ``{-1, +1}`` codes (distance = popcount(XOR), ``K + 1``
        buckets); ``r`` for packed sparse ``{0, 1}`` codes with exactly ``r`` ones in every
        query and database row (distance = popcount(XOR) / 2 = ``r - <q, b>``, ``r + 1``
        buckets; the caller validates the row sums).

    Returns:
      The fields of :class:`fjsph_jax.evaluation.metrics._QueryStatistics`, numpy arrays with the
      queries first: ``count_by_distance`` int64 [Q, V], ``relevant_by_distance``
      int64 [Q, V] (``V = K + 1``, or ``r + 1`` for sparse codes), ``precision_sum_all``
      float64 [Q] (``sum over relevant items of hits(r) / r``), ``precision_sum_top_k``
      float64 [Q] (the same over ``r <= top_k``; 0 without ``top_k``),
      ``relevant_in_top_k`` int64 [Q] (0 without ``top_k``), ``relevant_in_top_n`` int64
      [Q, M] and ``precision_sum_first_k`` float64 [Q] (the same sum over the first
      ``min(top_k, R)`` relevant items wherever they rank, ``hits(r) <= top_k``; 0 without
      ``top_k``).
    """
    num_queries = query_words_qw.shape[0]
    num_db = db_words_nw.shape[0]
    chunk = max(1, min(query_chunk, MAX_CHUNK_PAIRS // num_db, num_queries))
    chunk = -(-chunk // 8) * 8  # fewer distinct shapes to compile
    num_chunks = -(-num_queries // chunk)
    padding = ((0, num_chunks * chunk - num_queries), (0, 0))
    query_words = jnp.pad(jnp.asarray(query_words_qw), padding)
    query_labels = jnp.pad(jnp.asarray(query_labels_ql), padding)
    db_words_wn = jnp.asarray(db_words_nw).T
    db_labels_ln = jnp.asarray(db_labels_nl).T
    ns_m = np.asarray(ns_m, dtype=np.int64).reshape(-1)
    max_distance = num_bits if sparse_ones is None else int(sparse_ones)
    num_buckets = max_distance + 1
    out = (np.zeros((num_queries, num_buckets), np.int64),
           np.zeros((num_queries, num_buckets), np.int64),
           np.zeros((num_queries,), np.float64), np.zeros((num_queries,), np.float64),
           np.zeros((num_queries,), np.int64),
           np.zeros((num_queries, ns_m.shape[0]), np.int64),
           np.zeros((num_queries,), np.float64))

    local = threading.local()

    def scratch_for() -> _Scratch:
        if not hasattr(local, "scratch"):
            local.scratch = _Scratch(num_db, num_buckets)
        return local.scratch

    rank = functools.partial(
        _rank_query, sort=_sorter(sort, num_db), scratch_for=scratch_for,
        columns_n=np.arange(num_db, dtype=np.int32),
        hits_n=np.arange(1, num_db + 1, dtype=np.float64), top_k=top_k, ns_m=ns_m, out=out)

    def distances(index):
        rows = slice(index * chunk, (index + 1) * chunk)
        return _distances_and_relevance(query_words[rows], query_labels[rows], db_words_wn,
                                        db_labels_ln, num_bits=max_distance,
                                        halve=sparse_ones is not None)

    # Chunk i + 1's distances are computed (asynchronous dispatch) while the threads rank
    # chunk i, and chunk i's queries are queued before chunk i - 1's are waited for, so the
    # threads never idle between chunks; at most three chunks are alive.
    with concurrent.futures.ThreadPoolExecutor(threads or default_threads()) as pool:
        pending, previous = distances(0), []
        for index in range(num_chunks):
            distance_cn, relevant_cn = (np.asarray(x) for x in pending)
            if index + 1 < num_chunks:
                pending = distances(index + 1)
            first = index * chunk
            futures = [pool.submit(rank, distance_cn[c], relevant_cn[c], first + c)
                       for c in range(min(chunk, num_queries - first))]
            for future in previous:
                future.result()
            previous = futures
        for future in previous:
            future.result()
    count_qv, relevant_qv = (np.diff(ends_qv, axis=1, prepend=0) for ends_qv in out[:2])
    return (count_qv, relevant_qv) + out[2:]
