"""Tests for fjsph_jax.similarity: label normalisation, k-means, low-rank joint similarity."""
import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fjsph_jax import similarity

N, C, KS = 40, 6, (3, 5)


def random_labels(seed, num_items=N, num_classes=C):
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_items, num_classes)) < 0.35).astype(np.int32)
    labels[0] = 0  # an unlabelled item: its row of N_hat is zero
    return labels


def numpy_similarity(labels, cluster_ids, weights, eta):
    """Dense S from the definition: cosine of label rows and one-hot co-membership."""
    labels = labels.astype(np.float64)
    norms = np.linalg.norm(labels, axis=1, keepdims=True)
    factors = np.divide(labels, norms, out=np.zeros_like(labels), where=norms > 0)
    clustered = sum(w * (ids[:, None] == ids[None, :]) for w, ids in zip(weights, cluster_ids))
    return (1 - eta) * factors @ factors.T + eta * clustered


@pytest.fixture(scope="module")
def labels_and_sims():
    labels = random_labels(0)
    sims = {eta: similarity.build_joint_similarity(
        labels, cluster_ks=KS, cluster_weights=(0.25, 0.75), eta=eta,
        key=jax.random.key(1)) for eta in (0.0, 0.3, 1.0)}
    return labels, sims


def test_normalize_labels_unit_rows_and_zero_row():
    labels = np.array([[1, 1, 0], [0, 0, 0], [0, 3, 4]])
    got = np.asarray(similarity.normalize_labels(labels))
    expected = np.array([[2**-0.5, 2**-0.5, 0], [0, 0, 0], [0, 0.6, 0.8]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))


def test_kmeans_recovers_separated_clusters_up_to_permutation():
    # Same shapes as the fixture's k-means (N=40, D=C=6, k=3): no extra compilation.
    rng = np.random.default_rng(0)
    centres = 10.0 * np.eye(C)[:3]
    truth = np.repeat(np.arange(3), [10, 14, 16])
    points = centres[truth] + 0.3 * rng.standard_normal((N, C))
    assignments, centroids = similarity.kmeans(points, 3, jax.random.key(0))
    assignments = np.asarray(assignments)
    # A bijection between found and true clusters: each true cluster maps to one label.
    mapping = {t: set(assignments[truth == t]) for t in range(3)}
    assert all(len(found) == 1 for found in mapping.values())
    assert len(set.union(*mapping.values())) == 3
    for t in range(3):
        found = next(iter(mapping[t]))
        np.testing.assert_allclose(np.asarray(centroids)[found], points[truth == t].mean(0),
                                   atol=1e-4)


def test_kmeans_deterministic_for_a_key():
    points = np.random.default_rng(1).standard_normal((N, C))
    first = similarity.kmeans(points, 5, jax.random.key(7))
    second = similarity.kmeans(points, 5, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))
    np.testing.assert_array_equal(np.asarray(first[1]), np.asarray(second[1]))
    assert len(set(np.asarray(first[0]).tolist())) == 5


def test_kmeans_with_k_equal_n_gives_singletons():
    points = np.random.default_rng(2).standard_normal((12, 2))
    assignments, centroids = similarity.kmeans(points, 12, jax.random.key(0), num_iters=3)
    assert sorted(np.asarray(assignments).tolist()) == list(range(12))
    np.testing.assert_allclose(np.asarray(centroids)[np.asarray(assignments)], points,
                               atol=1e-6)


@pytest.mark.parametrize("k", [0, 13])
def test_kmeans_rejects_k_outside_range(k):
    with pytest.raises(ValueError, match=r"k must be an int in \[1, N\] with N=12"):
        similarity.kmeans(np.zeros((12, 2)), k, jax.random.key(0))


def test_empty_cluster_reseeded_to_farthest_point():
    points = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    assignments = jnp.zeros(4, jnp.int32)  # cluster 1 empty; cluster 0 mean 3.25
    update = jax.jit(similarity._update_centroids, static_argnums=2)
    centroids = update(points, assignments, 2)
    np.testing.assert_allclose(np.asarray(centroids), [[3.25], [10.0]])


def test_build_joint_similarity_fields(labels_and_sims):
    labels, sims = labels_and_sims
    sim = sims[0.3]
    assert sim.label_factors.shape == (N, C) and sim.label_factors.dtype == jnp.float32
    assert sim.cluster_ids.shape == (2, N) and sim.cluster_ids.dtype == jnp.int32
    assert tuple(sim.cluster_ks) == KS
    for ids, k in zip(np.asarray(sim.cluster_ids), KS):
        assert ids.min() >= 0 and ids.max() < k
    np.testing.assert_allclose(np.asarray(sim.cluster_weights), [0.25, 0.75])
    assert float(sim.eta) == pytest.approx(0.3)
    # Default weights are uniform; eta = 0 without ks gives m = 0.
    uniform = similarity.build_joint_similarity(labels, cluster_ks=KS, eta=0.5,
                                                key=jax.random.key(0))
    np.testing.assert_allclose(np.asarray(uniform.cluster_weights), [0.5, 0.5])
    labels_only = similarity.build_joint_similarity(labels, cluster_ks=(), eta=0.0,
                                                    key=jax.random.key(0))
    assert labels_only.cluster_ids.shape == (0, N)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cluster_ks=(3,), eta=1.5), "eta must be in"),
    (dict(cluster_ks=(3,), cluster_weights=(0.5,), eta=0.5), "sum to 1"),
    (dict(cluster_ks=(3, 4), cluster_weights=(1.5, -0.5), eta=0.5), ">= 0"),
    (dict(cluster_ks=(3, 4), cluster_weights=(1.0,), eta=0.5), "one weight per"),
    (dict(cluster_ks=(), eta=0.5), "at least one granularity"),
    (dict(cluster_ks=(N + 1,), eta=0.5), "k must be"),
])
def test_build_joint_similarity_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        similarity.build_joint_similarity(random_labels(0), key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_low_rank_paths_equal_dense_formula(labels_and_sims, eta):
    labels, sims = labels_and_sims
    sim = sims[eta]
    ids = np.asarray(sim.cluster_ids)
    dense = numpy_similarity(labels, ids, (0.25, 0.75), eta)
    assert dense.min() >= 0 and dense.max() <= 1 + 1e-12
    np.testing.assert_allclose(np.asarray(jax.jit(similarity.dense_similarity)(sim)), dense,
                               atol=1e-6)

    idx = np.array([3, 0, 17, 39, 3])
    rows = jax.jit(similarity.similarity_rows_for_indices)(sim, idx)
    np.testing.assert_allclose(np.asarray(rows), dense[idx], atol=1e-6)
    rows_direct = jax.jit(similarity.similarity_rows)(sim, sim.label_factors[idx],
                                                      sim.cluster_ids[:, idx])
    np.testing.assert_allclose(np.asarray(rows_direct), dense[idx], atol=1e-6)

    a_idx, b_idx = np.arange(0, 10), np.arange(5, 12)
    pairwise = jax.jit(similarity.pairwise_similarity)(
        sim.label_factors[a_idx], sim.cluster_ids[:, a_idx], sim.label_factors[b_idx],
        sim.cluster_ids[:, b_idx], sim.cluster_weights, sim.eta)
    np.testing.assert_allclose(np.asarray(pairwise), dense[np.ix_(a_idx, b_idx)], atol=1e-6)

    x = np.random.default_rng(3).standard_normal((N, 7)).astype(np.float32)
    target = 2 * dense - 1
    got = jax.jit(similarity.apply_target)(sim, x)
    np.testing.assert_allclose(np.asarray(got), target @ x, rtol=1e-5, atol=1e-4)

    got_norm = jax.jit(similarity.target_squared_norm)(sim)
    np.testing.assert_allclose(float(got_norm), np.sum(target**2), rtol=1e-5)

    for floor in (0.0, -0.5):  # T = floor + (1 - floor) S
        target = floor + (1 - floor) * dense
        got = jax.jit(functools.partial(similarity.apply_target, floor=floor))(sim, x)
        np.testing.assert_allclose(np.asarray(got), target @ x, rtol=1e-5, atol=1e-4)
        got_norm = similarity.target_squared_norm(sim, floor=floor)
        np.testing.assert_allclose(float(got_norm), np.sum(target**2), rtol=1e-5)


def test_apply_target_rejects_wrong_rows(labels_and_sims):
    _, sims = labels_and_sims
    with pytest.raises(ValueError, match="x_nk must be"):
        similarity.apply_target(sims[0.3], np.zeros((N + 1, 4), np.float32))
    without_ks = sims[0.3]._replace(cluster_ks=similarity.ClusterSizes())
    with pytest.raises(ValueError, match="does not match"):
        similarity.apply_target(without_ks, np.zeros((N, 4), np.float32))


def test_apply_target_sharded_equals_unsharded(labels_and_sims):
    _, sims = labels_and_sims
    sim = sims[0.3]
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = NamedSharding(mesh, P("data"))
    sharded_sim = sim._replace(
        label_factors=jax.device_put(sim.label_factors, rows),
        cluster_ids=jax.device_put(sim.cluster_ids, NamedSharding(mesh, P(None, "data"))))
    x = np.random.default_rng(4).standard_normal((N, 8)).astype(np.float32)
    apply = jax.jit(similarity.apply_target)
    sharded = apply(sharded_sim, jax.device_put(x, rows))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(apply(sim, x)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("floor", [-1.0, 0.0])
def test_padded_similarity_equals_unpadded(labels_and_sims, floor):
    """Padding N = 40 -> 48 rows (sharded over 8 devices) changes nothing on the real
    rows: apply_target, target_squared_norm, the dense S and S rows; padding rows and
    columns are 0, even with garbage in the padding factors, ids and inputs."""
    _, sims = labels_and_sims
    sim = sims[0.3]
    padded = similarity.pad_similarity(sim, 48)
    assert padded.num_items == 48 and padded.num_valid == N and padded.padded
    assert similarity.pad_similarity(sim, N) is sim
    padded = padded._replace(label_factors=padded.label_factors.at[N:].set(3.0),
                             cluster_ids=padded.cluster_ids.at[:, N:].set(2))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = NamedSharding(mesh, P("data"))
    padded = padded._replace(
        label_factors=jax.device_put(padded.label_factors, rows),
        cluster_ids=jax.device_put(padded.cluster_ids, NamedSharding(mesh, P(None, "data"))))
    x = np.random.default_rng(5).standard_normal((N, 7)).astype(np.float32)
    x_padded = np.concatenate([x, np.full((8, 7), 100.0, np.float32)])
    apply = jax.jit(functools.partial(similarity.apply_target, floor=floor))
    got = np.asarray(apply(padded, jax.device_put(x_padded, rows)))
    np.testing.assert_allclose(got[:N], np.asarray(apply(sim, x)), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[N:], 0.0)
    np.testing.assert_allclose(
        float(similarity.target_squared_norm(padded, floor=floor)),
        float(similarity.target_squared_norm(sim, floor=floor)), rtol=1e-6)
    dense = np.asarray(jax.jit(similarity.dense_similarity)(padded))
    np.testing.assert_allclose(dense[:N, :N], np.asarray(similarity.dense_similarity(sim)),
                               atol=1e-6)
    assert not dense[N:].any() and not dense[:, N:].any()
    idx = np.array([3, 0, 39])
    got_rows = np.asarray(similarity.similarity_rows_for_indices(padded, idx))
    np.testing.assert_allclose(got_rows[:, :N], dense[idx, :N], atol=1e-6)
    assert not got_rows[:, N:].any()
