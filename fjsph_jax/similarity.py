"""Joint label similarity (sample-wise cosine + cluster-wise k-means), kept low-rank.

Notation: N training items, C classes, label matrix ``L`` [N, C] (multi-hot),
row-normalised ``N_hat = L / ||L||_row`` (zero rows stay zero).  At m granularities
k_1..k_m, k-means over the rows of ``N_hat`` gives one-hot assignments ``C_j`` [N, k_j]
with weights ``w_j`` (sum 1).  The joint similarity and the target are

    S = (1 - eta) N_hat N_hat^T + eta sum_j w_j C_j C_j^T      values in [0, 1]
    T = 2 S - 1                                                 values in [-1, 1]

No function here (except :func:`dense_similarity`, for tests) builds an N x N matrix:
everything is computed from the factors ``N_hat`` and the cluster ids, so memory and
time stay linear in N.  All array functions are pure and jit-able and work with the N
axis sharded (plain ``jnp`` operations, no host round trips).
"""
from __future__ import annotations

import functools
import math
import numbers
import typing
from typing import Sequence

import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST


@jax.tree_util.register_static
class ClusterSizes(tuple):
    """The granularities ``(k_1, ..., k_m)`` as static pytree data.

    Registered with :func:`jax.tree_util.register_static`, so a ``JointSimilarity``
    passed to a jitted function keeps these as Python ints (``segment_sum`` needs a
    static ``num_segments``), and a change of the ks triggers a retrace.
    """

    __slots__ = ()


class JointSimilarity(typing.NamedTuple):
    """Low-rank factors of the joint similarity ``S`` (a pytree).

    Fields:
      label_factors: float32 [N, C], ``N_hat`` (row-normalised labels).
      cluster_ids: int32 [m, N], the k-means cluster of every item at each granularity.
      cluster_weights: float32 [m], ``w_j`` (sum 1 when m > 0).
      eta: float32 scalar array, the weight of the cluster-wise term.
      cluster_ks: static ``(k_1, ..., k_m)`` (no leaves; see :class:`ClusterSizes`).
    """

    label_factors: jax.Array
    cluster_ids: jax.Array
    cluster_weights: jax.Array
    eta: jax.Array
    cluster_ks: ClusterSizes = ClusterSizes()

    @property
    def num_items(self) -> int:
        return self.label_factors.shape[0]


def normalize_labels(labels_nc) -> jax.Array:
    """Row-normalise a label matrix: ``N_hat[i] = L[i] / ||L[i]||_2``, zero rows stay 0.

    Args:
      labels_nc: [N, C] multi-hot (or any non-negative) labels, any numeric dtype.
    Returns:
      float32 [N, C].
    """
    labels = jnp.asarray(labels_nc, jnp.float32)
    if labels.ndim != 2:
        raise ValueError(f"labels_nc must be 2-D [N, C], got shape {labels.shape}")
    norms = jnp.sqrt(jnp.sum(labels * labels, axis=1, keepdims=True))
    return labels / jnp.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------- k-means


def _squared_distances(points_nd, centroids_kd):
    """``||x_i - c_j||^2`` [N, k] via ``|x|^2 - 2 x c^T + |c|^2`` (clamped at 0)."""
    cross = jnp.matmul(points_nd, centroids_kd.T, precision=_PRECISION)
    d2 = (jnp.sum(points_nd**2, axis=1)[:, None] - 2.0 * cross
          + jnp.sum(centroids_kd**2, axis=1)[None, :])
    return jnp.maximum(d2, 0.0)


def _kmeans_plus_plus(points_nd, k: int, key):
    """k-means++ seeding: ``k`` distinct points, each drawn with probability ∝ D(x)^2.

    A point is never drawn twice; when every remaining point coincides with a chosen
    one (all D(x) = 0), the next one is drawn uniformly from the points not yet chosen.
    Returns centroids [k, D].
    """
    num_points = points_nd.shape[0]
    first_key, rest_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, num_points)
    chosen = jnp.zeros((num_points,), bool).at[first].set(True)
    min_d2 = jnp.sum((points_nd - points_nd[first]) ** 2, axis=1)
    indices = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(i, carry):
        indices, chosen, min_d2 = carry
        weights = jnp.where(chosen, 0.0, min_d2)
        any_mass = jnp.sum(weights) > 0
        logits = jnp.where(chosen, -jnp.inf,
                           jnp.where(any_mass, jnp.log(weights), 0.0))
        pick = jax.random.categorical(jax.random.fold_in(rest_key, i), logits)
        indices = indices.at[i].set(pick)
        chosen = chosen.at[pick].set(True)
        min_d2 = jnp.minimum(min_d2, jnp.sum((points_nd - points_nd[pick]) ** 2, axis=1))
        return indices, chosen, min_d2

    indices, _, _ = jax.lax.fori_loop(1, k, body, (indices, chosen, min_d2))
    return points_nd[indices]


def _update_centroids(points_nd, assignments_n, k: int):
    """One Lloyd update: centroids = cluster means; empty clusters re-seeded.

    The r-th empty cluster (in index order) moves to the r-th point farthest from its
    own (updated) centroid, so reseeding is deterministic and uses distinct points.
    Returns centroids [k, D].
    """
    sums = jax.ops.segment_sum(points_nd, assignments_n, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(assignments_n, jnp.float32),
                                 assignments_n, num_segments=k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    own_d2 = jnp.sum((points_nd - means[assignments_n]) ** 2, axis=1)
    _, farthest = jax.lax.top_k(own_d2, k)
    empty_rank = jnp.cumsum(empty) - 1
    reseeded = points_nd[farthest[jnp.clip(empty_rank, 0, k - 1)]]
    return jnp.where(empty[:, None], reseeded, means)


@functools.partial(jax.jit, static_argnames=("k", "num_iters"))
def _kmeans(points_nd, key, *, k: int, num_iters: int):
    points = points_nd.astype(jnp.float32)
    centroids = _kmeans_plus_plus(points, k, key)
    no_assignment = jnp.full((points.shape[0],), -1, jnp.int32)

    def cond(carry):
        step, _, _, changed = carry
        return jnp.logical_and(step < num_iters, changed)

    def body(carry):
        step, centroids, previous, _ = carry
        assignments = jnp.argmin(_squared_distances(points, centroids), axis=1)
        assignments = assignments.astype(jnp.int32)
        centroids = _update_centroids(points, assignments, k)
        return step + 1, centroids, assignments, jnp.any(assignments != previous)

    _, centroids, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), centroids, no_assignment, jnp.bool_(True)))
    assignments = jnp.argmin(_squared_distances(points, centroids), axis=1)
    return assignments.astype(jnp.int32), centroids


def kmeans(points_nd, k: int, key, *, num_iters: int = 50):
    """Lloyd's k-means with k-means++ seeding, fully in JAX (jitted, ``while_loop``).

    Iterates assign (``argmin_j ||x_i - c_j||^2``) / update (cluster means) until the
    assignments stop changing or ``num_iters`` updates ran; empty clusters are re-seeded
    to the points farthest from their centroids.  Deterministic for a given ``key``.
    With fewer than k distinct points some clusters necessarily stay empty.
    Cost O(N k D) time and O(N k) memory per iteration.

    Args:
      points_nd: [N, D] points.
      k: number of clusters, 1 <= k <= N.
      key: a ``jax.random`` key.
      num_iters: maximum number of Lloyd updates (>= 0).
    Returns:
      ``(assignments int32 [N], centroids float32 [k, D])``; assignments are the nearest
      final centroid of each point.
    """
    points_nd = jnp.asarray(points_nd)
    if points_nd.ndim != 2:
        raise ValueError(f"points_nd must be 2-D [N, D], got shape {points_nd.shape}")
    num_points = points_nd.shape[0]
    if not _is_int(k) or not 1 <= k <= num_points:
        raise ValueError(f"k must be an int in [1, N] with N={num_points} points, got k={k!r}")
    if not _is_int(num_iters) or num_iters < 0:
        raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
    return _kmeans(points_nd, key, k=int(k), num_iters=int(num_iters))


def _is_int(value) -> bool:
    """True for Python and numpy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ------------------------------------------------------------------ joint similarity


def build_joint_similarity(labels_nc, *, cluster_ks: Sequence[int],
                           cluster_weights: Sequence[float] | None = None,
                           eta: float, key, kmeans_iters: int = 50) -> JointSimilarity:
    """Normalise labels and cluster them at every granularity in ``cluster_ks``.

    k-means runs on the rows of ``N_hat`` with key ``fold_in(key, j)`` for granularity j.

    Args:
      labels_nc: [N, C] multi-hot labels.
      cluster_ks: granularities (k_1..k_m), each in [1, N]; may be empty only if eta == 0.
      cluster_weights: ``w_j`` >= 0 summing to 1, one per k; None means uniform 1/m.
      eta: weight of the cluster-wise similarity, in [0, 1].
      key: ``jax.random`` key for k-means seeding.
      kmeans_iters: maximum Lloyd iterations per granularity.
    Returns:
      A :class:`JointSimilarity` with m = len(cluster_ks) (cluster_ids [m, N]).
    """
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    ks = tuple(cluster_ks)
    if not all(_is_int(k) for k in ks):
        raise ValueError(f"cluster_ks must hold ints, got {ks!r}")
    ks = tuple(int(k) for k in ks)
    if eta > 0 and not ks:
        raise ValueError("cluster_ks must name at least one granularity when eta > 0 "
                         f"(got eta={eta}, cluster_ks=()); use eta=0 for labels only")
    if cluster_weights is None:
        weights = tuple(1.0 / len(ks) for _ in ks)
    else:
        weights = tuple(float(w) for w in cluster_weights)
        if len(weights) != len(ks):
            raise ValueError(f"cluster_weights must have one weight per cluster_ks entry: "
                             f"got {len(weights)} weights for {len(ks)} ks")
        if any(w < 0 for w in weights) or (ks and not math.isclose(sum(weights), 1.0,
                                                                    abs_tol=1e-6)):
            raise ValueError(f"cluster_weights must be >= 0 and sum to 1, got {weights}")
    factors = normalize_labels(labels_nc)
    num_items = factors.shape[0]
    ids = [kmeans(factors, k, jax.random.fold_in(key, j), num_iters=kmeans_iters)[0]
           for j, k in enumerate(ks)]
    cluster_ids = (jnp.stack(ids) if ids else jnp.zeros((0, num_items), jnp.int32))
    return JointSimilarity(
        label_factors=factors,
        cluster_ids=cluster_ids,
        cluster_weights=jnp.asarray(weights, jnp.float32).reshape(len(ks)),
        eta=jnp.asarray(eta, jnp.float32),
        cluster_ks=ClusterSizes(ks),
    )


def pairwise_similarity(factors_a, cluster_ids_a, factors_b, cluster_ids_b,
                        cluster_weights, eta) -> jax.Array:
    """Joint similarity between two sets of items.

        S_ab = (1 - eta) Nhat_a Nhat_b^T + eta sum_j w_j [id_j(a) == id_j(b)]

    Args:
      factors_a: [A, C] normalised labels; cluster_ids_a: int [m, A].
      factors_b: [B, C] normalised labels; cluster_ids_b: int [m, B].
      cluster_weights: [m]; eta: scalar.
    Returns:
      float32 [A, B] with values in [0, 1] (up to rounding).  Cost O(A B (C + m)).
    """
    cosine = jnp.matmul(factors_a.astype(jnp.float32), factors_b.astype(jnp.float32).T,
                        precision=_PRECISION)
    same = (cluster_ids_a[:, :, None] == cluster_ids_b[:, None, :]).astype(jnp.float32)
    clustered = jnp.einsum("m,mab->ab", jnp.asarray(cluster_weights, jnp.float32), same,
                           precision=_PRECISION)
    eta = jnp.asarray(eta, jnp.float32)
    return (1.0 - eta) * cosine + eta * clustered


def similarity_rows(sim: JointSimilarity, rows_label_factors_bc,
                    rows_cluster_ids_mb) -> jax.Array:
    """Similarity of B items (given by their factors) to all N training items.

    Args:
      rows_label_factors_bc: [B, C] normalised labels of the B items.
      rows_cluster_ids_mb: int [m, B] their cluster ids (same granularities as ``sim``).
    Returns:
      float32 [B, N], ``S[b, i]`` in [0, 1].  Cost O(B N (C + m)).
    """
    return pairwise_similarity(rows_label_factors_bc, rows_cluster_ids_mb,
                               sim.label_factors, sim.cluster_ids,
                               sim.cluster_weights, sim.eta)


def similarity_rows_for_indices(sim: JointSimilarity, idx_b) -> jax.Array:
    """Rows ``S[idx_b, :]`` [B, N] for training items ``idx_b`` (int [B])."""
    idx_b = jnp.asarray(idx_b)
    return similarity_rows(sim, sim.label_factors[idx_b], sim.cluster_ids[:, idx_b])


def apply_target(sim: JointSimilarity, x_nk, *, floor: float = -1.0) -> jax.Array:
    """``T X`` for the target ``T = floor + (1 - floor) S`` without forming T.

    ``floor`` is the target for unrelated pairs (S = 0): -1 gives ``T = 2S - 1``
    (unrelated codes opposite), 0 gives ``T = S`` (unrelated codes orthogonal).

        T X = (1-floor) [(1-eta) N_hat (N_hat^T X) + eta sum_j w_j C_j (C_j^T X)]
              + floor 1 (1^T X)

    ``C_j^T X`` is ``segment_sum(X, ids_j, k_j)`` [k_j, K] and ``C_j (.)`` a gather.

    Args:
      x_nk: [N, K].
      floor: target value at S = 0, in [-1, 1).
    Returns:
      float32 [N, K].  Cost O(N K (C + m)) time, O(N K + sum_j k_j K) memory.
    """
    x = jnp.asarray(x_nk, jnp.float32)
    if x.ndim != 2 or x.shape[0] != sim.num_items:
        raise ValueError(f"x_nk must be [N, K] with N={sim.num_items}, got {x.shape}")
    if len(sim.cluster_ks) != sim.cluster_ids.shape[0]:
        raise ValueError(f"sim.cluster_ks {tuple(sim.cluster_ks)} does not match "
                         f"sim.cluster_ids with m={sim.cluster_ids.shape[0]} rows")
    factors = sim.label_factors
    projected = jnp.matmul(factors.T, x, precision=_PRECISION)            # [C, K]
    label_term = jnp.matmul(factors, projected, precision=_PRECISION)     # [N, K]
    cluster_term = jnp.zeros_like(x)
    for j, k in enumerate(sim.cluster_ks):
        ids = sim.cluster_ids[j]
        cluster_sums = jax.ops.segment_sum(x, ids, num_segments=k)      # [k_j, K]
        cluster_term = cluster_term + sim.cluster_weights[j] * cluster_sums[ids]
    column_sums = jnp.sum(x, axis=0, keepdims=True)                      # [1, K]
    similarity_term = (1.0 - sim.eta) * label_term + sim.eta * cluster_term
    return (1.0 - floor) * similarity_term + floor * column_sums


def target_squared_norm(sim: JointSimilarity, *, floor: float = -1.0) -> jax.Array:
    """``||T||_F^2`` for ``T = floor + (1 - floor) S`` from the factors, without forming S.

        ||T||^2 = (1-floor)^2 ||S||^2 + 2 floor (1-floor) 1^T S 1 + floor^2 N^2
        ||S||^2 = (1-eta)^2 ||N_hat^T N_hat||^2 + 2 eta (1-eta) sum_j w_j ||C_j^T N_hat||^2
                  + eta^2 sum_{i,j} w_i w_j ||C_i^T C_j||^2
        1^T S 1 = (1-eta) ||N_hat^T 1||^2 + eta sum_j w_j ||C_j^T 1||^2

    ``C_i^T C_j`` is the [k_i, k_j] contingency table of two clusterings.  Cost
    O(N (C^2 + m C + m^2)) time, O(C^2 + m C max k + max k_i k_j) memory.  Returns a
    float32 scalar.
    """
    factors = sim.label_factors
    eta, weights, ks = sim.eta, sim.cluster_weights, sim.cluster_ks
    num_items = factors.shape[0]
    gram = jnp.matmul(factors.T, factors, precision=_PRECISION)
    label_mass = jnp.sum(factors, axis=0)
    s_sq = (1.0 - eta) ** 2 * jnp.sum(gram**2)
    s_sum = (1.0 - eta) * jnp.sum(label_mass**2)
    ones = jnp.ones((num_items,), jnp.float32)
    for i, k_i in enumerate(ks):
        ids_i = sim.cluster_ids[i]
        cluster_labels = jax.ops.segment_sum(factors, ids_i, num_segments=k_i)
        sizes = jax.ops.segment_sum(ones, ids_i, num_segments=k_i)
        s_sq += 2.0 * eta * (1.0 - eta) * weights[i] * jnp.sum(cluster_labels**2)
        s_sum += eta * weights[i] * jnp.sum(sizes**2)
        for j, k_j in enumerate(ks):
            joint_ids = ids_i * k_j + sim.cluster_ids[j]
            table = jax.ops.segment_sum(ones, joint_ids, num_segments=k_i * k_j)
            s_sq += eta**2 * weights[i] * weights[j] * jnp.sum(table**2)
    scale = 1.0 - floor
    return (scale**2 * s_sq + 2.0 * floor * scale * s_sum
            + floor**2 * jnp.float32(num_items) ** 2)


def dense_similarity(sim: JointSimilarity) -> jax.Array:
    """The full S [N, N].  For tests and small N only: O(N^2) memory."""
    return pairwise_similarity(sim.label_factors, sim.cluster_ids, sim.label_factors,
                               sim.cluster_ids, sim.cluster_weights, sim.eta)
