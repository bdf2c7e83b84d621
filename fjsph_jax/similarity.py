"""Joint label similarity (sample-wise cosine + cluster-wise k-means), kept low-rank.

Notation: N training items, C classes, label matrix ``L`` [N, C] (multi-hot),
row-normalised ``N_hat = L / ||L||_row`` (zero rows stay zero).  At m granularities
k_1..k_m, k-means over the rows of ``N_hat`` gives one-hot assignments ``C_j`` [N, k_j]
with weights ``w_j`` (sum 1).  The joint similarity and the target are

    S = (1 - eta) N_hat N_hat^T + eta sum_j w_j C_j C_j^T      values in [0, 1]
    T = 2 S - 1                                                 values in [-1, 1]

No function here (except :func:`dense_similarity`, for tests) builds an N x N matrix:
everything is computed from the factors ``N_hat`` and the cluster ids, so memory and
time stay linear in N.  FJSPH's step reads rows of ``T X`` and of ``T o T`` for its batch
from cached statistics (:func:`project_on_factors`, :func:`target_statistics`,
:func:`apply_target_rows`, :func:`target_row_squared_norms`): nothing of size N per step.
The N axis may be padded (:func:`pad_similarity`); padding rows are masked everywhere.  All array functions are pure and jit-able and work with the N
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


@jax.tree_util.register_static
class RowCount(int):
    """How many of the rows of a padded ``JointSimilarity`` are real items (static pytree
    data, like :class:`ClusterSizes`: masks built from it are iotas, no array to shard)."""

    __slots__ = ()


class JointSimilarity(typing.NamedTuple):
    """Low-rank factors of the joint similarity ``S`` (a pytree).

    Fields:
      label_factors: float32 [N, C], ``N_hat`` (row-normalised labels).
      cluster_ids: int32 [m, N], the k-means cluster of every item at each granularity.
      cluster_weights: float32 [m], ``w_j`` (sum 1 when m > 0).
      eta: float32 scalar array, the weight of the cluster-wise term.
      cluster_ks: static ``(k_1, ..., k_m)`` (no leaves; see :class:`ClusterSizes`).
      valid_items: static :class:`RowCount` when the arrays are padded along N (see
        :func:`pad_similarity`): only the first ``valid_items`` rows are items, the rest
        (zero factors, cluster id 0) are masked out of every function here. None: all
        N rows are items.

    ``num_items`` is the length of the N axis (padding included); ``num_valid`` the
    number of real items.
    """

    label_factors: jax.Array
    cluster_ids: jax.Array
    cluster_weights: jax.Array
    eta: jax.Array
    cluster_ks: ClusterSizes = ClusterSizes()
    valid_items: RowCount | None = None

    @property
    def num_items(self) -> int:
        return self.label_factors.shape[0]

    @property
    def num_valid(self) -> int:
        return self.num_items if self.valid_items is None else int(self.valid_items)

    @property
    def padded(self) -> bool:
        return self.num_valid < self.num_items


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
    first = jax.random.randint(first_key, (), 0, num_points, dtype=jnp.int32)
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
        indices = indices.at[i].set(pick.astype(jnp.int32))
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
    own_d2 = jnp.sum((points_nd - means[assignments_n]) ** 2, axis=1)
    return _reseed_empty(points_nd, means, counts, own_d2, k)


def _reseed_empty(points_nd, means_kd, counts_k, own_distance_n, k: int):
    """The r-th empty cluster (counts 0, in index order) moved to the r-th point of largest
    ``own_distance_n`` (distance to its own centroid); the other means kept. [k, D]."""
    empty = counts_k == 0
    _, farthest = jax.lax.top_k(own_distance_n, k)
    empty_rank = jnp.cumsum(empty) - 1
    reseeded = points_nd[farthest[jnp.clip(empty_rank, 0, k - 1)]]
    return jnp.where(empty[:, None], reseeded, means_kd)


@functools.partial(jax.jit, static_argnames=("k", "num_iters"))
def _kmeans(points_nd, key, *, k: int, num_iters: int):
    points = points_nd.astype(jnp.float32)

    def assign(points, centroids):
        return jnp.argmin(_squared_distances(points, centroids), axis=1).astype(jnp.int32)

    centroids = _lloyd(points, _kmeans_plus_plus(points, k, key), assign,
                       lambda p, a: _update_centroids(p, a, k), num_iters)
    return assign(points, centroids), centroids


def _lloyd(points, centroids, assign, update, num_iters: int):
    """Lloyd iterations ``centroids <- update(points, assign(points, centroids))`` until the
    assignments stop changing or ``num_iters`` updates ran (``lax.while_loop``)."""
    no_assignment = jnp.full((points.shape[0],), -1, jnp.int32)

    def cond(carry):
        step, _, _, changed = carry
        return jnp.logical_and(step < num_iters, changed)

    def body(carry):
        step, centroids, previous, _ = carry
        assignments = assign(points, centroids)
        centroids = update(points, assignments)
        return step + 1, centroids, assignments, jnp.any(assignments != previous)

    _, centroids, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), centroids, no_assignment, jnp.bool_(True)))
    return centroids


def kmeans(points_nd, k: int, key, *, num_iters: int = 50, distance: str = "sqeuclidean"):
    """Lloyd's k-means with k-means++ seeding, fully in JAX (jitted, ``while_loop``).

    Iterates assign (``argmin_j ||x_i - c_j||^2``) / update (cluster means) until the
    assignments stop changing or ``num_iters`` updates ran; empty clusters are re-seeded
    to the points farthest from their centroids.  Deterministic for a given ``key``.
    With fewer than k distinct points some clusters necessarily stay empty.
    Cost O(N k D) time and O(N k) memory per iteration.

    ``distance="cosine"`` is MATLAB's ``kmeans(..., 'Distance', 'cosine')``: the points
    are first scaled to unit length, a centroid is the mean of its (unit) member points,
    a point goes to the centroid of largest cosine ``x . c / ||c||`` (distance
    ``1 - cos``; ties to the lower cluster index), k-means++ draws with probability
    ∝ ``1 - cos`` (= half the squared distance of the unit points), and an empty cluster
    is re-seeded to the point of largest ``1 - cos`` to its own centroid.  See
    :func:`kmeans_cosine`.

    Args:
      points_nd: [N, D] points.
      k: number of clusters, 1 <= k <= N.
      key: a ``jax.random`` key.
      num_iters: maximum number of Lloyd updates (>= 0).
      distance: ``"sqeuclidean"`` (default) or ``"cosine"``.
    Returns:
      ``(assignments int32 [N], centroids float32 [k, D])``; assignments are the nearest
      final centroid of each point.  For ``"cosine"`` the centroids are the (not
      re-normalised) means of unit points, in the points' float dtype (>= float32).
    """
    if distance == "cosine":
        return kmeans_cosine(points_nd, k, key, num_iters=num_iters)
    if distance != "sqeuclidean":
        raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
    points_nd = jnp.asarray(points_nd)
    if points_nd.ndim != 2:
        raise ValueError(f"points_nd must be 2-D [N, D], got shape {points_nd.shape}")
    num_points = points_nd.shape[0]
    if not _is_int(k) or not 1 <= k <= num_points:
        raise ValueError(f"k must be an int in [1, N] with N={num_points} points, got k={k!r}")
    if not _is_int(num_iters) or num_iters < 0:
        raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
    return _kmeans(points_nd, key, k=int(k), num_iters=int(num_iters))


def _unit_rows(points_nd):
    """Rows scaled to unit Euclidean length; zero rows stay zero."""
    norms = jnp.sqrt(jnp.sum(points_nd * points_nd, axis=1, keepdims=True))
    return points_nd / jnp.where(norms > 0, norms, 1.0)


def _cosine_assign(unit_points_nd, centroids_kd):
    """``argmax_j x_i . c_j / ||c_j||`` (first maximum on ties), int32 [N]."""
    directions = _unit_rows(centroids_kd)
    cosine = jnp.matmul(unit_points_nd, directions.T, precision=_PRECISION)
    return jnp.argmax(cosine, axis=1).astype(jnp.int32)


def _update_centroids_cosine(unit_points_nd, assignments_n, k: int):
    """Cosine Lloyd update: centroid = mean of the member unit points; empties re-seeded.

    The r-th empty cluster (in index order) moves to the r-th point of largest cosine
    distance ``1 - x . c_own / ||c_own||`` to its own updated centroid (MATLAB's
    'singleton' empty action, made deterministic).  Returns centroids [k, D].
    """
    dtype = unit_points_nd.dtype
    sums = jax.ops.segment_sum(unit_points_nd, assignments_n, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(assignments_n, dtype), assignments_n,
                                 num_segments=k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    own = _unit_rows(means)[assignments_n]
    own_distance = 1.0 - jnp.sum(unit_points_nd * own, axis=1)
    return _reseed_empty(unit_points_nd, means, counts, own_distance, k)


@functools.partial(jax.jit, static_argnames=("k", "num_iters"))
def _kmeans_cosine(points_nd, key, *, k: int, num_iters: int):
    dtype = jnp.promote_types(points_nd.dtype, jnp.float32)
    points = _unit_rows(points_nd.astype(dtype))
    # k-means++ on the unit points: ||x - c||^2 = 2 (1 - cos), so the draw is ∝ 1 - cos.
    centroids = _lloyd(points, _kmeans_plus_plus(points, k, key), _cosine_assign,
                       lambda p, a: _update_centroids_cosine(p, a, k), num_iters)
    return _cosine_assign(points, centroids), centroids


def kmeans_cosine(points_nd, k: int, key, *, num_iters: int = 100):
    """k-means with cosine distance (MATLAB ``kmeans(X, k, 'Distance', 'cosine')``).

    Rows are scaled to unit length; k-means++ seeding (draw ∝ ``1 - cos`` to the
    nearest chosen seed, never the same point twice); then Lloyd iterations: assign each
    point to the centroid of largest cosine (first on ties), centroid = mean of the
    member unit points, empty clusters re-seeded to the points farthest (in ``1 - cos``)
    from their own centroids; stop when the assignments no longer change or after
    ``num_iters`` updates (MATLAB's default MaxIter is 100).  Deterministic for a key.

    A zero row has no direction: MATLAB rejects it, and so does this function (when the
    points are concrete; under a trace a zero row would be assigned to cluster 0).

    Args:
      points_nd: [N, D] points (e.g. multi-hot label rows), any real dtype.
      k: number of clusters, 1 <= k <= N.  With fewer than k distinct directions some
        clusters stay empty (their id never occurs).
      key: a ``jax.random`` key.
      num_iters: maximum number of Lloyd updates (>= 0).
    Returns:
      ``(assignments int32 [N], centroids [k, D])``, centroids in the points' float
      dtype (at least float32).  Cost O(N k D) per iteration, no [N, N] matrix.
    """
    points_nd = jnp.asarray(points_nd)
    if points_nd.ndim != 2:
        raise ValueError(f"points_nd must be 2-D [N, D], got shape {points_nd.shape}")
    num_points = points_nd.shape[0]
    if not _is_int(k) or not 1 <= k <= num_points:
        raise ValueError(f"k must be an int in [1, N] with N={num_points} points, got k={k!r}")
    if not _is_int(num_iters) or num_iters < 0:
        raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
    if not isinstance(points_nd, jax.core.Tracer):
        zero_rows = int(jnp.sum(jnp.all(points_nd == 0, axis=1)))
        if zero_rows:
            raise ValueError(f"cosine k-means needs nonzero rows: {zero_rows} of the "
                             f"{num_points} rows are all zero (no direction); drop them "
                             "or use distance='sqeuclidean'")
    return _kmeans_cosine(points_nd, key, k=int(k), num_iters=int(num_iters))


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
    rows = pairwise_similarity(rows_label_factors_bc, rows_cluster_ids_mb,
                               sim.label_factors, sim.cluster_ids,
                               sim.cluster_weights, sim.eta)
    mask = row_mask(sim)
    return rows if mask is None else jnp.where(mask[None, :], rows, 0.0)


def similarity_rows_for_indices(sim: JointSimilarity, idx_b) -> jax.Array:
    """Rows ``S[idx_b, :]`` [B, N] for training items ``idx_b`` (int [B]).

    O(B N (C + m)) time and an ``[m, B, N]`` temporary: FJSPH's step uses it only for
    ``loss.similarity_form = "likelihood"`` (and as the dense reference); the mse form
    reads :func:`apply_target_rows` / :func:`target_row_squared_norms` instead. Padding
    columns (a padded ``sim``) are 0.
    """
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
    mask = row_mask(sim)
    if mask is not None:  # padding rows: no input, no output
        x = jnp.where(mask[:, None], x, 0.0)
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
    result = (1.0 - floor) * similarity_term + floor * column_sums
    return result if mask is None else jnp.where(mask[:, None], result, 0.0)


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
    num_items = sim.num_valid  # padding rows (zero factors) count nowhere
    mask = row_mask(sim)
    if mask is not None:
        factors = jnp.where(mask[:, None], factors, 0.0)
    gram = jnp.matmul(factors.T, factors, precision=_PRECISION)
    label_mass = jnp.sum(factors, axis=0)
    s_sq = (1.0 - eta) ** 2 * jnp.sum(gram**2)
    s_sum = (1.0 - eta) * jnp.sum(label_mass**2)
    ones = (jnp.ones((sim.num_items,), jnp.float32) if mask is None
            else mask.astype(jnp.float32))
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
    """The full S [N, N].  For tests and small N only: O(N^2) memory.  Rows and columns
    of padding rows (a padded ``sim``) are 0."""
    dense = pairwise_similarity(sim.label_factors, sim.cluster_ids, sim.label_factors,
                                sim.cluster_ids, sim.cluster_weights, sim.eta)
    mask = row_mask(sim)
    return dense if mask is None else jnp.where(mask[:, None] & mask[None, :], dense, 0.0)


# ------------------------------------------------------------------ padding


def row_mask(sim: JointSimilarity) -> jax.Array | None:
    """bool [N]: True on the real items of a padded ``sim``; None when nothing is padded."""
    if not sim.padded:
        return None
    return jnp.arange(sim.num_items) < sim.num_valid


def pad_similarity(sim: JointSimilarity, num_rows: int) -> JointSimilarity:
    """``sim`` with its N axis padded to ``num_rows`` (e.g. a multiple of the device
    count, :func:`fjsph_jax.parallel.padded_num_rows`), so that it splits over devices.

    Padding rows get zero label factors and cluster id 0; ``valid_items`` records the
    number of real items, and every function of this module masks the padding rows out
    (they are no item: no similarity to anything, counted in no cluster, no term of any
    sum). Returns ``sim`` itself when it already has ``num_rows`` rows.
    """
    if num_rows < sim.num_items:
        raise ValueError(f"pad_similarity: sim has {sim.num_items} rows, more than "
                         f"num_rows={num_rows}")
    if num_rows == sim.num_items:
        return sim
    return sim._replace(
        label_factors=jnp.pad(sim.label_factors, ((0, num_rows - sim.num_items), (0, 0))),
        cluster_ids=jnp.pad(sim.cluster_ids, ((0, 0), (0, num_rows - sim.num_items))),
        valid_items=RowCount(sim.num_valid),
    )


# ------------------------------------- rows of T X and of T o T from cached statistics
#
# The FJSPH step needs, for its B batch rows b and the code bank X = B [N, K],
#
#     (T X)[b]            = (1-floor) [(1-eta) N_hat_b (N_hat^T X)
#                                      + eta sum_j w_j (C_j^T X)[c_j(b)]] + floor 1^T X
#     sum_n T[b, n]^2     = floor^2 N + 2 floor (1-floor) s1_b + (1-floor)^2 s2_b
#     s1_b = sum_n S[b, n] = (1-eta) N_hat_b . (N_hat^T 1) + eta sum_j w_j |c_j(b)|
#     s2_b = sum_n S[b, n]^2
#          = (1-eta)^2 N_hat_b^T (N_hat^T N_hat) N_hat_b
#            + 2 eta (1-eta) sum_j w_j N_hat_b . (C_j^T N_hat)[c_j(b)]
#            + eta^2 [sum_j w_j^2 |c_j(b)| + 2 sum_{i<j} w_i w_j |c_i(b) & c_j(b)|]
#
# (|c_j(b)|: the size of b's cluster at granularity j; |c_i(b) & c_j(b)|: the items
# sharing both, an entry of the contingency table C_i^T C_j). Everything N-sized is in
# the projections N_hat^T X [C, K], C_j^T X [k_j, K], 1^T X [K] (which change with X)
# and in N_hat^T N_hat [C, C], N_hat^T 1 [C], C_j^T N_hat [k_j, C], the cluster sizes
# and the contingency tables (which depend on S only); with those cached, a batch
# costs O(B (C + m) K + B (C^2 + m C + m^2)), whatever N is. The cluster-indexed arrays
# stack the m granularities along one axis (granularity j at offset k_1 + ... + k_{j-1};
# the contingency tables of the pairs i < j flattened one after the other), with one
# unused zero row when the stack would be empty.


class FactorProjections(typing.NamedTuple):
    """``X`` [N, K] projected on the factors of S (all small, replicated).

    Fields:
      labels: float32 [C, K], ``N_hat^T X``.
      clusters: float32 [sum_j k_j, K] (at least one row), ``C_j^T X`` stacked.
      totals: float32 [K], ``1^T X``.
    """

    labels: jax.Array
    clusters: jax.Array
    totals: jax.Array


class TargetStatistics(typing.NamedTuple):
    """What the squared row norms of T need beyond a row's own factors (S only).

    Fields:
      label_gram: float32 [C, C], ``N_hat^T N_hat``.
      label_sums: float32 [C], ``N_hat^T 1``.
      cluster_labels: float32 [sum_j k_j, C] (at least one row), ``C_j^T N_hat`` stacked.
      cluster_sizes: float32 [sum_j k_j] (at least one entry), ``C_j^T 1`` stacked.
      cluster_pairs: float32 [sum_{i<j} k_i k_j] (at least one entry), the contingency
        tables ``C_i^T C_j`` (i < j), each flattened row-major.
    """

    label_gram: jax.Array
    label_sums: jax.Array
    cluster_labels: jax.Array
    cluster_sizes: jax.Array
    cluster_pairs: jax.Array


def cluster_offsets(ks) -> tuple[int, ...]:
    """Start of cluster set j in the stacked [sum(ks)] axis: (0, k0, k0 + k1, ...)."""
    return tuple(sum(ks[:j]) for j in range(len(ks)))


def pair_offsets(ks) -> dict[tuple[int, int], int]:
    """Start of the contingency table C_i^T C_j (i < j, [k_i, k_j] flattened) in the stacked
    axis of all pairs."""
    offsets, at = {}, 0
    for i in range(len(ks)):
        for j in range(i + 1, len(ks)):
            offsets[(i, j)] = at
            at += ks[i] * ks[j]
    return offsets


def _stacked(parts, trailing_shape):
    """The parts concatenated along axis 0, or one zero row when there are none."""
    if not parts:
        return jnp.zeros((1, *trailing_shape), jnp.float32)
    return jnp.concatenate(parts, axis=0)


def _masked_rows(sim: JointSimilarity, x):
    mask = row_mask(sim)
    return x if mask is None else jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)


def project_on_factors(sim: JointSimilarity, x_nk) -> FactorProjections:
    """``N_hat^T X``, ``C_j^T X`` (stacked), ``1^T X`` of ``x_nk`` [N, K] (padding rows
    masked out).  Cost O(N K (C + m)); the result is O((C + sum k) K)."""
    x = jnp.asarray(x_nk, jnp.float32)
    if x.ndim != 2 or x.shape[0] != sim.num_items:
        raise ValueError(f"x_nk must be [N, K] with N={sim.num_items}, got {x.shape}")
    x = _masked_rows(sim, x)
    labels = jnp.matmul(sim.label_factors.T, x, precision=_PRECISION)
    clusters = _stacked([jax.ops.segment_sum(x, sim.cluster_ids[j], num_segments=k)
                         for j, k in enumerate(sim.cluster_ks)], x.shape[1:])
    return FactorProjections(labels=labels, clusters=clusters, totals=jnp.sum(x, axis=0))


def target_statistics(sim: JointSimilarity) -> TargetStatistics:
    """The S-only statistics of :class:`TargetStatistics` (padding rows masked out).

    Cost O(N (C^2 + m C + m^2)) time, O(C^2 + sum_j k_j C + sum_{i<j} k_i k_j) memory.
    """
    factors = _masked_rows(sim, sim.label_factors.astype(jnp.float32))
    mask = row_mask(sim)
    ones = (jnp.ones((sim.num_items,), jnp.float32) if mask is None
            else mask.astype(jnp.float32))
    ks = tuple(sim.cluster_ks)
    ids = sim.cluster_ids
    num_classes = factors.shape[1]
    pairs = [jax.ops.segment_sum(ones, ids[i] * ks[j] + ids[j], num_segments=ks[i] * ks[j])
             for i in range(len(ks)) for j in range(i + 1, len(ks))]
    return TargetStatistics(
        label_gram=jnp.matmul(factors.T, factors, precision=_PRECISION),
        label_sums=jnp.sum(factors, axis=0),
        cluster_labels=_stacked([jax.ops.segment_sum(factors, ids[j], num_segments=k)
                                 for j, k in enumerate(ks)], (num_classes,)),
        cluster_sizes=_stacked([jax.ops.segment_sum(ones, ids[j], num_segments=k)
                                for j, k in enumerate(ks)], ()),
        cluster_pairs=_stacked(pairs, ()),
    )


def item_factors(sim: JointSimilarity, idx_b):
    """``(N_hat[idx] [B, C], cluster_ids[:, idx] [m, B])``: the factors of items ``idx_b``."""
    idx_b = jnp.asarray(idx_b)
    return (jnp.take(sim.label_factors, idx_b, axis=0).astype(jnp.float32),
            jnp.take(sim.cluster_ids, idx_b, axis=1))


def apply_target_rows(sim: JointSimilarity, projections: FactorProjections, idx_b, *,
                      floor: float = -1.0) -> jax.Array:
    """Rows ``(T X)[idx_b]`` [B, K] from ``projections = project_on_factors(sim, X)``.

    Equals ``apply_target(sim, X, floor=floor)[idx_b]``; cost O(B (C + m) K), no N.
    """
    factors_b, ids_b = item_factors(sim, idx_b)
    label_term = jnp.matmul(factors_b, projections.labels, precision=_PRECISION)
    cluster_term = jnp.zeros_like(label_term)
    for j, offset in enumerate(cluster_offsets(tuple(sim.cluster_ks))):
        cluster_term = cluster_term + sim.cluster_weights[j] * jnp.take(
            projections.clusters, ids_b[j] + offset, axis=0)
    similarity_term = (1.0 - sim.eta) * label_term + sim.eta * cluster_term
    return (1.0 - floor) * similarity_term + floor * projections.totals[None, :]


def target_row_squared_norms(sim: JointSimilarity, statistics: TargetStatistics, idx_b, *,
                             floor: float = -1.0) -> jax.Array:
    """``sum_n T[idx_b, n]^2`` [B] (over the real items n) from
    ``statistics = target_statistics(sim)``; cost O(B (C^2 + m C + m^2)), no N."""
    factors_b, ids_b = item_factors(sim, idx_b)
    eta, weights = sim.eta, sim.cluster_weights
    ks = tuple(sim.cluster_ks)
    offsets = cluster_offsets(ks)
    sizes = [jnp.take(statistics.cluster_sizes, ids_b[j] + offsets[j]) for j in range(len(ks))]
    s1 = (1.0 - eta) * jnp.matmul(factors_b, statistics.label_sums, precision=_PRECISION)
    label_quadratic = jnp.sum(
        jnp.matmul(factors_b, statistics.label_gram, precision=_PRECISION) * factors_b, axis=1)
    s2 = (1.0 - eta) ** 2 * label_quadratic
    same_cluster = jnp.zeros_like(s1)
    for j in range(len(ks)):
        s1 = s1 + eta * weights[j] * sizes[j]
        cluster_labels = jnp.take(statistics.cluster_labels, ids_b[j] + offsets[j], axis=0)
        s2 = s2 + 2.0 * eta * (1.0 - eta) * weights[j] * jnp.sum(factors_b * cluster_labels,
                                                                  axis=1)
        same_cluster = same_cluster + weights[j] ** 2 * sizes[j]
    for (i, j), offset in pair_offsets(ks).items():
        both = jnp.take(statistics.cluster_pairs, offset + ids_b[i] * ks[j] + ids_b[j])
        same_cluster = same_cluster + 2.0 * weights[i] * weights[j] * both
    s2 = s2 + eta**2 * same_cluster
    scale = 1.0 - floor
    return (floor**2 * jnp.float32(sim.num_valid) + 2.0 * floor * scale * s1
            + scale**2 * s2)
