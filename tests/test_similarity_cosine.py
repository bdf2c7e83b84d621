"""Tests for the cosine k-means of fjsph_jax.similarity (MATLAB 'Distance', 'cosine')."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax import similarity


def direction_clusters(seed, per=20, dim=5, k=3):
    """k well-separated directions; points at very different scales along them."""
    rng = np.random.default_rng(seed)
    directions = np.eye(dim)[:k] + 0.05
    ids = np.repeat(np.arange(k), per)
    scales = rng.uniform(0.1, 50.0, size=(len(ids), 1))
    points = scales * (directions[ids] + 0.03 * rng.normal(size=(len(ids), dim)))
    return points, ids


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (all(len(set(b[a == c])) == 1 for c in np.unique(a))
            and len(np.unique(a)) == len(np.unique(b)))


def test_cosine_kmeans_groups_by_direction_not_scale():
    points, truth = direction_clusters(0)
    ids, centroids = similarity.kmeans(points, 3, jax.random.key(0), distance="cosine")
    assert ids.dtype == jnp.int32 and centroids.shape == (3, 5)
    assert same_partition(ids, truth)
    # Squared Euclidean distance is fooled by the scales.
    euclid, _ = similarity.kmeans(points, 3, jax.random.key(0))
    assert not same_partition(euclid, truth)


def test_cosine_kmeans_fixed_point_and_determinism():
    rng = np.random.default_rng(1)
    labels = (rng.random((120, 8)) < 0.3).astype(np.float32)
    labels[np.arange(120), rng.integers(0, 8, 120)] = 1
    ids, centroids = similarity.kmeans_cosine(labels, 6, jax.random.key(3))
    again, _ = similarity.kmeans_cosine(labels, 6, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(again))
    ids, centroids = np.asarray(ids), np.asarray(centroids)
    unit = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    # Converged: centroids are the means of the member unit rows, and every row sits at
    # (one of) its largest cosines to the centroid directions.
    for c in np.unique(ids):
        np.testing.assert_allclose(centroids[c], unit[ids == c].mean(0), atol=1e-6)
    directions = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    cosine = unit @ directions.T
    np.testing.assert_allclose(cosine[np.arange(120), ids], cosine.max(1), atol=1e-6)


def test_cosine_update_reseeds_empty_cluster_to_farthest_point():
    unit = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    update = jax.jit(similarity._update_centroids_cosine, static_argnums=2)
    centroids = update(unit, jnp.zeros(3, jnp.int32), 2)
    np.testing.assert_allclose(np.asarray(centroids[0]), [0.6, 1.6 / 3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(centroids[1]), [0.0, 1.0])  # farthest in 1 - cos


def test_cosine_kmeans_validation_and_default_unchanged():
    with pytest.raises(ValueError, match="1 of the 3 rows are all zero"):
        similarity.kmeans_cosine(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]), 2,
                                 jax.random.key(0))
    with pytest.raises(ValueError, match="distance must be"):
        similarity.kmeans(np.eye(3), 2, jax.random.key(0), distance="manhattan")
    with pytest.raises(ValueError, match=r"k must be an int in \[1, N\]"):
        similarity.kmeans_cosine(np.eye(3), 4, jax.random.key(0))
    points, _ = direction_clusters(2)
    default = similarity.kmeans(points, 3, jax.random.key(1))
    explicit = similarity.kmeans(points, 3, jax.random.key(1), distance="sqeuclidean")
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
