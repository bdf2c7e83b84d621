"""Tests for fjsph_jax.evaluation.metrics_host: the host ranking statistics equal a stable-argsort
reference and the counting kernel of fjsph_jax.evaluation.metrics, for both counting sorts."""

import numpy as np
import pytest

from fjsph_jax.evaluation import index as index_lib
from fjsph_jax.evaluation import metrics, metrics_host


def _random_problem(seed, num_queries, num_db, num_bits, num_classes, label_rate=0.25):
    """+-1 codes with many Hamming ties and multi-hot labels; query 0 has no label (no
    relevant item), and database labels are never all zero."""
    rng = np.random.default_rng(seed)
    query_codes = np.where(rng.random((num_queries, num_bits)) < 0.5, -1, 1).astype(np.int8)
    db_codes = np.where(rng.random((num_db, num_bits)) < 0.5, -1, 1).astype(np.int8)
    query_labels = (rng.random((num_queries, num_classes)) < label_rate).astype(np.int8)
    db_labels = (rng.random((num_db, num_classes)) < label_rate).astype(np.int8)
    query_labels[0] = 0
    return query_codes, db_codes, query_labels, db_labels


def _words(query_codes, db_codes, query_labels, db_labels):
    return (index_lib.code_words(query_codes)[0], index_lib.label_words(query_labels),
            index_lib.code_words(db_codes)[0], index_lib.label_words(db_labels))


def _sparse_problem(seed, num_queries, num_db, dim, ones, num_classes, label_rate=0.25):
    """{0, 1} codes with exactly `ones` ones per row (many inner-product ties) and
    multi-hot labels; query 0 has no label."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((num_queries + num_db, dim), np.int8)
    for row in codes:
        row[rng.choice(dim, size=ones, replace=False)] = 1
    query_labels = (rng.random((num_queries, num_classes)) < label_rate).astype(np.int8)
    db_labels = (rng.random((num_db, num_classes)) < label_rate).astype(np.int8)
    query_labels[0] = 0
    return codes[:num_queries], codes[num_queries:], query_labels, db_labels


def _sparse_words(query_codes, db_codes, query_labels, db_labels):
    return (index_lib.label_words(query_codes), index_lib.label_words(query_labels),
            index_lib.label_words(db_codes), index_lib.label_words(db_labels))


def reference_statistics(query_codes, db_codes, query_labels, db_labels, top_k, ns,
                         sparse=False):
    """The per-query statistics by a stable argsort per query (plain numpy): by Hamming
    distance for +-1 codes, by inner product descending for sparse {0, 1} codes (whose
    distance buckets are d = r - ip)."""
    inner = query_codes.astype(np.int64) @ db_codes.astype(np.int64).T
    if sparse:
        max_distance = int(query_codes[0].sum())
        distances = max_distance - inner
    else:
        max_distance = query_codes.shape[1]
        distances = (max_distance - inner) // 2
    relevant = (query_labels.astype(np.int64) @ db_labels.astype(np.int64).T) > 0
    rows = []
    for q in range(len(query_codes)):
        order = (np.argsort(-inner[q], kind="stable") if sparse
                 else np.argsort(distances[q], kind="stable"))
        ranks = np.flatnonzero(relevant[q][order]) + 1
        precision = np.arange(1, len(ranks) + 1) / ranks
        in_top_k = int((ranks <= top_k).sum()) if top_k is not None else 0
        rows.append((
            np.bincount(distances[q], minlength=max_distance + 1),
            np.bincount(distances[q][relevant[q]], minlength=max_distance + 1),
            precision.sum(),
            precision[:in_top_k].sum(),
            in_top_k,
            np.array([(ranks <= n).sum() for n in ns], np.int64),
            precision[:top_k].sum() if top_k is not None else 0.0,  # first min(K, R)
        ))
    return tuple(np.array(list(field)) for field in zip(*rows))


def _assert_statistics_equal(actual, expected, num_bits):
    count, relevant, sum_all, sum_k, in_k, in_n, sum_first_k = expected
    assert len(actual) == 7
    np.testing.assert_array_equal(actual[0][:, : num_bits + 1], count)
    np.testing.assert_array_equal(actual[1][:, : num_bits + 1], relevant)
    np.testing.assert_allclose(actual[2], sum_all, rtol=1e-6)
    np.testing.assert_allclose(actual[3], sum_k, rtol=1e-6)
    np.testing.assert_array_equal(actual[4], in_k)
    np.testing.assert_array_equal(actual[5][:, : in_n.shape[1]], in_n)
    np.testing.assert_allclose(actual[6], sum_first_k, rtol=1e-6)


@pytest.mark.parametrize("sort", ["scipy", "numpy"])
@pytest.mark.parametrize("threads", [1, 3])
def test_statistics_match_stable_argsort_reference(sort, threads):
    # 37 queries in host chunks of 16 (padded), 211 items (K = 8: ~23 items per distance).
    problem = _random_problem(0, 37, 211, 8, 5)
    ns = np.array([1, 7, 50, 211])
    stats = metrics_host.query_statistics(
        *_words(*problem), num_bits=8, top_k=10, ns_m=ns, query_chunk=10, threads=threads,
        sort=sort)
    assert [x.shape for x in stats] == [(37, 9), (37, 9), (37,), (37,), (37,), (37, 4), (37,)]
    assert stats[1][0].sum() == 0 and stats[2][0] == 0  # the query without relevant items
    _assert_statistics_equal(stats, reference_statistics(*problem, 10, ns), 8)


@pytest.mark.parametrize("sort", ["scipy", "numpy"])
def test_statistics_equal_the_counting_kernel(sort):
    # 4099 items: not a multiple of the kernel's tile, nor of anything on the host side.
    problem = _random_problem(1, 21, 4099, 10, 6, label_rate=0.3)
    words = _words(*problem)
    ns = np.array([1, 100, 4097, 4099], np.int32)
    host = metrics_host.query_statistics(
        *words, num_bits=10, top_k=2000, ns_m=ns, query_chunk=16, sort=sort)
    kernel = metrics._query_statistics(
        *words, np.int32(2000), np.pad(ns, (0, 4), constant_values=1), num_bits=10,
        query_chunk=16, with_top_k=True, mesh=None)
    kernel = [np.asarray(x) for x in kernel]  # bucket K + 1 counts the kernel's padding rows
    _assert_statistics_equal(host, (kernel[0][:, :11], kernel[1][:, :11], kernel[2], kernel[3],
                                    kernel[4], kernel[5][:, :4], kernel[6]), 10)
    # The first-K sum differs from the top-K sum (queries with < K relevant items in the
    # top K but more overall), so the comparison above is not vacuous.
    assert not np.allclose(host[6], host[3])
    _assert_statistics_equal(host, reference_statistics(*problem, 2000, ns), 10)


@pytest.mark.parametrize("sort", ["scipy", "numpy"])
def test_sparse_statistics_equal_reference_and_kernel(sort):
    # D = 70 (3 words), r = 6: distances r - ip in 0..6, 7 buckets.
    problem = _sparse_problem(7, 13, 300, 70, 6, 5)
    words = _sparse_words(*problem)
    ns = np.array([1, 20, 300], np.int32)
    host = metrics_host.query_statistics(
        *words, num_bits=70, top_k=40, ns_m=ns, query_chunk=8, sort=sort, sparse_ones=6)
    assert host[0].shape == (13, 7)
    expected = reference_statistics(*problem, 40, ns, sparse=True)
    _assert_statistics_equal(host, expected, 6)
    kernel = metrics._query_statistics(
        *words, np.int32(40), np.pad(ns, (0, 5), constant_values=1), num_bits=70,
        query_chunk=8, with_top_k=True, mesh=None, sparse_ones=6)
    kernel = [np.asarray(x) for x in kernel]
    assert kernel[0].shape == (13, 8)  # r + 1 buckets and the padding bucket
    _assert_statistics_equal(
        [kernel[0][:, :7], kernel[1][:, :7]] + kernel[2:5] + [kernel[5][:, :3], kernel[6]],
        expected, 6)


def test_without_top_k_and_ns_the_optional_statistics_are_empty():
    problem = _random_problem(2, 5, 30, 6, 4)
    stats = metrics_host.query_statistics(
        *_words(*problem), num_bits=6, top_k=None, ns_m=np.zeros(0, np.int32), query_chunk=8)
    assert stats[5].shape == (5, 0)
    assert not stats[3].any() and not stats[4].any()
    expected = reference_statistics(*problem, None, ())
    np.testing.assert_array_equal(stats[0], expected[0])
    np.testing.assert_allclose(stats[2], expected[2], rtol=1e-6)


def test_many_small_chunks_and_a_single_item_database(monkeypatch):
    # Chunks of 8 queries (MAX_CHUNK_PAIRS / N rounds down to 1, then up to 8): 3 chunks,
    # each dispatched while the previous one is ranked.
    monkeypatch.setattr(metrics_host, "MAX_CHUNK_PAIRS", 50)
    problem = _random_problem(3, 19, 60, 8, 3)
    stats = metrics_host.query_statistics(
        *_words(*problem), num_bits=8, top_k=5, ns_m=np.array([1, 60]), query_chunk=256)
    _assert_statistics_equal(stats, reference_statistics(*problem, 5, (1, 60)), 8)

    single = _random_problem(4, 3, 1, 8, 3, label_rate=0.9)
    stats = metrics_host.query_statistics(
        *_words(*single), num_bits=8, top_k=1, ns_m=np.array([1]), query_chunk=256)
    _assert_statistics_equal(stats, reference_statistics(*single, 1, (1,)), 8)


def test_long_codes_use_16_bit_distances():
    # K = 300: distances beyond uint8; numpy still radix-sorts the uint16 keys.
    assert metrics_host.distance_dtype(255) == np.uint8
    assert metrics_host.distance_dtype(256) == np.uint16
    assert metrics_host.distance_dtype(65535) == np.uint16
    assert metrics_host.distance_dtype(65536) == np.int32
    problem = _random_problem(5, 6, 90, 300, 70, label_rate=0.03)
    problem[1][:30] = problem[1][30:60]  # duplicated codes: exact ties at every distance
    for sort in ("scipy", "numpy"):
        stats = metrics_host.query_statistics(
            *_words(*problem), num_bits=300, top_k=20, ns_m=np.array([1, 10, 90]),
            query_chunk=256, sort=sort)
        _assert_statistics_equal(stats, reference_statistics(*problem, 20, (1, 10, 90)), 300)


def test_scipy_counting_sort_is_used_and_falls_back_to_numpy(monkeypatch):
    assert metrics_host._scipy_sort_works()  # scipy is a dependency of the package
    assert metrics_host._sorter("scipy", 10) is metrics_host._sort_with_scipy
    assert metrics_host._sorter("numpy", 10) is metrics_host._sort_with_numpy
    with pytest.raises(ValueError, match="sort must be"):
        metrics_host._sorter("quick", 10)

    def broken(*args):
        raise TypeError("coo_tocsr() takes a different signature now")

    monkeypatch.setattr(metrics_host, "_coo_to_csr", lambda: broken)
    metrics_host._scipy_sort_works.cache_clear()
    try:
        assert not metrics_host._scipy_sort_works()
        assert metrics_host._sorter("scipy", 10) is metrics_host._sort_with_numpy
        problem = _random_problem(6, 9, 40, 8, 4)
        stats = metrics_host.query_statistics(
            *_words(*problem), num_bits=8, top_k=None, ns_m=np.array([3]), query_chunk=4)
        _assert_statistics_equal(stats, reference_statistics(*problem, None, (3,)), 8)
    finally:
        monkeypatch.undo()
        metrics_host._scipy_sort_works.cache_clear()
    assert metrics_host._scipy_sort_works()
