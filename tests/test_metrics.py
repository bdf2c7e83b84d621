"""Tests for fjsph_jax.evaluation.metrics against plain-numpy per-query references and hand cases."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax.evaluation import metrics

NUM_QUERIES, NUM_DB, NUM_BITS, NUM_CLASSES = 37, 211, 8, 5
CHUNK = 10  # smaller than Q and does not divide 37: exercises padding of the last chunk
NS = (1, 7, 50, 211, 1000)  # 1000 is clipped to N


# ----------------------------------------------------------------------------------------
# Plain numpy references: one query at a time, stable argsort, explicit loops.
# ----------------------------------------------------------------------------------------


def _ranking(query_code, db_codes, query_label, db_labels):
    """(distances in ranked order, relevance in ranked order) for one query."""
    num_bits = query_code.shape[0]
    distances = np.array(
        [(num_bits - int(np.dot(query_code.astype(np.int64), b.astype(np.int64)))) // 2
         for b in db_codes]
    )
    relevant = np.array([np.dot(query_label, l) > 0 for l in db_labels])
    order = np.argsort(distances, kind="stable")
    return distances[order], relevant[order]


def reference_map(query_codes, db_codes, query_labels, db_labels, top_k=None,
                  convention="top_k"):
    """"top_k": P@r averaged over the relevant items in the top K (JSPSH mAP.m, DJSRH
    calculate_top_map); "dcmh": over the first min(K, R) relevant items (DCHMT calc_map_k)."""
    average_precisions = []
    for q in range(query_codes.shape[0]):
        _, relevant = _ranking(query_codes[q], db_codes, query_labels[q], db_labels)
        k = len(relevant) if top_k is None else min(top_k, len(relevant))
        hits, precision_sum = 0, 0.0
        for rank in range(1, len(relevant) + 1):
            if convention == "top_k" and rank > k:
                break
            if relevant[rank - 1]:
                hits += 1
                precision_sum += hits / rank
                if hits == k:  # dcmh: the first k relevant items, wherever they rank
                    break
        average_precisions.append(precision_sum / hits if hits else 0.0)
    return float(np.mean(average_precisions))


def reference_precision_at_n(query_codes, db_codes, query_labels, db_labels, ns):
    values = np.zeros(len(ns))
    for q in range(query_codes.shape[0]):
        _, relevant = _ranking(query_codes[q], db_codes, query_labels[q], db_labels)
        for i, n in enumerate(ns):
            n = min(n, len(relevant))
            values[i] += relevant[:n].sum() / n
    return values / query_codes.shape[0]


def reference_pr_curve(query_codes, db_codes, query_labels, db_labels):
    num_bits = query_codes.shape[1]
    precision = np.zeros(num_bits + 1)
    recall = np.zeros(num_bits + 1)
    for radius in range(num_bits + 1):
        precisions, recalls = [], []
        for q in range(query_codes.shape[0]):
            distances, relevant = _ranking(query_codes[q], db_codes, query_labels[q], db_labels)
            retrieved = distances <= radius
            if retrieved.sum() > 0:
                precisions.append((retrieved & relevant).sum() / retrieved.sum())
            if relevant.sum() > 0:
                recalls.append((retrieved & relevant).sum() / relevant.sum())
        precision[radius] = np.mean(precisions) if precisions else 0.0
        recall[radius] = np.mean(recalls) if recalls else 0.0
    return precision, recall


# ----------------------------------------------------------------------------------------
# Random data with many Hamming ties (K = 8 bits, N = 211 items: ~23 items per distance).
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tied_data():
    rng = np.random.default_rng(1234)
    query_codes = np.where(rng.random((NUM_QUERIES, NUM_BITS)) < 0.5, -1, 1).astype(np.int8)
    db_codes = np.where(rng.random((NUM_DB, NUM_BITS)) < 0.5, -1, 1).astype(np.int8)
    query_labels = (rng.random((NUM_QUERIES, NUM_CLASSES)) < 0.25).astype(np.int32)
    db_labels = (rng.random((NUM_DB, NUM_CLASSES)) < 0.25).astype(np.int32)
    query_labels[0] = 0  # a query with no relevant items at all
    return query_codes, db_codes, query_labels, db_labels


@pytest.fixture(scope="module", params=["host", "device"])
def method(request):
    """Every metric test runs with both ways of computing the ranking statistics: the host
    ranking (the default on CPU) and the counting kernel (the default on GPU/TPU)."""
    return request.param


@pytest.fixture(scope="module")
def tied_results(tied_data, method):
    """evaluate_retrieval for each top_k of interest, all with one compiled shape."""
    return {
        top_k: metrics.evaluate_retrieval(
            *tied_data, top_k=top_k, ns=NS, query_chunk=CHUNK, method=method)
        for top_k in (1, 10, NUM_DB)
    }


def test_hamming_distance_and_relevance_match_numpy(tied_data):
    query_codes, db_codes, query_labels, db_labels = tied_data
    expected_distance = (NUM_BITS - query_codes.astype(int) @ db_codes.astype(int).T) // 2
    expected_distance_bitcount = (query_codes[:, None, :] != db_codes[None, :, :]).sum(-1)
    distance = metrics.hamming_distance(query_codes, db_codes.astype(np.float32))
    assert distance.dtype == jnp.int32 and distance.shape == (NUM_QUERIES, NUM_DB)
    np.testing.assert_array_equal(np.asarray(distance), expected_distance)
    np.testing.assert_array_equal(np.asarray(distance), expected_distance_bitcount)

    rel = metrics.relevance(query_labels, db_labels.astype(bool))
    assert rel.dtype == jnp.bool_ and rel.shape == (NUM_QUERIES, NUM_DB)
    np.testing.assert_array_equal(np.asarray(rel), (query_labels @ db_labels.T) > 0)
    assert not np.asarray(rel)[0].any()


@pytest.mark.parametrize("top_k", [1, 10, NUM_DB])
def test_map_at_k_matches_reference_with_ties(tied_data, tied_results, top_k):
    expected = reference_map(*tied_data, top_k=top_k)
    assert tied_results[top_k]["map_at_k"] == pytest.approx(expected, abs=1e-6)
    assert tied_results[top_k]["map_at_k_convention"] == "top_k"  # the default
    for convention in ("top_k", "dcmh"):
        assert tied_results[top_k]["map_at_k_by_convention"][convention] == pytest.approx(
            reference_map(*tied_data, top_k=top_k, convention=convention), abs=1e-6)


def test_map_all_matches_reference_and_public_function(tied_data, tied_results, method):
    expected = reference_map(*tied_data)
    assert tied_results[1]["map_all"] == pytest.approx(expected, abs=1e-6)
    # top_k = N is MAP@all.
    assert tied_results[NUM_DB]["map_at_k"] == pytest.approx(expected, abs=1e-6)
    # jax-array inputs (and float codes) give the same result as numpy int8 inputs.
    query_codes, db_codes, query_labels, db_labels = tied_data
    result = metrics.mean_average_precision(
        jnp.asarray(query_codes, jnp.float32), jnp.asarray(db_codes), jnp.asarray(query_labels),
        db_labels, query_chunk=CHUNK, method=method,
    )
    assert isinstance(result, float)
    assert result == pytest.approx(expected, abs=1e-6)
    result_k = metrics.mean_average_precision(
        *tied_data, top_k=10, query_chunk=CHUNK, method=method)
    assert result_k == pytest.approx(reference_map(*tied_data, top_k=10), abs=1e-6)


def test_precision_at_n_matches_reference(tied_data, tied_results, method):
    expected = reference_precision_at_n(*tied_data, NS)
    values = metrics.precision_at_n(*tied_data, NS, query_chunk=CHUNK, method=method)
    assert isinstance(values, np.ndarray) and values.shape == (len(NS),)
    np.testing.assert_allclose(values, expected, atol=1e-6)
    np.testing.assert_allclose(tied_results[1]["precision_at_n"]["values"], expected, atol=1e-6)
    assert tied_results[1]["precision_at_n"]["ns"] == [1, 7, 50, 211, 211]


def test_pr_curve_matches_reference(tied_data, tied_results, method):
    expected_precision, expected_recall = reference_pr_curve(*tied_data)
    precision, recall = metrics.precision_recall_curve(
        *tied_data, query_chunk=CHUNK, method=method)
    assert precision.shape == recall.shape == (NUM_BITS + 1,)
    np.testing.assert_allclose(precision, expected_precision, atol=1e-6)
    np.testing.assert_allclose(recall, expected_recall, atol=1e-6)
    assert recall[-1] == pytest.approx(1.0)
    assert np.all(np.diff(recall) >= -1e-9)
    curve = tied_results[1]["pr_curve"]
    np.testing.assert_allclose(curve["precision"], expected_precision, atol=1e-6)
    np.testing.assert_allclose(curve["recall"], expected_recall, atol=1e-6)


def test_chunk_size_does_not_change_results(tied_data, tied_results, method):
    # One chunk holding all queries (different compiled shape) vs chunks of 10 (37 = 3*10+7).
    whole = metrics.evaluate_retrieval(
        *tied_data, top_k=10, ns=NS, query_chunk=NUM_QUERIES + 5, method=method
    )
    chunked = tied_results[10]
    assert whole["map_all"] == pytest.approx(chunked["map_all"], abs=1e-6)
    assert whole["map_at_k"] == pytest.approx(chunked["map_at_k"], abs=1e-6)
    assert whole["map_at_k_by_convention"] == pytest.approx(
        chunked["map_at_k_by_convention"], abs=1e-6)
    np.testing.assert_allclose(
        whole["precision_at_n"]["values"], chunked["precision_at_n"]["values"], atol=1e-6
    )
    np.testing.assert_allclose(
        whole["pr_curve"]["precision"], chunked["pr_curve"]["precision"], atol=1e-6
    )
    np.testing.assert_allclose(
        whole["pr_curve"]["recall"], chunked["pr_curve"]["recall"], atol=1e-6
    )


def test_evaluate_retrieval_is_json_serialisable(tied_results):
    result = tied_results[10]
    assert set(result) == {"map_all", "map_at_k", "map_at_k_convention",
                           "map_at_k_by_convention", "precision_at_n", "pr_curve"}
    round_trip = json.loads(json.dumps(result))
    assert round_trip == result
    assert all(type(v) is float for v in result["pr_curve"]["precision"])


def test_evaluate_retrieval_without_top_k_has_no_map_at_k(tied_data, method):
    result = metrics.evaluate_retrieval(*tied_data, ns=NS, query_chunk=CHUNK, method=method)
    assert "map_at_k" not in result
    assert result["map_all"] == pytest.approx(reference_map(*tied_data), abs=1e-6)


# ----------------------------------------------------------------------------------------
# Hand-computed cases.
# ----------------------------------------------------------------------------------------


def _codes_at_distances(distances, num_bits=4):
    """One all-(+1) query and db items whose first d bits are flipped, d from `distances`."""
    query = np.ones((1, num_bits), np.int8)
    db = np.ones((len(distances), num_bits), np.int8)
    for i, d in enumerate(distances):
        db[i, :d] = -1
    return query, db


def test_hand_computed_single_query_five_items(method):
    # Distances 3, 0, 2, 1, 4 -> ranking by distance: items 1, 3, 2, 0, 4.
    # Relevant items: 1, 2, 4 -> relevance in ranked order: 1, 0, 1, 0, 1.
    # AP@all = (1/3) * (1/1 + 2/3 + 3/5) = (1/3) * (34/15) = 34/45.
    # AP@2   = (1/1) * (1/1) = 1 (one relevant item in the top 2).
    # AP@3   = (1/2) * (1/1 + 2/3) = 5/6.
    # P@1 = 1, P@2 = 1/2, P@4 = 2/4, P@5 = 3/5.
    query, db = _codes_at_distances([3, 0, 2, 1, 4])
    query_labels = np.array([[1, 0]])
    db_labels = np.array([[0, 1], [1, 0], [1, 1], [0, 1], [1, 0]])
    map_all = metrics.mean_average_precision(query, db, query_labels, db_labels, method=method)
    assert map_all == pytest.approx(34 / 45)
    assert metrics.mean_average_precision(
        query, db, query_labels, db_labels, top_k=2, method=method
    ) == pytest.approx(1.0)
    assert metrics.mean_average_precision(
        query, db, query_labels, db_labels, top_k=3, method=method
    ) == pytest.approx(5 / 6)
    # DCMH/DCHMT calc_map_k: the first min(K, 3) relevant items, at ranks 1, 3, 5:
    # AP@2 = (1/2) * (1/1 + 2/3) = 5/6, AP@3 = AP@all = 34/45.
    for top_k, expected in ((2, 5 / 6), (3, 34 / 45)):
        assert metrics.mean_average_precision(
            query, db, query_labels, db_labels, top_k=top_k, convention="dcmh", method=method
        ) == pytest.approx(expected)
    np.testing.assert_allclose(
        metrics.precision_at_n(query, db, query_labels, db_labels, [1, 2, 4, 5], method=method),
        [1.0, 0.5, 0.5, 0.6],
    )
    # Radius r retrieves the items with d <= r: r=0 {1}, r=1 {1,3}, r=2 {1,3,2},
    # r=3 {1,3,2,0}, r=4 all. Relevant retrieved: 1, 1, 2, 2, 3 of 3 relevant.
    precision, recall = metrics.precision_recall_curve(
        query, db, query_labels, db_labels, method=method)
    np.testing.assert_allclose(precision, [1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 3 / 3])


def test_ties_are_broken_by_database_index(method):
    # All five items are at distance 1 (a full tie); only the index order ranks them.
    # Relevant at indices 0 and 1 -> ranked relevance 1, 1, 0, 0, 0:
    #   AP = (1/2) * (1/1 + 2/2) = 1.
    # Relevant at indices 3 and 4 -> ranked relevance 0, 0, 0, 1, 1:
    #   AP = (1/2) * (1/4 + 2/5) = 13/40.
    # (Same shapes and dtypes as the five-item case above: no new compilation.)
    query, db = _codes_at_distances([1, 1, 1, 1, 1])
    query_labels = np.array([[1, 0]])
    first_two = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]])
    last_two = first_two[::-1].copy()
    map_first_two = metrics.mean_average_precision(
        query, db, query_labels, first_two, method=method)
    map_last_two = metrics.mean_average_precision(query, db, query_labels, last_two, method=method)
    assert map_first_two == pytest.approx(1.0)
    assert map_last_two == pytest.approx(13 / 40)


def test_query_without_relevant_items_counts_as_zero(method):
    # Query 0 shares labels with items 0 and 1 (ranked first): AP = 1.
    # Query 1 (label 2) shares no label with any item: AP = 0, still averaged -> MAP = 1/2.
    query, db = _codes_at_distances([0, 1, 2])
    queries = np.concatenate([query, query])
    query_labels = np.array([[1, 0, 0], [0, 0, 1]])
    db_labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    map_all = metrics.mean_average_precision(queries, db, query_labels, db_labels, method=method)
    assert map_all == pytest.approx(0.5)
    # Recall averages only over the query with relevant items: r=0 -> 1/2, r>=1 -> 1.
    # Precision averages over both queries (each retrieves item 0 at r=0):
    #   r=0 (1 + 0)/2, r=1 (1 + 0)/2, r>=2 (2/3 + 0)/2.
    precision, recall = metrics.precision_recall_curve(
        queries, db, query_labels, db_labels, method=method)
    np.testing.assert_allclose(recall, [0.5, 1, 1, 1, 1])
    np.testing.assert_allclose(precision, [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])


def test_precision_is_zero_at_radius_where_no_query_retrieves(method):
    # Items at distances 3, 3, 4, 4, 4; only item 0 is relevant.
    # r = 0..2 retrieve nothing -> precision 0 (no query retrieves), recall 0;
    # r = 3 retrieves {0, 1} -> precision 1/2, recall 1; r = 4 retrieves all -> 1/5, 1.
    query, db = _codes_at_distances([3, 3, 4, 4, 4])
    query_labels = np.array([[1, 0]])
    db_labels = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]])
    precision, recall = metrics.precision_recall_curve(
        query, db, query_labels, db_labels, method=method)
    np.testing.assert_allclose(precision, [0, 0, 0, 1 / 2, 1 / 5])
    np.testing.assert_allclose(recall, [0, 0, 0, 1, 1])


def test_perfect_codes_give_map_one(method):
    # Codes determined by the label set: every item with the query's labels is at
    # distance 0 and every other item (no shared label) is farther away.
    rng = np.random.default_rng(7)
    label_sets = np.eye(4, dtype=np.int32)
    # Four rows of an 8x8 Hadamard matrix: pairwise Hamming distance 4.
    set_codes = np.array(
        [[1, 1, 1, 1, 1, 1, 1, 1],
         [1, -1, 1, -1, 1, -1, 1, -1],
         [1, 1, -1, -1, 1, 1, -1, -1],
         [1, -1, -1, 1, 1, -1, -1, 1]],
        np.float32,
    )
    query_sets = rng.integers(0, 4, size=9)
    db_sets = rng.integers(0, 4, size=40)
    db_sets[:4] = np.arange(4)  # every set has database items
    result = metrics.evaluate_retrieval(
        set_codes[query_sets], set_codes[db_sets], label_sets[query_sets], label_sets[db_sets],
        top_k=5, ns=(1, 3), query_chunk=4, method=method,
    )
    assert result["map_all"] == pytest.approx(1.0)
    assert result["map_at_k"] == pytest.approx(1.0)
    assert result["precision_at_n"]["values"][0] == pytest.approx(1.0)
    assert result["pr_curve"]["precision"][0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------
# Validation errors.
# ----------------------------------------------------------------------------------------


def _small_inputs():
    query, db = _codes_at_distances([0, 1, 2])
    return query, db, np.array([[1, 0]]), np.array([[1, 0], [0, 1], [1, 1]])


@pytest.mark.parametrize(
    "position, bad_value, message",
    [
        (1, np.ones((3, 5), np.int8), "same number of bits"),
        (3, np.ones((3, 4), np.int8), "same number of classes"),
        (3, np.ones((2, 2), np.int8), "db_labels has 2 rows"),
        (2, np.ones((2, 2), np.int8), "query_labels has 2 rows"),
        (0, np.ones((0, 4), np.int8), "query_codes must be non-empty"),
        (1, np.ones(4, np.int8), "db_codes must be a 2-D array"),
        (0, np.zeros((1, 4), np.int8), "query_codes must hold only the values -1 and \\+1"),
        (1, np.ones((3, 4), np.uint8), "db_codes must have a signed integer or floating"),
        (2, np.array([[2, 0]]), "query_labels must be multi-hot"),
    ],
)
def test_invalid_inputs_raise_value_error(position, bad_value, message):
    inputs = list(_small_inputs())
    inputs[position] = bad_value
    with pytest.raises(ValueError, match=message):
        metrics.mean_average_precision(*inputs)


def test_invalid_options_raise_value_error():
    inputs = _small_inputs()
    with pytest.raises(ValueError, match="top_k"):
        metrics.mean_average_precision(*inputs, top_k=0)
    with pytest.raises(ValueError, match="query_chunk"):
        metrics.mean_average_precision(*inputs, query_chunk=0)
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.mean_average_precision(*inputs, method="gpu")
    with pytest.raises(ValueError, match="convention must be one of \\('top_k', 'dcmh'\\)"):
        metrics.mean_average_precision(*inputs, top_k=2, convention="calc_map_k")
    with pytest.raises(ValueError, match="code_format must be one of \\('pm1', 'sparse'\\)"):
        metrics.evaluate_retrieval(*inputs, code_format="01")
    with pytest.raises(ValueError, match="ns"):
        metrics.precision_at_n(*inputs, [])
    with pytest.raises(ValueError, match="ns"):
        metrics.precision_at_n(*inputs, [3, -1])
    with pytest.raises(ValueError, match="query_codes_qk and db_codes_nk"):
        metrics.hamming_distance(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="query_labels_qc and db_labels_nc"):
        metrics.relevance(np.ones((2, 3)), np.ones((2, 4)))


# ----------------------------------------------------------------------------------------
# Scale paths: several database tiles, long codes, many label words, a device mesh.
# ----------------------------------------------------------------------------------------


def per_query_loop_reference(query_codes, db_codes, query_labels, db_labels, top_k, ns):
    """The PyTorch-baseline way, in numpy: per query a stable argsort of the distances.

    Returns (MAP@all, MAP@top_k, P@ns [len(ns)], PR precision [K+1], PR recall [K+1],
    MAP@top_k under the DCMH/DCHMT calc_map_k convention)."""
    num_bits = query_codes.shape[1]
    distances = (num_bits - query_codes.astype(np.int64) @ db_codes.astype(np.int64).T) // 2
    relevant = (query_labels.astype(np.int64) @ db_labels.astype(np.int64).T) > 0
    ap_all, ap_k, ap_k_dcmh, p_at_n = [], [], [], []
    pr_precision = [[] for _ in range(num_bits + 1)]
    pr_recall = [[] for _ in range(num_bits + 1)]
    for q in range(len(query_codes)):
        order = np.argsort(distances[q], kind="stable")
        ranked = relevant[q][order]
        hits = np.cumsum(ranked)
        ranks = np.arange(1, len(ranked) + 1)
        precision_at_rank = hits / ranks
        ap_all.append((precision_at_rank * ranked).sum() / hits[-1] if hits[-1] else 0.0)
        ap_k.append((precision_at_rank * ranked)[:top_k].sum() / hits[top_k - 1]
                    if hits[top_k - 1] else 0.0)
        first = min(top_k, hits[-1])  # DCHMT calc_map_k: the first min(K, R) relevant items
        ap_k_dcmh.append(precision_at_rank[ranked][:first].mean() if first else 0.0)
        p_at_n.append([hits[min(n, len(ranked)) - 1] / min(n, len(ranked)) for n in ns])
        for radius in range(num_bits + 1):
            retrieved = distances[q] <= radius
            if retrieved.any():
                pr_precision[radius].append((retrieved & relevant[q]).sum() / retrieved.sum())
            if relevant[q].any():
                pr_recall[radius].append((retrieved & relevant[q]).sum() / relevant[q].sum())
    mean_or_zero = lambda values: float(np.mean(values)) if values else 0.0  # noqa: E731
    return (float(np.mean(ap_all)), float(np.mean(ap_k)), np.mean(p_at_n, axis=0),
            np.array([mean_or_zero(v) for v in pr_precision]),
            np.array([mean_or_zero(v) for v in pr_recall]), float(np.mean(ap_k_dcmh)))


def _assert_matches_reference(result, reference, top_k):
    map_all, map_k, p_at_n, pr_precision, pr_recall, map_k_dcmh = reference
    assert result["map_all"] == pytest.approx(map_all, abs=1e-6)
    assert result["map_at_k"] == pytest.approx(map_k, abs=1e-6)
    assert result["map_at_k_by_convention"]["top_k"] == pytest.approx(map_k, abs=1e-6)
    assert result["map_at_k_by_convention"]["dcmh"] == pytest.approx(map_k_dcmh, abs=1e-6)
    np.testing.assert_allclose(result["precision_at_n"]["values"], p_at_n, atol=1e-9)
    np.testing.assert_allclose(result["pr_curve"]["precision"], pr_precision, atol=1e-9)
    np.testing.assert_allclose(result["pr_curve"]["recall"], pr_recall, atol=1e-9)


def test_database_spanning_several_tiles_matches_per_query_loop(method):
    # 9000 items > 2 tiles of metrics.TILE_ROWS rows; 10 bits: ~800 items per distance, so
    # ranks depend on the row-order carry across tiles.
    assert 9000 > 2 * metrics.TILE_ROWS
    rng = np.random.default_rng(11)
    query_codes = np.where(rng.random((21, 10)) < 0.5, -1, 1).astype(np.int8)
    db_codes = np.where(rng.random((9000, 10)) < 0.5, -1, 1).astype(np.int8)
    query_labels = (rng.random((21, 6)) < 0.3).astype(np.int8)
    db_labels = (rng.random((9000, 6)) < 0.3).astype(np.int8)
    ns = (1, 100, 4097, 9000)
    result = metrics.evaluate_retrieval(
        query_codes, db_codes, query_labels, db_labels, top_k=5000, ns=ns, query_chunk=16,
        method=method)
    reference = per_query_loop_reference(
        query_codes, db_codes, query_labels, db_labels, 5000, ns)
    _assert_matches_reference(result, reference, 5000)


def test_long_codes_and_many_label_words_match_per_query_loop(method):
    # K = 300 bits (10 words; distance buckets beyond uint8), C = 70 classes (3 words).
    rng = np.random.default_rng(12)
    query_codes = np.where(rng.random((6, 300)) < 0.5, -1, 1).astype(np.float32)
    db_codes = np.where(rng.random((90, 300)) < 0.5, -1, 1).astype(np.int32)
    db_codes[:30] = db_codes[30:60]  # duplicated codes: exact ties at every distance
    query_labels = (rng.random((6, 70)) < 0.03).astype(np.float32)
    db_labels = (rng.random((90, 70)) < 0.03).astype(np.int64)
    ns = (1, 10, 90)
    result = metrics.evaluate_retrieval(
        query_codes, db_codes, query_labels, db_labels, top_k=20, ns=ns, method=method)
    reference = per_query_loop_reference(query_codes, db_codes, query_labels, db_labels, 20, ns)
    _assert_matches_reference(result, reference, 20)


def test_queries_split_over_a_mesh_give_the_same_metrics(tied_data, tied_results, method):
    from fjsph_jax import parallel

    mesh = parallel.make_mesh()  # 8 CPU devices (conftest); 37 queries do not split evenly
    result = metrics.evaluate_retrieval(
        *tied_data, top_k=10, ns=NS, query_chunk=CHUNK, mesh=mesh, method=method)
    expected = tied_results[10]
    assert result["map_all"] == pytest.approx(expected["map_all"], abs=1e-7)
    assert result["map_at_k"] == pytest.approx(expected["map_at_k"], abs=1e-7)
    assert result["map_at_k_by_convention"] == pytest.approx(
        expected["map_at_k_by_convention"], abs=1e-7)
    assert result["precision_at_n"] == expected["precision_at_n"]
    assert result["pr_curve"] == expected["pr_curve"]


def test_auto_method_ranks_on_the_host_for_cpu_devices_only():
    from fjsph_jax import parallel

    assert metrics._use_host_ranking("auto", None)  # the tests run on CPU
    assert metrics._use_host_ranking("auto", parallel.make_mesh())
    assert metrics._use_host_ranking("host", None)
    assert not metrics._use_host_ranking("device", None)

    class FakeDevice:
        platform = "gpu"

    class FakeMesh:
        devices = np.array([FakeDevice()])

    assert not metrics._use_host_ranking("auto", FakeMesh())
    assert metrics._use_host_ranking("host", FakeMesh())
