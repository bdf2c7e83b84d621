"""JSPSH solver: sparse high-dimensional codes by discrete optimisation + linear hashing.

Follows the computation of the authors' MATLAB code (``train_JSPSH.m``,
``evaluate_JSPSH.m``, ``rsign.m``, ``NormalizeFea.m``, ``mAP.m``; github.com/hutt94/JSPSH),
restated here in JAX.  Notation (shapes):

    n training items, X [n, dX] image features, Y [n, dY] text features,
    L [n, C] labels, NL = rows of L scaled to unit length, r = bits,
    kdim = r / sparsity (K below), m label clusterings with k_1..k_m clusters,
    C_j [n, k_j] one-hot cluster memberships, w_j = k_j / sum_i k_i.

Label similarity (never formed; see :func:`similarity_product`)::

    S = NL NL^T + alpha sum_j w_j C_j C_j^T                                  [n, n]

Discrete code learning (:func:`learn_codes`), codes B in {0, 1}^{n x K} with exactly r
ones per row, and a continuous H [n, K] with H^T H = (n r / K) I::

    H_0 = sqrt(n r / K) orth(U[0, 1)^{n x K}),     B_0 = top_r(H_0)
    repeat `iterations` times:
        Z = omega B + r S B                                                   (H step)
        H = sqrt(n r / K) polar(Z)          (rank-deficient Z padded at random)
        B = top_r(omega H + r S H + theta n r / K)                           (B step)

Hash functions (:func:`learn_hash_functions`), on an anchor subset ``sel`` of a items,
Bs = B[sel] [a, K], M = (1 + mu) I + beta Bs^T Bs [K, K], starting from a uniform W_Y::

    W_X = (X^T X + lam I)^-1 (X^T B + mu X^T Y W_Y + beta r X^T NL NL[sel]^T Bs) M^-1
    W_Y = (Y^T Y + lam I)^-1 (Y^T B + mu Y^T X W_X + beta r Y^T NL NL[sel]^T Bs) M^-1

Retrieval (:func:`encode`): query codes ``top_r(normalize_rows(features) W)``, database
codes B, ranked by inner product (descending, ties by database index).

Every array function is pure and jitted; arrays follow the float dtype of their inputs
(float32 by default, float64 when the caller enabled x64 and passes float64).  Memory is
linear in n: the [n, K] H / B / Z are the largest arrays, no [n, n] matrix is built.

Where this differs from the authors' code (all documented at the function):

* H step rank (:func:`polar_with_padding`): directions kept = row space of B (exact:
  ``null(Z) = null(B)``), not "eigenvalue of ``Z'*Z`` > 1e-6", which on their scales keeps
  round-off directions, hundreds of them at 64 bits (``train_JSPSH.m`` lines 34-38;
  measured in docs/benchmarks.md, JSPSH versus Octave).  Their rule and arithmetic
  are available as ``JSPSHParams(rank_rule="authors")`` (:func:`authors_polar`), for
  comparisons; the default is ``"row_space"``.
* H step padding: ``polar(G V_drop) V_drop^T`` (same distribution as their
  ``orth(randn) * orth(VV(:, ~index))'``, but independent of the null-space basis, so it
  is reproducible from a shared G).
* B step: the constant ``theta n r / K`` is not added (it cannot change a top-r).
* The polar factor goes through a QR of Z (their ``svd(Z'*Z)`` squares Z's condition
  number, ~1e7 at 64 bits: hopeless in float32, and in float64 off by ~eps cond^2 in the
  weak directions); the rank of B comes from a float64 ``eigh`` of its exact Gram
  (:func:`code_range`).
* Hash functions: the rounds use precomputed inverses (:func:`learn_hash_functions`).
* Validation: K >= n and anchors > n raise (their code fails later or silently).
* Random streams are ``jax.random``'s; everything random can be passed in
  (:class:`JSPSHInit`) to reproduce a run elsewhere.  With the same inputs and float64
  the codes equal those of the authors' loop under Octave (benchmarks/jspsh_vs_octave.py).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fjsph_jax.similarity import ClusterSizes, kmeans_cosine

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_FLOOR = 1e-14


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def _float_dtype(*arrays):
    """The common float dtype of ``arrays`` (at least float32, float64 if x64 allows)."""
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays])


# --------------------------------------------------------------------------- params


class JSPSHParams(NamedTuple):
    """Hyper-parameters (defaults: the authors' MIRFlickr settings, ``main_demo.m``).

    Fields:
      mu: weight of the cross-modal term ``||X W_X - Y W_Y||`` in the hash functions.
      alpha: weight of the cluster-wise similarity in S.
      omega: weight of the code term ``omega B`` / ``omega H``.
      beta: weight of the anchor similarity term in the hash functions.
      theta: weight of the balance term ``theta n r / K`` added to every entry of the
        B-step scores.  It adds the same constant to every entry, so it cannot change
        which r entries are the largest; it is kept as a documented parameter but not
        added (in float32 adding ~1e4 would only destroy the scores' precision).
      lam: ridge ``lambda`` of the hash functions.
      iterations: rounds of the H/B alternation and of the W_X/W_Y alternation.
      sparsity: r / K (0.05 gives K = 20 r).
      anchors: size of the anchor subset (1000; the authors use 5000 for NUS-WIDE).
      cluster_ks: k-means granularities of the cluster-wise similarity.
      rank_rtol: the H step keeps the directions of the row space of B, the singular
        values of B above ``rank_rtol * largest`` (None: a round-off level, see
        :func:`code_range`); the others are padded at random.  The authors' rule
        (eigenvalues of ``Z^T Z`` above an absolute 1e-6) means the same in exact
        arithmetic but sits below the round-off of ``Z^T Z``; see
        :func:`polar_with_padding`.
      polar: how the H step computes the polar factor: ``"gram"`` (eigen-decomposition
        of ``Z^T Z`` in the row-space basis, like the authors' ``svd(Z'*Z)``; squares the
        condition number of Z, ~1e7 at 64 bits), ``"qr"`` (Householder QR of Z then SVD
        of the K x K factor: backward stable, ~2x the flops) or ``"auto"`` = ``"qr"``.
        Even float64 needs qr on real features: on the demo's hand-crafted features
        (n = 4000, 64 bits) gram's error in the weak directions of Z (~eps cond(Z)^2)
        flipped 2.2% of the code ones against an SVD of Z V_keep from the same inputs,
        qr flipped none (docs/benchmarks.md, JSPSH versus Octave).
      kmeans_iters: maximum Lloyd iterations of the cosine k-means (MATLAB: 100).
      rank_rule: which directions of Z the H step keeps.  ``"row_space"`` (default): the
        row space of B (:func:`code_range`, with ``rank_rtol`` and ``polar``), every null
        direction padded with a unit-norm random direction.  ``"authors"``: the authors'
        rule and arithmetic exactly (:func:`authors_polar`): ``svd(Z'*Z)``, keep the
        eigenvalues above an absolute 1e-6, ``U = Z V Lmd^-1/2``, pad the rest; Z and the
        decomposition in float64 where x64 is enabled (:func:`fit` enables it), whatever
        the working dtype; ``rank_rtol`` and ``polar`` are then unused.  For comparisons
        with their code (benchmarks/jspsh_vs_octave.py ``--rank_rule=authors``); see
        docs/benchmarks.md, JSPSH versus Octave, for why it is not the default.
    """

    mu: float = 3.0
    alpha: float = 1.0
    omega: float = 10.0
    beta: float = 0.01
    theta: float = 10.0
    lam: float = 1e-3
    iterations: int = 5
    sparsity: float = 0.05
    anchors: int = 1000
    cluster_ks: tuple = (100, 200, 500)
    rank_rtol: float | None = None
    polar: str = "auto"
    kmeans_iters: int = 100
    rank_rule: str = "row_space"


class LabelClusters(NamedTuple):
    """Cluster memberships of the training items at m granularities (a pytree).

    Fields:
      ids: int32 [m, n], the cluster of every item in each clustering (C_j as ids).
      ks: static ``(k_1, ..., k_m)`` (:class:`fjsph_jax.similarity.ClusterSizes`); the
        weights are ``w_j = k_j / sum(ks)`` as in the authors' code.
    """

    ids: jax.Array
    ks: ClusterSizes = ClusterSizes()

    @property
    def weights(self) -> tuple[float, ...]:
        total = float(sum(self.ks))
        return tuple(k / total for k in self.ks)


class JSPSHInit(NamedTuple):
    """Explicit values for the random parts of :func:`fit` (None: drawn from the key).

    Fields:
      H0: [n, K] initial H (the authors: ``sqrt(n r / K) * orth(rand(n, K))``).
      anchor_ids: int [anchors] indices of the anchor subset (``randperm(n, anchors)``).
      text_W0: [dY, K] initial text projection (``rand(dY, K)``).
      clusters: :class:`LabelClusters` (the authors: cosine k-means of the label rows).
      pad_noise: Gaussian [iterations, n, K] of the H-step padding (the authors:
        ``randn(n, K - rank)`` each iteration); see :func:`polar_with_padding`.
    """

    H0: jax.Array | None = None
    anchor_ids: jax.Array | None = None
    text_W0: jax.Array | None = None
    clusters: LabelClusters | None = None
    pad_noise: jax.Array | None = None


class JSPSHState(NamedTuple):
    """A trained model.

    Fields:
      B: [n, K] {0, 1} training (database) codes, r ones per row.
      image_W: [dX, K] image projection; text_W: [dY, K] text projection.
      h_ranks: int32 [iterations], how many directions of Z each H step kept (K means
        full rank, fewer means random padding was used).
    """

    B: jax.Array
    image_W: jax.Array
    text_W: jax.Array
    h_ranks: jax.Array


def code_dim(bits: int, sparsity: float) -> int:
    """K = bits / sparsity, checked to be an integer > bits (sparsity in (0, 1))."""
    if not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity!r}")
    value = bits / sparsity
    kdim = int(round(value))
    if abs(value - kdim) > 1e-6 * value:
        raise ValueError(f"kdim = bits / sparsity = {bits} / {sparsity} = {value} is not "
                         "an integer; choose a sparsity that divides bits")
    return kdim


# --------------------------------------------------------------------------- pieces


@jax.jit
def normalize_rows(x):
    """``NormalizeFea(x, 1)``: ``x_i / sqrt(max(1e-14, ||x_i||^2))``, [n, d] -> [n, d].

    Integer / bool inputs become float32 (float64 under x64 only for float64 inputs).
    """
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    squared = jnp.sum(x * x, axis=1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared, _NORM_FLOOR))


@functools.partial(jax.jit, static_argnames=("r",))
def top_r_codes(scores, r: int):
    """``rsign``: per row, 1 at the r largest scores, 0 elsewhere.

    Args:
      scores: [n, D] float scores.
      r: ones per row, 1 <= r <= D.
    Returns:
      [n, D] in the dtype of ``scores``, exactly r ones per row.  Ties go to the lower
      column index, like the first r of a stable descending sort (MATLAB's ``sort``).
    """
    n, width = scores.shape
    if not 1 <= r <= width:
        raise ValueError(f"r must be in [1, {width}], got {r}")
    _, columns = jax.lax.top_k(scores, r)
    rows = jnp.arange(n)[:, None]
    return jnp.zeros_like(scores).at[rows, columns].set(1)


def similarity_product(x, label_factors, cluster_ids, cluster_ks: Sequence[int], alpha):
    """``S x = NL (NL^T x) + alpha sum_j w_j C_j (C_j^T x)`` without forming S.

    ``C_j^T x`` is a ``segment_sum`` [k_j, K]; ``C_j (.)`` a gather.  Traceable (call it
    under jit: ``cluster_ks`` must be static).

    Args:
      x: [n, K]; label_factors: NL [n, C]; cluster_ids: int [m, n];
      cluster_ks: the m cluster counts (weights w_j = k_j / sum k); alpha: scalar.
    Returns:
      [n, K] in the dtype of x.  Cost O(n K (C + m)), memory O(n K + sum_j k_j K).
    """
    out = _mm(label_factors, _mm(label_factors.T, x))
    if cluster_ks:
        total = float(sum(cluster_ks))
        clustered = jnp.zeros_like(x)
        for j, k in enumerate(cluster_ks):
            ids = cluster_ids[j]
            sums = jax.ops.segment_sum(x, ids, num_segments=int(k))
            clustered = clustered + (k / total) * sums[ids]
        out = out + alpha * clustered
    return out


def _orth(a):
    """MATLAB ``orth`` of a full-rank matrix: the left singular vectors, [n, K]."""
    u, _, _ = jnp.linalg.svd(a, full_matrices=False)
    return u


@functools.partial(jax.jit, static_argnames=("num_items", "kdim", "bits", "dtype"))
def initial_h(key, *, num_items: int, kdim: int, bits: int, dtype=jnp.float32):
    """``H_0 = sqrt(n r / K) orth(U[0,1)^{n x K})`` (``orth``: left singular vectors)."""
    uniform = jax.random.uniform(key, (num_items, kdim), dtype)
    return math.sqrt(num_items * bits / kdim) * _orth(uniform)


def _resolve_polar(polar: str, dtype) -> str:
    del dtype  # both dtypes: see JSPSHParams.polar
    if polar == "auto":
        return "qr"
    if polar not in ("gram", "qr"):
        raise ValueError(f"polar must be 'auto', 'gram' or 'qr', got {polar!r}")
    return polar


def _symmetric_power(g, power):
    """``g^power`` of a symmetric positive definite [K, K] (eigenvalues floored at tiny)."""
    g = 0.5 * (g + g.T)
    lam, e = jnp.linalg.eigh(g)
    lam = jnp.maximum(lam, jnp.finfo(g.dtype).tiny)
    return _mm(e * (lam**power)[None, :], e.T)


def _x64_enabled() -> bool:
    """Whether float64 arrays can be made here (x64 enabled where this is traced)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.dtype(jnp.float64)


def code_range(codes, rank_rtol: float | None = None, polar: str = "auto"):
    """Row space / null space of the codes B [n, K] from their singular values s.

    B is {0, 1}, so its rank is well defined and well separated from round-off: on
    learned codes the smallest nonzero singular value is ~1e-3 s_max while the round-off
    of exact dependencies (empty or repeated code columns) is ~1e-7 s_max in float32.
    ``polar="gram"``: ``eigh(B^T B)`` (exact integer counts), keep ``lam > K eps lam_max``
    (adequate in float64 only: in float32 the round-off of eigh is ~eps lam_max, the
    size of the smallest nonzero lam at 64 bits).  ``"qr"``: ``B = Q R``, ``svd(R)``, keep
    ``s > sqrt(K) eps s_max``.  An explicit ``rank_rtol`` is compared with ``s / s_max``
    in both cases.

    Where x64 is enabled (:func:`fit` enables it around the code learning) the float32
    path uses neither: ``B^T B`` is formed in the working dtype (counts <= n < 2^24, so
    exact in float32), cast to float64 and eigen-decomposed there, keeping
    ``lam > K eps64 lam_max``: the round-off (~1e-13 lam_max) is far below the smallest
    nonzero eigenvalue (~1e-6 lam_max at 64 bits), and one float64 [K, K] ``eigh``
    costs less than the QR of the [n, K] B plus the SVD of its R (profiled at n = 4000,
    K = 1280: 0.36 vs 0.89 CPU s).  V is returned in the working dtype.

    Returns:
      ``(V [K, K] orthonormal, keep bool [K])``: ``V[:, keep]`` spans the row space of B
      and ``V[:, ~keep]`` its null space; columns in descending order of the singular
      value, so the kept ones come first.  Traceable.
    """
    kdim = codes.shape[1]
    method = _resolve_polar(polar, codes.dtype)
    if method == "gram" or _x64_enabled():
        wide = jnp.float64 if _x64_enabled() else codes.dtype
        lam, v = jnp.linalg.eigh(_mm(codes.T, codes).astype(wide))
        lam, v = lam[::-1], v[:, ::-1]      # descending, like svd: kept directions first
        eps = float(jnp.finfo(wide).eps)
        rtol = kdim * eps if rank_rtol is None else rank_rtol**2
        return v.astype(codes.dtype), lam > rtol * jnp.max(lam)
    eps = float(jnp.finfo(codes.dtype).eps)
    _, r_factor = jnp.linalg.qr(codes)
    _, sv, vt = jnp.linalg.svd(r_factor)
    rtol = math.sqrt(kdim) * eps if rank_rtol is None else rank_rtol
    return vt.T, sv > rtol * sv[0]


def polar_with_padding(z, codes, pad_noise, *, rank_rtol: float | None = None,
                       polar: str = "auto"):
    """The orthonormal factor of the H step, padded at random where Z is rank-deficient.

    The authors compute ``[~, Lmd, VV] = svd(Z'*Z)``, keep the directions with
    eigenvalue > 1e-6 (V), and use ``[U, U_] [V, V_]^T`` with ``U = Z V Lmd^-1/2`` and
    ``U_ = orth(randn(n, K - rank))``, ``V_ = orth(VV(:, ~index))``.  Here:

    * the kept directions are the row space of B (:func:`code_range`): Z = (omega I +
      r S) B with omega I + r S positive definite, so ``null(Z) = null(B)`` exactly.
      (Their absolute 1e-6 lies below the round-off of ``svd(Z'*Z)``, whose largest
      eigenvalue is ~1e12..1e14: on exactly rank-deficient Z their code keeps
      round-off directions, whose U columns have norm far below 1, and pads only the
      rest; at 64 bits on the demo features their rule kept 1208, 814, 671, 648 of 1280
      directions in rounds 2-5 (the final B had rank 302), and with LAPACK's gesdd
      instead of gesvd for the same SVD all 1280 in every round.  We pad every null
      direction, as their code intends.  ``rank_rule="authors"`` runs their rule:
      :func:`authors_polar`.)
    * ``U = polar(Z V_keep)`` [n, rank]: ``Z V_keep (V_keep^T Z^T Z V_keep)^-1/2``
      (``polar="gram"``, one [K, K] Gram of Z) or ``Q polar(R)`` from the QR of
      ``Z V_keep`` (``"qr"``: error ~eps relative to the largest singular value instead
      of its square; Z's condition number reaches ~1e7 at 64 bits, so float32 needs
      it; ``"auto"`` = qr).
    * the padding is ``polar(G V_drop) V_drop^T`` for a Gaussian G [n, K]
      (``pad_noise``): ``polar(G V_drop)`` is a Haar-random orthonormal [n, K - rank]
      like ``orth(randn(n, K - rank))``, and writing it this way makes the result
      independent of the basis chosen for the null space (any V_drop R gives the same
      matrix), so it can be reproduced elsewhere from the same G.  As in their code the
      padding columns are NOT orthogonalised against U: ``P^T P = I`` only when Z has
      full rank, and then ``P = Z (Z^T Z)^-1/2`` is the polar factor of Z.

    Fixed shapes (jit-able): kept / dropped directions are masks over the K basis
    vectors, the masked blocks are completed with identities, and the padding runs under
    a ``lax.cond`` only when a direction was dropped.  In the qr path the QR / SVD of the
    kept directions and the padding's eigh run on blocks of the smallest of the widths
    K/4, K/2, 3K/4, K holding them (:func:`_block_widths`, a ``lax.switch``): the rank of
    B falls well below K after the first rounds (64 bits, demo features: 1279, 795, 435,
    360, 327 of 1280), and the five rounds took 5.3 instead of 9.3 CPU s (n = 4000,
    2-core CPU).  O(n K) memory.

    Args:
      z: [n, K] with n > K.  codes: B [n, K] with ``Z = (omega I + r S) B``.
      pad_noise: Gaussian [n, K] (only read when B is rank-deficient).
    Returns:
      ``(P [n, K], rank int32)``.  Traceable; call under jit.
    """
    dtype = z.dtype
    kdim = z.shape[1]
    method = _resolve_polar(polar, dtype)
    v, keep = code_range(codes, rank_rtol, method)
    keep_f = keep.astype(dtype)
    both = keep[:, None] & keep[None, :]
    eye = jnp.eye(kdim, dtype=dtype)
    rank = jnp.sum(keep).astype(jnp.int32)
    widths = _block_widths(kdim)
    if method == "gram":
        gram = jnp.where(both, _mm(v.T, _mm(_mm(z.T, z), v)), eye)   # blockdiag(G_kk, I)
        coeff = _mm(v, _symmetric_power(gram, -0.5) * keep_f[None, :])
        # P = Z coeff V^T + padding; coeff V^T is [K, K], so one [n, K] product.
        factor = _mm(z, _mm(coeff, v.T))
    else:
        # Kept directions are the first `rank` columns of V (descending singular
        # values): the QR / SVD run on the smallest block of widths >= rank.
        factor = jax.lax.switch(_width_index(rank, widths),
                                [functools.partial(_kept_polar_qr, width=w) for w in widths],
                                z, v, keep)
    return _pad_dropped(factor, pad_noise.astype(dtype), v, keep, widths), rank


def _pad_dropped(factor, pad_noise, v, keep, widths):
    """``factor + polar(G V_drop) V_drop^T`` unless every direction is kept; the dropped
    directions are the last ``K - rank`` columns of V (descending singular values), the
    padding runs on the smallest block of ``widths`` that holds them."""
    rank = jnp.sum(keep).astype(jnp.int32)

    def padded(factor):
        return factor + jax.lax.switch(
            _width_index(v.shape[1] - rank, widths),
            [functools.partial(_padding, width=w) for w in widths],
            pad_noise, v, keep)

    return jax.lax.cond(jnp.all(keep), lambda a: a, padded, factor)


RANK_RULES = ("row_space", "authors")
AUTHORS_EIG_FLOOR = 1e-6      # train_JSPSH.m line 35: index = (diag(Lmd) > 1e-6)


def _check_rank_rule(rank_rule: str) -> str:
    if rank_rule not in RANK_RULES:
        raise ValueError(f"rank_rule must be one of {RANK_RULES}, got {rank_rule!r}")
    return rank_rule


def authors_polar(z, pad_noise):
    """The H step's factor by the authors' rule and arithmetic (``rank_rule="authors"``).

    ``train_JSPSH.m`` lines 34-39::

        [~, Lmd, VV] = svd(Z'*Z);  index = diag(Lmd) > 1e-6;
        V = VV(:, index);  U = Z * (V / sqrt(Lmd(index, index)));
        H = sqrt(n r / K) [U, orth(randn(n, K - rank))] [V, orth(VV(:, ~index))]'

    Here: the same SVD of the Gram (LAPACK gesvd, the driver of Octave's ``svd``;
    singular values descending, so the kept directions are the leading columns), the same
    absolute threshold and ``U = Z V Lmd^-1/2`` (NOT re-normalised: a kept direction whose
    eigenvalue is round-off gives a column of U far from unit norm), and the padding
    ``polar(G V_drop) V_drop^T`` of :func:`polar_with_padding` for their
    ``orth(randn) * orth(VV(:, ~index))'`` (same distribution; reproducible from G).

    The rule depends on the scale of Z (an absolute threshold) and on round-off: the
    Gram's largest eigenvalue is ~1e12 and more at 64 bits, so its round-off (~eps
    lam_max) exceeds 1e-6 and exactly null directions of Z can pass (which ones is
    round-off: on the demo features at 64 bits gesdd instead of gesvd passed all of them,
    docs/benchmarks.md); float32's round-off is ~5e8 times larger, so call this on float64
    Z (:func:`h_step` does where x64 is enabled).

    Args:
      z: [n, K].  pad_noise: Gaussian [n, K].
    Returns:
      ``(P [n, K], rank int32)``, P before the ``sqrt(n r / K)`` scale, in z's dtype.
    """
    dtype = z.dtype
    kdim = z.shape[1]
    _, lmd, vt = jax.lax.linalg.svd(_mm(z.T, z), full_matrices=False,
                                     algorithm=jax.lax.linalg.SvdAlgorithm.QR)
    v = vt.T
    keep = lmd > AUTHORS_EIG_FLOOR
    rank = jnp.sum(keep).astype(jnp.int32)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lmd, 1.0)), 0.0).astype(dtype)
    factor = _mm(z, _mm(v * inv_sqrt[None, :], v.T))
    return _pad_dropped(factor, pad_noise.astype(dtype), v, keep, _block_widths(kdim)), rank


def _block_widths(kdim: int) -> tuple[int, ...]:
    """Static column counts of the rank-adaptive blocks of the H step: K/4, K/2, 3K/4, K
    (rounded up).  Each is compiled once (``lax.switch``); a step pays for the smallest one
    holding its directions: at 64 bits on the demo's features the ranks of B fall from
    1279 to ~435 by the third round and ~330 by the fifth, where the QR and SVD then run
    on 640 or 960 columns instead of 1280 (and the padding on the dropped ones)."""
    return tuple(sorted({-(-kdim * q // 4) for q in (1, 2, 3, 4)}))


def _width_index(count, widths):
    """Index of the smallest of ``widths`` >= ``count`` (traced int)."""
    return jnp.sum(count > jnp.asarray(widths, jnp.int32)).astype(jnp.int32)


def _kept_polar_qr(z, v, keep, *, width: int):
    """``polar(Z V_keep) V_keep^T`` [n, K] from the first ``width`` columns of V (the kept
    ones and some dropped ones, masked): ``Z V_w = Q R`` [n, w], ``R_kk = U S W^T``
    (dropped rows / columns of R replaced by the identity), result
    ``Q (U W^T masked) V_w^T``."""
    dtype = z.dtype
    vk, mask = v[:, :width], keep[:width]
    mask_f = mask.astype(dtype)
    q, r_factor = jnp.linalg.qr(_mm(z, vk) * mask_f[None, :])      # R = blockdiag(R_kk, 0)
    both = mask[:, None] & mask[None, :]
    u_r, _, vt_r = jnp.linalg.svd(jnp.where(both, r_factor, jnp.eye(width, dtype=dtype)))
    return _mm(q, _mm(_mm(u_r, vt_r) * mask_f[None, :], vk.T))


def _padding(noise, v, keep, *, width: int):
    """``polar(G V_drop) V_drop^T`` [n, K] from the last ``width`` columns of V (masked to
    the dropped ones): ``G V_w (V_w^T G^T G V_w)^-1/2 V_w^T`` (a well-conditioned Gram:
    G is Gaussian)."""
    dtype = noise.dtype
    kdim = v.shape[1]
    vd, mask = v[:, kdim - width:], ~keep[kdim - width:]
    projected = _mm(noise, vd)                                       # [n, w]
    both = mask[:, None] & mask[None, :]
    gram = jnp.where(both, _mm(projected.T, projected), jnp.eye(width, dtype=dtype))
    coeff = _symmetric_power(gram, -0.5) * mask.astype(dtype)[None, :]
    return _mm(projected, _mm(coeff, vd.T))


@functools.partial(jax.jit, static_argnames=("bits", "cluster_ks", "params"))
def h_step(codes, label_factors, cluster_ids, pad_noise, *, bits: int,
           cluster_ks: tuple, params: JSPSHParams):
    """H step: ``H = sqrt(n r / K) polar(Z)``, ``Z = omega B + r S B``.

    Args:
      codes: B [n, K] {0, 1}.  label_factors: NL [n, C].  cluster_ids: int [m, n].
      pad_noise: Gaussian [n, K] for the random padding (read only when B, hence Z, is
        rank-deficient).  bits: r.  cluster_ks: static (k_1..k_m).
      params: :class:`JSPSHParams`.
    Returns:
      ``(H [n, K], rank)``, ``rank`` = number of directions of Z kept (K: full rank, and
      then ``H^T H = (n r / K) I``).  See :func:`polar_with_padding`, or
      :func:`authors_polar` for ``params.rank_rule == "authors"`` (Z and the factor in
      float64 where x64 is enabled, H returned in the dtype of ``codes``).
    """
    n, kdim = codes.shape
    authors = _check_rank_rule(params.rank_rule) == "authors"
    # The authors' rule in their (float64) arithmetic, whatever the working dtype.
    wide = jnp.float64 if authors and _x64_enabled() else codes.dtype
    z = params.omega * codes.astype(wide) + bits * similarity_product(
        codes.astype(wide), label_factors.astype(wide), cluster_ids, cluster_ks, params.alpha)
    if authors:
        factor, rank = authors_polar(z, pad_noise.astype(wide))
    else:
        factor, rank = polar_with_padding(z, codes, pad_noise, rank_rtol=params.rank_rtol,
                                          polar=params.polar)
    return (math.sqrt(n * bits / kdim) * factor).astype(codes.dtype), rank


@functools.partial(jax.jit, static_argnames=("bits", "cluster_ks", "params"))
def b_step(h, label_factors, cluster_ids, *, bits: int, cluster_ks: tuple,
           params: JSPSHParams):
    """B step: ``B = top_r(omega H + r S H)`` [n, K] {0, 1}, r ones per row.

    The authors add ``theta n r / K`` to every entry; a constant cannot change the top r
    of a row, so it is omitted (see :class:`JSPSHParams`).
    """
    scores = params.omega * h + bits * similarity_product(
        h, label_factors, cluster_ids, cluster_ks, params.alpha)
    return top_r_codes(scores, bits)


@functools.partial(jax.jit, static_argnames=("bits", "cluster_ks", "params"))
def learn_codes(label_factors, cluster_ids, h0, key, *, bits: int, cluster_ks: tuple,
                params: JSPSHParams, pad_noise=None):
    """Discrete code learning: ``B_0 = top_r(H_0)``, then ``iterations`` H / B steps.

    Args:
      label_factors: NL [n, C] (unit rows).  cluster_ids: int32 [m, n].
      h0: initial H [n, K] (see :func:`initial_h`); its dtype is the working dtype.
      key: key of the H-step padding noise (iteration t: ``normal(fold_in(key, t))``).
      bits: r.  cluster_ks: static (k_1..k_m).  params: :class:`JSPSHParams`.
      pad_noise: optional Gaussian [iterations, n, K] used instead of the key.
    Returns:
      ``(B [n, K] {0, 1}, H [n, K], ranks int32 [iterations])``.
    """
    dtype = h0.dtype
    label_factors = label_factors.astype(dtype)
    codes = top_r_codes(h0, bits)

    def body(t, carry):
        codes, _, ranks = carry
        if pad_noise is None:
            noise = jax.random.normal(jax.random.fold_in(key, t), codes.shape, dtype)
        else:
            noise = pad_noise[t].astype(dtype)
        h, rank = h_step(codes, label_factors, cluster_ids, noise, bits=bits,
                         cluster_ks=cluster_ks, params=params)
        codes = b_step(h, label_factors, cluster_ids, bits=bits, cluster_ks=cluster_ks,
                       params=params)
        return codes, h, ranks.at[t].set(rank)

    ranks0 = jnp.full((params.iterations,), codes.shape[1], jnp.int32)
    return jax.lax.fori_loop(0, params.iterations, body, (codes, h0, ranks0))


@functools.partial(jax.jit, static_argnames=("bits", "params"))
def learn_hash_functions(image, text, label_factors, codes, anchor_ids, text_w0, *,
                         bits: int, params: JSPSHParams):
    """Alternating closed-form linear hash functions (``iterations`` rounds).

    With A_X = X^T X + lam I [dX, dX], M = (1 + mu) I + beta Bs^T Bs [K, K],
    P = NL[sel]^T Bs [C, K]::

        W_X = A_X^-1 (X^T B + mu X^T Y W_Y + beta r (X^T NL) P) M^-1            [dX, K]
        W_Y = A_Y^-1 (Y^T B + mu Y^T X W_X + beta r (Y^T NL) P) M^-1            [dY, K]

    (W_X uses the previous W_Y, W_Y the new W_X; the first W_Y is ``text_w0``.)  Only W
    changes between rounds, so everything else is computed once: with the inverses
    A_X^-1, A_Y^-1, M^-1 (Cholesky), the constant parts ``P_X = A_X^-1 (X^T B + beta r
    (X^T NL) P) M^-1`` [dX, K] and the couplings ``Q_X = mu A_X^-1 X^T Y`` [dX, dY]
    (P_Y, Q_Y likewise) a round is ``W_X = P_X + Q_X W_Y M^-1``,
    ``W_Y = P_Y + Q_Y W_X M^-1``: four matrix products, no solve (the authors' loop solves
    with A and M in every round).  As in the authors' code, ``lam`` multiplies W from the
    left only: W = A^-1 R M^-1 is the exact minimiser only for lam = 0 (the gradient has
    ``lam W``, not ``lam W M``).

    Args:
      image: X [n, dX], text: Y [n, dY] (unit rows); label_factors: NL [n, C];
      codes: B [n, K]; anchor_ids: int [a]; text_w0: [dY, K]; bits: r.
    Returns:
      ``(W_X [dX, K], W_Y [dY, K])`` in the working dtype (that of ``image``).
    """
    dtype = _float_dtype(image, text)
    x, y = image.astype(dtype), text.astype(dtype)
    nl, b = label_factors.astype(dtype), codes.astype(dtype)
    kdim = b.shape[1]
    anchor_codes = b[anchor_ids]
    anchor_labels = nl[anchor_ids]
    m = ((1.0 + params.mu) * jnp.eye(kdim, dtype=dtype)
         + params.beta * _mm(anchor_codes.T, anchor_codes))
    projected = params.beta * bits * _mm(anchor_labels.T, anchor_codes)       # [C, K]
    xty = _mm(x.T, y)

    def inverse(a):                                                   # SPD a^-1
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a),
                                          jnp.eye(a.shape[0], dtype=dtype))

    def ridge(f):
        return _mm(f.T, f) + params.lam * jnp.eye(f.shape[1], dtype=dtype)

    m_inv, a_x_inv, a_y_inv = inverse(m), inverse(ridge(x)), inverse(ridge(y))
    const_x = _mm(_mm(a_x_inv, _mm(x.T, b) + _mm(_mm(x.T, nl), projected)), m_inv)
    const_y = _mm(_mm(a_y_inv, _mm(y.T, b) + _mm(_mm(y.T, nl), projected)), m_inv)
    couple_x = params.mu * _mm(a_x_inv, xty)                          # [dX, dY]
    couple_y = params.mu * _mm(a_y_inv, xty.T)                        # [dY, dX]

    def body(_, carry):
        _, w_y = carry
        w_x = const_x + _mm(_mm(couple_x, w_y), m_inv)
        w_y = const_y + _mm(_mm(couple_y, w_x), m_inv)
        return w_x, w_y

    w_x0 = jnp.zeros((x.shape[1], kdim), dtype)
    return jax.lax.fori_loop(0, params.iterations, body, (w_x0, text_w0.astype(dtype)))


@functools.partial(jax.jit, static_argnames=("bits", "normalize"))
def encode(features, projection, bits: int, normalize: bool = True):
    """Query codes ``top_r(normalize_rows(features) W)`` [q, K] {0, 1}, r ones per row.

    Args:
      features: [q, d] raw features (normalised here unless ``normalize=False``).
      projection: W [d, K].  bits: r.
    """
    x = normalize_rows(features) if normalize else features
    return top_r_codes(_mm(x.astype(projection.dtype), projection), bits)


# --------------------------------------------------------------------------- clusters


def cap_cluster_ks(labels, cluster_ks: Sequence[int]) -> tuple[tuple[int, ...], str | None]:
    """Cap every k at the number of distinct label rows (host-side helper).

    k-means++ cannot seed more clusters than there are distinct points (Octave's kmeans
    then fails; MATLAB leaves clusters empty), so each k becomes ``min(k, distinct)``.

    Returns:
      ``(capped ks, message)``; ``message`` is None when nothing was capped, otherwise
      a sentence naming the original and capped ks and the number of distinct rows.
    """
    labels = np.asarray(labels)
    distinct = int(np.unique(labels, axis=0).shape[0])
    ks = tuple(int(k) for k in cluster_ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"cluster_ks must be positive ints, got {ks}")
    capped = tuple(min(k, distinct) for k in ks)
    if capped == ks:
        return ks, None
    return capped, (f"cluster_ks {ks} capped to {capped}: the labels have only "
                    f"{distinct} distinct rows")


def cluster_labels(labels, cluster_ks: Sequence[int], key, *,
                   num_iters: int = 100) -> LabelClusters:
    """Cosine k-means of the label rows at every k (capped, with a warning; see
    :func:`cap_cluster_ks`); clustering j uses ``fold_in(key, j)``.

    This is the authors' ``kmeans(LTrain, k, 'Distance', 'cosine')`` on the raw label
    rows (see :func:`fjsph_jax.similarity.kmeans_cosine`).  Rows without any label have
    no direction and are rejected.
    """
    labels_np = np.asarray(labels)
    if labels_np.ndim != 2:
        raise ValueError(f"labels must be [n, C], got shape {labels_np.shape}")
    if np.any(np.all(labels_np == 0, axis=1)):
        raise ValueError("cosine k-means needs every training item to have a label: "
                         f"{int(np.sum(np.all(labels_np == 0, axis=1)))} label rows are "
                         "all zero; drop those items")
    ks, message = cap_cluster_ks(labels_np, cluster_ks)
    if message:
        warnings.warn(message, stacklevel=2)
    # float32 and 32-bit indices whatever the caller's x64 setting: label rows need no
    # float64, and the float32 and float64 fits then share their clusters.
    with jax.enable_x64(False):
        points = jnp.asarray(labels_np, jnp.float32)
        ids = [kmeans_cosine(points, k, jax.random.fold_in(key, j), num_iters=num_iters)[0]
               for j, k in enumerate(ks)]
        ids = jnp.stack(ids) if ids else jnp.zeros((0, labels_np.shape[0]), jnp.int32)
    return LabelClusters(ids=ids, ks=ClusterSizes(ks))


# --------------------------------------------------------------------------- fit


def fit(image_features, text_features, labels, *, bits: int,
        params: JSPSHParams = JSPSHParams(), key, init: JSPSHInit | None = None
        ) -> JSPSHState:
    """Train JSPSH: normalise, cluster the labels, learn B, then W_X and W_Y.

    The working dtype is that of the features (float32; float64 needs x64 enabled and
    float64 inputs).  Random parts, from ``key`` unless given in ``init``:
    the label clusterings, H_0, the H-step padding (always from the key), the anchor
    subset and the initial W_Y.

    Args:
      image_features: X [n, dX] (raw; rows are normalised here).
      text_features: Y [n, dY] (raw).
      labels: L [n, C] multi-hot.
      bits: r, ones per code.  K = r / params.sparsity must be < n.
      params: :class:`JSPSHParams`.  key: a ``jax.random`` key.
      init: :class:`JSPSHInit` with explicit random parts (None fields: from the key).
    Returns:
      :class:`JSPSHState`.
    Raises:
      ValueError: K >= n, anchors > n, mismatched shapes, label rows without a label
        (when clustering here).
    """
    init = init or JSPSHInit()
    _check_rank_rule(params.rank_rule)
    x = jnp.asarray(image_features)
    y = jnp.asarray(text_features)
    if x.ndim != 2 or y.ndim != 2 or np.ndim(labels) != 2:
        raise ValueError("image_features, text_features and labels must be 2-D")
    n = x.shape[0]
    if y.shape[0] != n or np.shape(labels)[0] != n:
        raise ValueError(f"row counts differ: image {x.shape[0]}, text {y.shape[0]}, "
                         f"labels {np.shape(labels)[0]}")
    kdim = code_dim(bits, params.sparsity)
    if kdim >= n:
        raise ValueError(
            f"kdim = bits / sparsity = {bits} / {params.sparsity} = {kdim} must be < the "
            f"number of training rows n = {n} (the orthogonal H [n, kdim] needs n > "
            f"kdim); use more training rows, fewer bits, or a larger sparsity "
            f"(>= {bits / (n - 1):.4g})")
    if init.anchor_ids is None and not 1 <= params.anchors <= n:
        raise ValueError(f"anchors = {params.anchors} must be in [1, n = {n}]; "
                         "lower params.anchors")
    dtype = _float_dtype(x, y)
    d_text = y.shape[1]

    def checked(value, shape, name):
        if value is None:
            return None
        value = jnp.asarray(value, dtype)
        if value.shape != shape:
            raise ValueError(f"init.{name} must have shape {shape}, got {value.shape}")
        return value

    h0 = checked(init.H0, (n, kdim), "H0")
    text_w0 = checked(init.text_W0, (d_text, kdim), "text_W0")
    pad_noise = checked(init.pad_noise, (params.iterations, n, kdim), "pad_noise")
    anchor_ids = init.anchor_ids
    if anchor_ids is not None:
        anchor_ids = jnp.asarray(anchor_ids, jnp.int32)
        if anchor_ids.ndim != 1 or not 1 <= anchor_ids.shape[0] <= n:
            raise ValueError(f"init.anchor_ids must be 1-D with 1..{n} entries, "
                             f"got shape {anchor_ids.shape}")

    x, y = normalize_rows(x.astype(dtype)), normalize_rows(y.astype(dtype))
    label_factors = normalize_rows(jnp.asarray(labels).astype(dtype))
    cluster_key, h_key, pad_key, anchor_key, w_key = jax.random.split(key, 5)
    clusters = init.clusters
    if clusters is None:
        clusters = cluster_labels(labels, params.cluster_ks, cluster_key,
                                  num_iters=params.kmeans_iters)
    ids = jnp.asarray(clusters.ids, jnp.int32).reshape(len(clusters.ks), n)
    if h0 is None:
        h0 = initial_h(h_key, num_items=n, kdim=kdim, bits=bits, dtype=dtype)
    # x64 on for the code learning: the float32 H step then finds the rank of B with a
    # float64 eigh of its exact Gram (see code_range); the arrays stay in `dtype`.
    with jax.enable_x64(True):
        codes, _, ranks = learn_codes(label_factors, ids, h0, pad_key, bits=bits,
                                      cluster_ks=tuple(int(k) for k in clusters.ks),
                                      params=params, pad_noise=pad_noise)
    if anchor_ids is None:
        anchor_ids = jax.random.permutation(anchor_key, n)[:params.anchors]
    if text_w0 is None:
        text_w0 = jax.random.uniform(w_key, (d_text, kdim), dtype)
    image_w, text_w = learn_hash_functions(x, y, label_factors, codes, anchor_ids,
                                           text_w0, bits=bits, params=params)
    return JSPSHState(B=codes, image_W=image_w, text_W=text_w, h_ranks=ranks)
