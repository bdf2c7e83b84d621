"""The two MAP@K conventions and sparse {0, 1} codes in fjsph_jax.evaluation.metrics.

References are literal numpy ports of the baselines' per-query loops with a stable argsort:

* ``"top_k"``: DJSRH/JDSH ``calculate_top_map`` (same formula as JSPSH ``mAP.m``);
* ``"dcmh"``: DCMH/DCHMT ``calc_map_k``;

and, for sparse codes, a ranking by inner product descending
(``np.argsort(-ip, kind="stable")``).
"""

import json

import numpy as np
import pytest

from fjsph_jax.evaluation import metrics


# ----------------------------------------------------------------------------------------
# Plain numpy references
# ----------------------------------------------------------------------------------------


def _order(query_code, db_codes, code_format):
    """Database rows in rank order for one query (stable: ties by database index)."""
    if code_format == "pm1":
        num_bits = query_code.shape[0]
        hamming = 0.5 * (num_bits - db_codes.astype(np.float64) @ query_code.astype(np.float64))
        return np.argsort(hamming, kind="stable")
    inner = db_codes.astype(np.float64) @ query_code.astype(np.float64)
    return np.argsort(-inner, kind="stable")


def _ground_truth(query_label, db_labels):
    return (db_labels.astype(np.float64) @ query_label.astype(np.float64) > 0).astype(np.float64)


def calculate_top_map(query_codes, db_codes, query_labels, db_labels, topk,
                      code_format="pm1"):
    """DJSRH/JDSH ``calculate_top_map`` (JSPSH ``mAP.m``), ported line by line."""
    num_query = query_labels.shape[0]
    topkmap = 0.0
    for it in range(num_query):
        gnd = _ground_truth(query_labels[it], db_labels)
        gnd = gnd[_order(query_codes[it], db_codes, code_format)]
        tgnd = gnd[0:topk]
        tsum = int(np.sum(tgnd))
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap += np.mean(count / tindex)
    return topkmap / num_query


def calc_map_k(query_codes, db_codes, query_labels, db_labels, k=None, code_format="pm1"):
    """DCMH/DCHMT ``calc_map_k``, ported line by line."""
    num_query = query_labels.shape[0]
    if k is None:
        k = db_labels.shape[0]
    total_map = 0.0
    for it in range(num_query):
        gnd = _ground_truth(query_labels[it], db_labels)
        tsum = gnd.sum()
        if tsum == 0:
            continue
        gnd = gnd[_order(query_codes[it], db_codes, code_format)]
        total = min(k, int(tsum))
        count = np.arange(1, total + 1)
        tindex = np.nonzero(gnd)[0][:total] + 1.0
        total_map += np.mean(count / tindex)
    return total_map / num_query


REFERENCES = {"top_k": calculate_top_map, "dcmh": calc_map_k}


def reference_precision_at_n(query_codes, db_codes, query_labels, db_labels, ns, code_format):
    values = np.zeros(len(ns))
    for q in range(len(query_codes)):
        ranked = _ground_truth(query_labels[q], db_labels)[
            _order(query_codes[q], db_codes, code_format)]
        for i, n in enumerate(ns):
            n = min(n, len(ranked))
            values[i] += ranked[:n].sum() / n
    return values / len(query_codes)


def reference_sparse_pr_curve(query_codes, db_codes, query_labels, db_labels):
    """Thresholds t = 0..r: retrieve the items with inner product >= r - t."""
    r = int(query_codes[0].sum())
    inner = query_codes.astype(np.int64) @ db_codes.astype(np.int64).T
    relevant = (query_labels.astype(np.int64) @ db_labels.astype(np.int64).T) > 0
    precision, recall = np.zeros(r + 1), np.zeros(r + 1)
    for t in range(r + 1):
        retrieved = inner >= r - t
        hits = (retrieved & relevant).sum(axis=1)
        some = retrieved.sum(axis=1) > 0
        precision[t] = (hits[some] / retrieved.sum(axis=1)[some]).mean() if some.any() else 0
        has = relevant.sum(axis=1) > 0
        recall[t] = (hits[has] / relevant.sum(axis=1)[has]).mean() if has.any() else 0
    return precision, recall


# ----------------------------------------------------------------------------------------
# Random data: Hamming ties, queries with 0, few and many relevant items
# ----------------------------------------------------------------------------------------


def _skewed_labels(rng, num_rows, num_classes, max_labels):
    """0..max_labels labels per row, classes drawn with geometric frequencies, so the
    number R of relevant items of a query ranges from 0 to most of the database."""
    frequencies = 0.5 ** np.arange(num_classes)
    frequencies /= frequencies.sum()
    labels = np.zeros((num_rows, num_classes), np.int8)
    for row in range(num_rows):
        count = rng.integers(0, max_labels + 1)
        labels[row, rng.choice(num_classes, size=count, replace=False, p=frequencies)] = 1
    return labels


NUM_QUERIES, NUM_DB = 29, 150
TOP_KS = (1, 5, 20, NUM_DB - 1, NUM_DB, 1000)  # 1000 > N: clipped to N
NS = (1, 10, 150)


@pytest.fixture(scope="module")
def pm1_data():
    rng = np.random.default_rng(2024)
    query_codes = np.where(rng.random((NUM_QUERIES, 8)) < 0.5, -1, 1).astype(np.int8)
    db_codes = np.where(rng.random((NUM_DB, 8)) < 0.5, -1, 1).astype(np.int8)
    query_labels = _skewed_labels(rng, NUM_QUERIES, 9, 2)
    db_labels = _skewed_labels(rng, NUM_DB, 9, 2)
    query_labels[0] = 0  # no relevant item
    query_labels[1] = 0
    query_labels[1, 8] = 1  # the rarest class: a few relevant items at most
    db_labels[[3, 140], 8] = 1  # ... exactly 2 or more
    return query_codes, db_codes, query_labels, db_labels


@pytest.fixture(scope="module", params=["host", "device"])
def method(request):
    return request.param


@pytest.fixture(scope="module")
def pm1_results(pm1_data, method):
    return {top_k: metrics.evaluate_retrieval(
                *pm1_data, top_k=top_k, ns=NS, query_chunk=16, method=method)
            for top_k in TOP_KS}


def test_data_covers_the_interesting_cases(pm1_data):
    query_codes, db_codes, query_labels, db_labels = pm1_data
    num_relevant = ((query_labels.astype(int) @ db_labels.T.astype(int)) > 0).sum(axis=1)
    assert (num_relevant == 0).any()
    assert ((num_relevant > 0) & (num_relevant < 5)).any()  # K > R for K = 5, 20, ...
    assert (num_relevant > 20).any()  # K < R
    distances = (8 - query_codes.astype(int) @ db_codes.T.astype(int)) // 2
    assert all(len(np.unique(row)) < NUM_DB // 5 for row in distances)  # heavy ties
    # The two conventions really differ on this data.
    assert calc_map_k(*pm1_data, 20) != pytest.approx(calculate_top_map(*pm1_data, 20), abs=1e-3)


@pytest.mark.parametrize("top_k", TOP_KS)
@pytest.mark.parametrize("convention", ["top_k", "dcmh"])
def test_both_conventions_match_the_baseline_loops(pm1_data, pm1_results, top_k, convention):
    expected = REFERENCES[convention](*pm1_data, top_k)
    result = pm1_results[top_k]
    assert result["map_at_k_by_convention"][convention] == pytest.approx(expected, abs=1e-6)
    if convention == "top_k":  # the default
        assert result["map_at_k"] == pytest.approx(expected, abs=1e-6)
        assert result["map_at_k_convention"] == "top_k"


@pytest.mark.parametrize("convention", ["top_k", "dcmh"])
def test_convention_keyword_of_both_public_functions(pm1_data, pm1_results, method,
                                                     convention):
    expected = {top_k: REFERENCES[convention](*pm1_data, top_k) for top_k in (5, 1000)}
    for top_k in (5, 1000):
        value = metrics.mean_average_precision(
            *pm1_data, top_k=top_k, convention=convention, query_chunk=16, method=method)
        assert isinstance(value, float)
        assert value == pytest.approx(expected[top_k], abs=1e-6)
    result = metrics.evaluate_retrieval(
        *pm1_data, top_k=5, convention=convention, ns=NS, query_chunk=16, method=method)
    assert result["map_at_k"] == pytest.approx(expected[5], abs=1e-6)
    assert result["map_at_k_convention"] == convention
    assert result["map_at_k_by_convention"] == pm1_results[5]["map_at_k_by_convention"]


def test_map_all_is_the_same_under_both_conventions(pm1_data, pm1_results, method):
    map_all = calc_map_k(*pm1_data)  # k = N
    assert calculate_top_map(*pm1_data, NUM_DB) == pytest.approx(map_all, abs=1e-12)
    for convention in ("top_k", "dcmh"):
        assert metrics.mean_average_precision(
            *pm1_data, convention=convention, query_chunk=16, method=method
        ) == pytest.approx(map_all, abs=1e-6)
    for top_k in (NUM_DB, 1000):  # K >= N is MAP@all under both
        result = pm1_results[top_k]
        assert result["map_all"] == pytest.approx(map_all, abs=1e-6)
        for value in result["map_at_k_by_convention"].values():
            assert value == pytest.approx(map_all, abs=1e-6)


def test_evaluate_retrieval_keys(pm1_results, pm1_data, method):
    result = pm1_results[20]
    assert set(result) == {"map_all", "map_at_k", "map_at_k_convention",
                           "map_at_k_by_convention", "precision_at_n", "pr_curve"}
    assert set(result["map_at_k_by_convention"]) == {"top_k", "dcmh"}
    assert json.loads(json.dumps(result)) == result
    without_k = metrics.evaluate_retrieval(*pm1_data, ns=NS, query_chunk=16, method=method)
    assert set(without_k) == {"map_all", "precision_at_n", "pr_curve"}


# ----------------------------------------------------------------------------------------
# A hand-computed case where the conventions differ
# ----------------------------------------------------------------------------------------


def _hand_case():
    """Three queries (all-(+1) 4-bit codes) against 5 items at distances 3, 0, 2, 1, 4:
    the ranking is items 1, 3, 2, 0, 4 for every query.

    * query A (label 0): relevant items 1, 2, 4 -> ranked relevance 1 0 1 0 1 (ranks 1, 3, 5);
    * query B (label 2): relevant items 0, 4 -> ranked relevance 0 0 0 1 1 (ranks 4, 5);
    * query C (no label): no relevant item, AP 0 under both conventions.
    """
    query = np.ones((3, 4), np.int8)
    db = np.ones((5, 4), np.int8)
    for row, distance in enumerate([3, 0, 2, 1, 4]):
        db[row, :distance] = -1
    query_labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    db_labels = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])
    return query, db, query_labels, db_labels


# top_k:  AP_A / AP_B (top_k)          AP_A / AP_B (dcmh)
# K = 1:  1 / 0 (none in top 1)        1 / (1/4)                   min(K, R_B) = 1
# K = 2:  1 / 0                        (1 + 2/3)/2 = 5/6 / (1/4 + 2/5)/2 = 13/40
# K = 3:  (1 + 2/3)/2 = 5/6 / 0        (1 + 2/3 + 3/5)/3 = 34/45 / 13/40
# K = 4:  5/6 / (1/4)/1 = 1/4          34/45 / 13/40
# K = 5:  34/45 / 13/40                34/45 / 13/40              (= MAP@all)
# MAP = (AP_A + AP_B + 0) / 3.
HAND_EXPECTED = {
    1: {"top_k": 1 / 3, "dcmh": (1 + 1 / 4) / 3},
    2: {"top_k": 1 / 3, "dcmh": (5 / 6 + 13 / 40) / 3},
    3: {"top_k": (5 / 6) / 3, "dcmh": (34 / 45 + 13 / 40) / 3},
    4: {"top_k": (5 / 6 + 1 / 4) / 3, "dcmh": (34 / 45 + 13 / 40) / 3},
    5: {"top_k": (34 / 45 + 13 / 40) / 3, "dcmh": (34 / 45 + 13 / 40) / 3},
}


@pytest.mark.parametrize("top_k", sorted(HAND_EXPECTED))
def test_hand_computed_conventions(method, top_k):
    case = _hand_case()
    expected = HAND_EXPECTED[top_k]
    # The baseline ports agree with the hand computation...
    assert calculate_top_map(*case, top_k) == pytest.approx(expected["top_k"], abs=1e-12)
    assert calc_map_k(*case, top_k) == pytest.approx(expected["dcmh"], abs=1e-12)
    # ... and so do both methods.
    result = metrics.evaluate_retrieval(*case, top_k=top_k, ns=(1,), method=method)
    assert result["map_at_k_by_convention"]["top_k"] == pytest.approx(expected["top_k"])
    assert result["map_at_k_by_convention"]["dcmh"] == pytest.approx(expected["dcmh"])
    assert result["map_all"] == pytest.approx((34 / 45 + 13 / 40) / 3)


def test_hand_computed_exact_values_at_k2():
    # Spelled out once: at K = 2 the conventions give 1/3 and 139/360.
    assert HAND_EXPECTED[2]["top_k"] == pytest.approx(1 / 3)
    assert HAND_EXPECTED[2]["dcmh"] == pytest.approx(139 / 360)
    case = _hand_case()
    assert metrics.mean_average_precision(*case, top_k=2) == pytest.approx(1 / 3)
    assert metrics.mean_average_precision(
        *case, top_k=2, convention="dcmh") == pytest.approx(139 / 360)


# ----------------------------------------------------------------------------------------
# Sparse {0, 1} codes ranked by inner product
# ----------------------------------------------------------------------------------------


def _sparse_codes(rng, num_rows, dim, ones):
    codes = np.zeros((num_rows, dim), np.int8)
    for row in range(num_rows):
        codes[row, rng.choice(dim, size=ones, replace=False)] = 1
    return codes


@pytest.fixture(scope="module")
def sparse_data():
    # D = 40 (2 packed words), r = 5: inner products 0..5, heavy ties.
    rng = np.random.default_rng(77)
    query_codes = _sparse_codes(rng, 23, 40, 5)
    db_codes = _sparse_codes(rng, 180, 40, 5)
    db_codes[:20] = query_codes[:20]  # some exact matches (inner product r)
    query_labels = _skewed_labels(rng, 23, 7, 2)
    db_labels = _skewed_labels(rng, 180, 7, 2)
    query_labels[0] = 0
    return query_codes, db_codes, query_labels, db_labels


SPARSE_TOP_KS = (3, 30, 1000)
SPARSE_NS = (1, 5, 50, 180)


def _check_sparse_against_reference(data, result_for, top_ks, ns):
    for top_k in top_ks:
        result = result_for(top_k)
        for convention, reference in REFERENCES.items():
            assert result["map_at_k_by_convention"][convention] == pytest.approx(
                reference(*data, top_k, code_format="sparse"), abs=1e-6), (top_k, convention)
        assert result["map_all"] == pytest.approx(
            calc_map_k(*data, code_format="sparse"), abs=1e-6)
        np.testing.assert_allclose(
            result["precision_at_n"]["values"],
            reference_precision_at_n(*data, ns, "sparse"), atol=1e-9)
        precision, recall = reference_sparse_pr_curve(*data)
        np.testing.assert_allclose(result["pr_curve"]["precision"], precision, atol=1e-9)
        np.testing.assert_allclose(result["pr_curve"]["recall"], recall, atol=1e-9)


def test_sparse_codes_match_inner_product_reference(sparse_data, method):
    data = sparse_data
    r = int(data[0][0].sum())
    result_for = lambda top_k: metrics.evaluate_retrieval(  # noqa: E731
        *data, top_k=top_k, ns=SPARSE_NS, query_chunk=8, method=method, code_format="sparse")
    _check_sparse_against_reference(data, result_for, SPARSE_TOP_KS, SPARSE_NS)
    result = result_for(30)
    assert len(result["pr_curve"]["precision"]) == r + 1
    assert result["pr_curve"]["recall"][-1] == pytest.approx(1.0)


def test_sparse_public_functions_and_dtypes(sparse_data, method):
    query_codes, db_codes, query_labels, db_labels = sparse_data
    # bool queries, float32 database: the same codes.
    inputs = (query_codes.astype(bool), db_codes.astype(np.float32), query_labels, db_labels)
    kwargs = dict(query_chunk=8, method=method, code_format="sparse")
    for convention, reference in REFERENCES.items():
        assert metrics.mean_average_precision(
            *inputs, top_k=30, convention=convention, **kwargs
        ) == pytest.approx(reference(*sparse_data, 30, code_format="sparse"), abs=1e-6)
    np.testing.assert_allclose(
        metrics.precision_at_n(*inputs, SPARSE_NS, **kwargs),
        reference_precision_at_n(*sparse_data, SPARSE_NS, "sparse"), atol=1e-9)
    precision, recall = metrics.precision_recall_curve(*inputs, **kwargs)
    expected_precision, expected_recall = reference_sparse_pr_curve(*sparse_data)
    np.testing.assert_allclose(precision, expected_precision, atol=1e-9)
    np.testing.assert_allclose(recall, expected_recall, atol=1e-9)


def test_sparse_equals_pm1_on_the_same_bits(sparse_data):
    # Read as +-1 codes over D bits, Hamming = 2 (r - ip): the same ranking, and the
    # pm1 PR curve at even radii 2t is the sparse curve at threshold t.
    query_codes, db_codes, query_labels, db_labels = sparse_data
    sparse = metrics.evaluate_retrieval(*sparse_data, top_k=30, ns=SPARSE_NS,
                                        code_format="sparse", method="host")
    pm1 = metrics.evaluate_retrieval(
        2 * query_codes - 1, 2 * db_codes - 1, query_labels, db_labels, top_k=30,
        ns=SPARSE_NS, method="host")
    assert sparse["map_all"] == pytest.approx(pm1["map_all"], abs=1e-12)
    assert sparse["map_at_k_by_convention"] == pytest.approx(pm1["map_at_k_by_convention"])
    assert sparse["precision_at_n"] == pm1["precision_at_n"]
    r = int(query_codes[0].sum())
    np.testing.assert_allclose(sparse["pr_curve"]["precision"],
                               pm1["pr_curve"]["precision"][: 2 * r + 1 : 2])


def test_sparse_long_codes_several_tiles_and_wide_distances(method):
    # D = 320 (10 words), r = 24, N = 4500 > TILE_ROWS (two kernel tiles); and D = 640 with
    # r = 300: distances 0..300 exceed uint8 (int32 comparisons in the kernel, uint16 keys
    # on the host).
    rng = np.random.default_rng(5)
    assert 4500 > metrics.TILE_ROWS
    for num_queries, num_db, dim, ones, top_ks, ns in (
            (9, 4500, 320, 24, (100, 4500), (1, 100, 4097)),
            (5, 60, 640, 300, (7,), (1, 60))):
        query_codes = _sparse_codes(rng, num_queries, dim, ones)
        db_codes = _sparse_codes(rng, num_db, dim, ones)
        db_codes[: num_queries] = query_codes
        query_labels = _skewed_labels(rng, num_queries, 6, 2)
        db_labels = _skewed_labels(rng, num_db, 6, 2)
        data = (query_codes, db_codes, query_labels, db_labels)
        result_for = lambda top_k: metrics.evaluate_retrieval(  # noqa: E731
            *data, top_k=top_k, ns=ns, query_chunk=16, method=method, code_format="sparse")
        _check_sparse_against_reference(data, result_for, top_ks, ns)


def test_sparse_codes_split_over_a_mesh(sparse_data):
    from fjsph_jax import parallel

    kwargs = dict(top_k=30, ns=SPARSE_NS, query_chunk=8, code_format="sparse")
    on_mesh = metrics.evaluate_retrieval(
        *sparse_data, mesh=parallel.make_mesh(), method="device", **kwargs)
    single = metrics.evaluate_retrieval(*sparse_data, method="device", **kwargs)
    assert on_mesh["map_at_k_by_convention"] == pytest.approx(
        single["map_at_k_by_convention"], abs=1e-7)
    assert on_mesh["pr_curve"] == single["pr_curve"]


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------


def _sparse_inputs():
    query = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], np.int8)
    db = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]], np.int8)
    return query, db, np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 1], [1, 1]])


@pytest.mark.parametrize(
    "position, row, value, message",
    [
        (1, 2, [1, 1, 1, 0], "db_codes row 2 has 3 ones, but row 0 of query_codes has r = 2"),
        (0, 1, [0, 0, 1, 0], "query_codes row 1 has 1 ones, but row 0 of query_codes"),
        (1, 0, [0, 0, 0, 0], "db_codes row 0 has 0 ones"),
        (0, 0, [0, 0, 0, 0], "row 0 of query_codes has none"),
        (1, 1, [0, 2, 1, 0], "db_codes must hold only the values 0 and 1.*row 1 holds 2"),
        (0, 1, [-1, 1, 1, 0], "query_codes must hold only the values 0 and 1.*row 1 holds -1"),
        (1, 2, [0.5, 1, 0, 0], "db_codes must hold only the values 0 and 1.*row 2 holds 0.5"),
    ],
)
def test_sparse_validation_names_array_and_row(position, row, value, message):
    inputs = [np.asarray(x, np.float32) for x in _sparse_inputs()]
    inputs[position][row] = value
    for function in (metrics.mean_average_precision, metrics.evaluate_retrieval):
        with pytest.raises(ValueError, match=message):
            function(*inputs, code_format="sparse")


def test_sparse_validation_of_dtype_and_shapes():
    query, db, query_labels, db_labels = _sparse_inputs()
    with pytest.raises(ValueError, match="db_codes must have a bool, integer or floating"):
        metrics.mean_average_precision(query, db.astype(str), query_labels, db_labels,
                                       code_format="sparse")
    with pytest.raises(ValueError, match="query_codes must have a bool, integer or floating"):
        metrics.precision_at_n(query.astype(np.complex64), db, query_labels, db_labels, [1],
                               code_format="sparse")
    with pytest.raises(ValueError, match="same dimension D"):
        metrics.precision_recall_curve(query, db[:, :3], query_labels, db_labels,
                                       code_format="sparse")
    # pm1 codes are not sparse codes, and sparse codes are not pm1 codes.
    with pytest.raises(ValueError, match="only the values 0 and 1"):
        metrics.mean_average_precision(2 * query - 1, 2 * db - 1, query_labels, db_labels,
                                       code_format="sparse")
    with pytest.raises(ValueError, match="only the values -1 and \\+1"):
        metrics.mean_average_precision(query, db, query_labels, db_labels)


def test_invalid_convention_and_code_format():
    case = _hand_case()
    for function in (metrics.mean_average_precision, metrics.evaluate_retrieval):
        with pytest.raises(ValueError, match="convention must be one of \\('top_k', 'dcmh'\\)"):
            function(*case, top_k=2, convention="DCMH")
        with pytest.raises(ValueError, match="convention must be one of"):
            function(*case, convention=None)
        with pytest.raises(ValueError, match="code_format must be one of \\('pm1', 'sparse'\\)"):
            function(*case, code_format="binary")
    with pytest.raises(ValueError, match="code_format must be one of"):
        metrics.precision_at_n(*case, [1], code_format="01")
    with pytest.raises(ValueError, match="code_format must be one of"):
        metrics.precision_recall_curve(*case, code_format=None)
