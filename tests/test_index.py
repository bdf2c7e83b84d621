"""Tests for fjsph_jax.evaluation.index against brute-force numpy references (ties included)."""

import numpy as np
import pytest

from fjsph_jax.evaluation import index as index_lib
from fjsph_jax import parallel
from fjsph_jax.evaluation.index import HammingIndex, InnerProductIndex

NUM_QUERIES, NUM_DB, NUM_BITS, K = 13, 501, 12, 37
QUERY_CHUNK, DB_CHUNK = 8, 64  # several query chunks and database chunks (ragged tails)


def _random_codes(rng, rows, bits):
    return np.where(rng.random((rows, bits)) < 0.5, -1, 1).astype(np.int8)


def brute_force_hamming(query_codes, db_codes, k):
    """Distances by counting differing bits; order = stable argsort (ties by row)."""
    distances = (query_codes[:, None, :] != db_codes[None, :, :]).sum(-1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.fixture(scope="module")
def data():
    # 12 bits, 501 items: ~40 items per distance, so nearly every result list has ties.
    rng = np.random.default_rng(5)
    return _random_codes(rng, NUM_QUERIES, NUM_BITS), _random_codes(rng, NUM_DB, NUM_BITS)


@pytest.fixture(scope="module")
def index(data):
    return HammingIndex.from_codes(data[1], db_chunk=DB_CHUNK)


def test_search_equals_brute_force_with_ties(data, index):
    queries, db = data
    distances, ids = index.search(queries, K, query_chunk=QUERY_CHUNK)
    expected_distances, expected_ids = brute_force_hamming(queries, db, K)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    assert distances.shape == ids.shape == (NUM_QUERIES, K)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(ids, expected_ids)
    # The tie-break matters here: some query has equal distances inside its top k.
    assert (np.diff(distances, axis=1) == 0).any()


def test_packed_input_and_padding_bits_are_ignored(data, index):
    queries, db = data
    packed_db = np.packbits(db > 0, axis=1)  # 2 bytes per row, 4 padding bits
    packed_queries = np.packbits(queries > 0, axis=1)
    packed_queries[:, -1] |= 0x0F  # garbage in the padding bits must not count
    packed_index = HammingIndex.from_codes(packed_db, bits=NUM_BITS, db_chunk=DB_CHUNK)
    np.testing.assert_array_equal(packed_index.packed, index.packed)
    np.testing.assert_array_equal(packed_index.packed, packed_db)
    got = packed_index.search(packed_queries, K, query_chunk=QUERY_CHUNK)
    expected = index.search(queries, K, query_chunk=QUERY_CHUNK)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_k_equal_to_database_size_is_a_full_stable_sort(data):
    queries, db = data
    small_db = db[:40]
    distances, ids = HammingIndex.from_codes(small_db).search(queries[:3], 40)
    expected_distances, expected_ids = brute_force_hamming(queries[:3], small_db, 40)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(ids, expected_ids)


def test_ids_are_returned_instead_of_rows(data):
    queries, db = data
    rng = np.random.default_rng(0)
    ids = rng.choice(2**40, size=NUM_DB, replace=False).astype(np.int64)  # beyond int32
    distances, got_ids = HammingIndex.from_codes(db, ids=ids, db_chunk=DB_CHUNK).search(
        queries, K, query_chunk=QUERY_CHUNK)
    expected_distances, expected_rows = brute_force_hamming(queries, db, K)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(got_ids, ids[expected_rows])


def test_database_sharded_over_eight_devices_gives_the_same_result(data):
    queries, db = data
    mesh = parallel.make_mesh()
    assert parallel.num_data_shards(mesh) == 8  # conftest: 8 CPU devices; 501 rows don't split
    sharded = HammingIndex.from_codes(db, mesh=mesh, db_chunk=DB_CHUNK)
    distances, ids = sharded.search(queries, K, query_chunk=QUERY_CHUNK)
    expected_distances, expected_ids = brute_force_hamming(queries, db, K)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(ids, expected_ids)


def test_long_codes_use_several_words_and_wide_distances():
    # K = 300 bits: 10 uint32 words, distances up to 300 (> uint8) with a 301 sentinel.
    rng = np.random.default_rng(3)
    queries, db = _random_codes(rng, 4, 300), _random_codes(rng, 70, 300)
    db[5] = queries[0]  # distance 0
    db[6] = -queries[0]  # distance 300
    distances, ids = HammingIndex.from_codes(db).search(queries, 70)
    expected_distances, expected_ids = brute_force_hamming(queries, db, 70)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(ids, expected_ids)
    assert distances[0, 0] == 0 and distances[0, -1] == 300


def test_code_and_label_words_give_hamming_distance_and_shared_labels():
    rng = np.random.default_rng(1)
    a, b = _random_codes(rng, 5, 45), _random_codes(rng, 6, 45)
    words_a, bits = index_lib.code_words(a)
    words_b, _ = index_lib.code_words(b)
    assert bits == 45 and words_a.shape == (5, 2) and words_a.dtype == np.uint32
    xor = np.asarray(words_a)[:, None, :] ^ np.asarray(words_b)[None, :, :]
    popcount = np.unpackbits(xor.view(np.uint8), axis=-1).sum(-1)
    np.testing.assert_array_equal(popcount, (a[:, None] != b[None]).sum(-1))
    labels_a = (rng.random((5, 40)) < 0.05).astype(np.int32)
    labels_b = (rng.random((6, 40)) < 0.05).astype(np.int32)
    la, lb = np.asarray(index_lib.label_words(labels_a)), np.asarray(index_lib.label_words(labels_b))
    shared = ((la[:, None, :] & lb[None, :, :]) != 0).any(-1)
    np.testing.assert_array_equal(shared, labels_a @ labels_b.T > 0)


def test_save_and_load_round_trip(tmp_path, data):
    queries, db = data
    ids = np.arange(NUM_DB, dtype=np.int64) * 3 + 7
    original = HammingIndex.from_codes(db, ids=ids, db_chunk=DB_CHUNK)
    path = tmp_path / "codes.npz"
    original.save(path)
    loaded = HammingIndex.load(path, db_chunk=DB_CHUNK)
    assert loaded.bits == NUM_BITS and len(loaded) == NUM_DB
    np.testing.assert_array_equal(loaded.packed, original.packed)
    np.testing.assert_array_equal(loaded.ids, ids)
    got = loaded.search(queries, K, query_chunk=QUERY_CHUNK)
    expected = original.search(queries, K, query_chunk=QUERY_CHUNK)
    np.testing.assert_array_equal(got[1], expected[1])
    np.savez(tmp_path / "other.npz", packed=original.packed)
    with pytest.raises(ValueError, match="not a HammingIndex file"):
        HammingIndex.load(tmp_path / "other.npz")


def test_inner_product_index_on_sparse_codes_equals_brute_force():
    # Sparse {0, 1} codes with 3 of 40 dimensions active: integer scores, many ties.
    rng = np.random.default_rng(2)

    def sparse(rows):
        codes = np.zeros((rows, 40), np.float32)
        for row in codes:
            row[rng.choice(40, 3, replace=False)] = 1
        return codes

    queries, db = sparse(9), sparse(300)
    scores, ids = InnerProductIndex.from_vectors(db, db_chunk=DB_CHUNK).search(
        queries, 25, query_chunk=QUERY_CHUNK)
    all_scores = queries @ db.T
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :25]
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(scores, np.take_along_axis(all_scores, order, axis=1))
    np.testing.assert_array_equal(ids, order)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda idx, q: idx.search(q, NUM_DB + 1), "k=502 exceeds the number of database rows"),
        (lambda idx, q: idx.search(q, 0), "k must be a positive integer"),
        (lambda idx, q: idx.search(q[:, :8], 3), "query_codes have K=8 bits"),
        (lambda idx, q: idx.search(np.zeros((2, NUM_BITS), np.int8), 3),
         "query_codes must hold only the values -1 and \\+1"),
        (lambda idx, q: idx.search(q, 3, query_chunk=0), "query_chunk"),
        (lambda idx, q: HammingIndex.from_codes(np.ones((0, 8), np.int8)), "codes must be non-empty"),
        (lambda idx, q: HammingIndex.from_codes(np.ones((4, 2), np.uint8), bits=17), "bits=17"),
        (lambda idx, q: HammingIndex.from_codes(q, ids=np.arange(3)), "ids must be an integer array"),
        (lambda idx, q: InnerProductIndex.from_vectors(np.ones((3, 4))).search(np.ones((1, 5)), 1),
         "dimension 5"),
    ],
)
def test_user_errors_raise_value_error(data, index, call, message):
    with pytest.raises(ValueError, match=message):
        call(index, data[0])


# ----------------------------------------------------------------------------------------
# faiss interop (optional dependency)
# ----------------------------------------------------------------------------------------


def _same_results_up_to_tie_order(distances_a, ids_a, distances_b, ids_b):
    """Equal distances, and for every distance value the same set of ids (except at the
    last distance of each row, where the cut-off may pick different tied items)."""
    np.testing.assert_array_equal(distances_a, distances_b)
    for row in range(distances_a.shape[0]):
        for value in np.unique(distances_a[row])[:-1]:
            mask = distances_a[row] == value
            assert set(ids_a[row][mask]) == set(ids_b[row][mask])


def test_faiss_flat_export_import_round_trip(data, index):
    faiss = pytest.importorskip("faiss")
    queries, db = data
    packed_db = np.packbits(db > 0, axis=1)
    exact_bits = packed_db.shape[1] * 8  # faiss needs whole bytes: use 16-bit codes
    ours = HammingIndex.from_codes(packed_db, bits=exact_bits, db_chunk=DB_CHUNK)
    flat = ours.to_faiss("flat")
    assert isinstance(flat, faiss.IndexBinaryFlat) and flat.ntotal == NUM_DB
    packed_queries = np.packbits(queries > 0, axis=1)
    faiss_distances, faiss_ids = flat.search(packed_queries, K)
    distances, ids = ours.search(packed_queries, K, query_chunk=QUERY_CHUNK)
    _same_results_up_to_tie_order(distances, ids, faiss_distances, faiss_ids)
    back = HammingIndex.from_faiss(flat)
    assert back.bits == exact_bits and back.ids is None
    np.testing.assert_array_equal(back.packed, packed_db)
    with pytest.raises(ValueError, match="multiple of 8"):
        index.to_faiss("flat")  # 12-bit codes
    with pytest.raises(ValueError, match="kind must be one of"):
        ours.to_faiss("hnsw")


def test_faiss_ivf_with_ids_round_trip_and_full_probe_is_exact(data):
    faiss = pytest.importorskip("faiss")
    queries, db = data
    packed_db = np.packbits(db > 0, axis=1)
    ids = np.arange(NUM_DB, dtype=np.int64) + 1000
    ours = HammingIndex.from_codes(packed_db, bits=16, ids=ids, db_chunk=DB_CHUNK)
    ivf = ours.to_faiss("ivf", nlist=8, nprobe=8)  # visiting every list: exact
    assert isinstance(ivf, faiss.IndexBinaryIDMap2) and ivf.ntotal == NUM_DB
    packed_queries = np.packbits(queries > 0, axis=1)
    faiss_distances, faiss_ids = ivf.search(packed_queries, K)
    distances, got_ids = ours.search(packed_queries, K, query_chunk=QUERY_CHUNK)
    _same_results_up_to_tie_order(distances, got_ids, faiss_distances, faiss_ids)
    back = HammingIndex.from_faiss(ivf)
    np.testing.assert_array_equal(back.packed, packed_db)
    np.testing.assert_array_equal(back.ids, ids)
