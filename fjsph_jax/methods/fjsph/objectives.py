"""Loss terms of the hashing network, each a pure function ``(inputs) -> float32 scalar``.

Conventions: ``h_*`` are continuous hash-head outputs [*, K] (typically in [-1, 1]),
``s_ab`` [A, B] is the joint similarity in [0, 1] (see ``fjsph_jax.similarity``), codes
are ±1.  All functions are jit-able; under ``jax.jit`` with batch-sharded inputs they
compute the loss of the global batch (XLA inserts the collectives).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12


def _embedding_pair(image_emb_bd, text_emb_bd):
    """Both [B, d] embeddings as float32, checked to have the same batch and width."""
    image = jnp.asarray(image_emb_bd, jnp.float32)
    text = jnp.asarray(text_emb_bd, jnp.float32)
    _same_width("image_emb_bd", image, "text_emb_bd", text)
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"image_emb_bd and text_emb_bd must have the same batch size, "
                         f"got {image.shape} and {text.shape}")
    return image, text


def _same_width(name_a, a, name_b, b):
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must be 2-D with the same width, "
                         f"got {a.shape} and {b.shape}")


def _pair_logits(h_a, h_b, s_ab):
    """``h_a h_b^T / K`` [A, B] after shape checks; s_ab as float32."""
    h_a = jnp.asarray(h_a, jnp.float32)
    h_b = jnp.asarray(h_b, jnp.float32)
    s_ab = jnp.asarray(s_ab, jnp.float32)
    _same_width("h_a", h_a, "h_b", h_b)
    if s_ab.shape != (h_a.shape[0], h_b.shape[0]):
        raise ValueError(f"s_ab must have shape [A, B] = {(h_a.shape[0], h_b.shape[0])}, "
                         f"got {s_ab.shape}")
    inner = jnp.matmul(h_a, h_b.T, precision=_PRECISION) / h_a.shape[1]
    return inner, s_ab


def _l2_normalize(x_bd):
    """``x / max(||x||_2, eps)`` per row."""
    sq_norm = jnp.sum(x_bd * x_bd, axis=-1, keepdims=True)
    return x_bd * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def symmetric_infonce(image_emb_bd, text_emb_bd, log_logit_scale, *,
                      max_log_scale: float = math.log(100.0)) -> jax.Array:
    """CLIP's symmetric contrastive loss with targets on the diagonal.

        I = image / ||image||,  T = text / ||text||            [B, D] (row-wise)
        logits = exp(min(s, max_log_scale)) I T^T                [B, B]
        loss = 1/2 [ mean_i CE(logits[i, :], i) + mean_j CE(logits[:, j], j) ]
        CE(z, y) = logsumexp(z) - z_y

    Args:
      image_emb_bd, text_emb_bd: [B, D] embeddings of matching pairs (row i ↔ row i).
      log_logit_scale: scalar s, the learnable log temperature.
      max_log_scale: the clamp on s (log 100 as in CLIP).
    Returns:
      float32 scalar.
    """
    image, text = _embedding_pair(image_emb_bd, text_emb_bd)
    scale = jnp.exp(jnp.minimum(jnp.asarray(log_logit_scale, jnp.float32), max_log_scale))
    logits = scale * jnp.matmul(_l2_normalize(image), _l2_normalize(text).T,
                                precision=_PRECISION)
    matched = jnp.diagonal(logits)
    image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - matched)
    text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - matched)
    return 0.5 * (image_to_text + text_to_image)


def similarity_mse(h_a, h_b, s_ab, *, floor: float = -1.0) -> jax.Array:
    """Inner products of codes regress the target similarity.

        loss = mean_{a,b} (h_a[a] . h_b[b] / K - (floor + (1 - floor) s_ab))^2

    ``floor`` is the target for unrelated pairs: -1 gives the usual ``2s - 1``
    (opposite codes), 0 asks unrelated codes to be orthogonal (Hamming distance K/2).

    Args:
      h_a: [A, K]; h_b: [B, K]; s_ab: [A, B] in [0, 1]; floor: in [-1, 1).
    Returns:
      float32 scalar.
    """
    inner, s_ab = _pair_logits(h_a, h_b, s_ab)
    return jnp.mean((inner - (floor + (1.0 - floor) * s_ab)) ** 2)


def similarity_likelihood(h_a, h_b, s_ab, *, scale: float = 5.0) -> jax.Array:
    """DCMH pairwise negative log-likelihood with S as a soft target.

        theta = scale * h_a h_b^T / K                          [A, B]
        loss = mean_{a,b} ( softplus(theta) - s_ab * theta )

    i.e. the cross-entropy between ``s_ab`` and ``sigmoid(theta)`` (minimised, for fixed
    s, at ``sigmoid(theta) = s``; its minimum is the entropy of s, not 0).  softplus is
    evaluated stably (``logaddexp(theta, 0)``), so large |theta| gives no inf/nan.

    Args:
      h_a: [A, K]; h_b: [B, K]; s_ab: [A, B] in [0, 1].
      scale: the logit scale (theta lies in [-scale, scale] for h in [-1, 1]).
    Returns:
      float32 scalar.
    """
    inner, s_ab = _pair_logits(h_a, h_b, s_ab)
    theta = scale * inner
    return jnp.mean(jax.nn.softplus(theta) - s_ab * theta)


def quantization_loss(h_bk, codes_bk) -> jax.Array:
    """Distance of outputs to their binary codes: ``mean_{b,k} (h - b)^2``.

    Args:
      h_bk: [B, K] outputs; codes_bk: [B, K] codes in {-1, +1} (any dtype).
    Returns:
      float32 scalar.
    """
    h = jnp.asarray(h_bk, jnp.float32)
    codes = jnp.asarray(codes_bk, jnp.float32)
    if h.shape != codes.shape:
        raise ValueError(f"h_bk and codes_bk must have the same shape, "
                         f"got {h.shape} and {codes.shape}")
    return jnp.mean((h - codes) ** 2)


def bit_balance_loss(h_bk) -> jax.Array:
    """Each bit should be +1 and -1 equally often: ``mean_k (mean_b h[b, k])^2``.

    Args:
      h_bk: [B, K] outputs.
    Returns:
      float32 scalar.
    """
    h = jnp.asarray(h_bk, jnp.float32)
    if h.ndim != 2:
        raise ValueError(f"h_bk must be 2-D [B, K], got shape {h.shape}")
    return jnp.mean(jnp.mean(h, axis=0) ** 2)


# ------------------------------------------------------------------ bank similarity


def bank_similarity_mse(h_bk, target_codes_bk, target_squares_b, code_gram_kk,
                        num_items) -> jax.Array:
    """:func:`similarity_mse` of outputs against the whole code bank, without ``[B, N]``.

    For outputs ``h`` [B, K], a bank ``B`` [N, K] and target rows ``T[b, :]`` [N]:

        mean_{b,n} (h_b . B_n / K - T_bn)^2
          = 1/(B N) sum_b [ h_b^T (B^T B) h_b / K^2 - 2/K h_b . (T B)_b + sum_n T_bn^2 ]

    exactly (the same ``/ K`` and the same mean over all B x N pairs as
    ``similarity_mse(h, B, T-rows)``), with ``(T B)_b`` and ``sum_n T_bn^2`` from the
    low-rank statistics (:func:`fjsph_jax.similarity.apply_target_rows`,
    :func:`fjsph_jax.similarity.target_row_squared_norms`) and ``B^T B`` cached with the
    bank. Cost O(B K^2), whatever N is.

    Args:
      h_bk: [B, K] outputs.
      target_codes_bk: [B, K], ``(T B)[b]``.
      target_squares_b: [B], ``sum_n T[b, n]^2``.
      code_gram_kk: [K, K], ``B^T B``.
      num_items: N, the number of bank rows the mean runs over (padding excluded).
    Returns:
      float32 scalar.
    """
    h = jnp.asarray(h_bk, jnp.float32)
    bits = h.shape[1]
    quadratic = jnp.sum(jnp.matmul(h, code_gram_kk, precision=_PRECISION) * h, axis=1)
    linear = jnp.sum(h * target_codes_bk, axis=1)
    per_row = quadratic / bits**2 - 2.0 * linear / bits + target_squares_b
    return jnp.sum(per_row) / (h.shape[0] * jnp.asarray(num_items, jnp.float32))


def bank_similarity_dense(h_bk, codes_nk, s_bn, *, form: str = "mse", floor: float = -1.0,
                          scale: float = 5.0, valid_n=None) -> jax.Array:
    """The bank term the direct way: ``h`` [B, K] against every bank row, ``[B, N]``.

    ``form="mse"`` is :func:`similarity_mse` (its reference: the low-rank
    :func:`bank_similarity_mse` must equal it), ``form="likelihood"`` is
    :func:`similarity_likelihood`, which has no low-rank form (softplus of the inner
    products), so FJSPH's step reads this O(B N K) path for it. ``valid_n`` (bool [N]):
    only those columns count (padding rows of a padded bank); the mean is over them.

    Args:
      h_bk: [B, K]; codes_nk: [N, K] bank codes; s_bn: [B, N] similarity rows in [0, 1].
    Returns:
      float32 scalar.
    """
    if form not in ("mse", "likelihood"):
        raise ValueError(f"form must be 'mse' or 'likelihood', got {form!r}")
    inner, s_bn = _pair_logits(h_bk, jnp.asarray(codes_nk, jnp.float32), s_bn)
    if form == "mse":
        pointwise = (inner - (floor + (1.0 - floor) * s_bn)) ** 2
    else:
        theta = scale * inner
        pointwise = jax.nn.softplus(theta) - s_bn * theta
    if valid_n is None:
        return jnp.mean(pointwise)
    valid = jnp.asarray(valid_n, bool)
    count = jnp.sum(valid).astype(jnp.float32) * pointwise.shape[0]
    return jnp.sum(jnp.where(valid[None, :], pointwise, 0.0)) / count


# ------------------------------------------------------------- sharded contrastive loss


def symmetric_infonce_sharded(image_emb_bd, text_emb_bd, log_logit_scale, *, mesh,
                              axis_name: str | tuple[str, ...] = "data",
                              max_log_scale: float = math.log(100.0)) -> jax.Array:
    """:func:`symmetric_infonce` over the global batch, each device holding only its own
    rows of the ``[B, B]`` logits.

    ``jax.shard_map`` over ``axis_name`` (one mesh axis, or a tuple of them: the batch is
    then split over their product): each of the d devices normalises its B/d rows of
    both embeddings, all-gathers the (small) normalised embeddings [B, D], computes its
    [B/d, B] logit rows for image -> text (its images against every text) and for
    text -> image (its texts against every image: columns of the full logits), sums the
    cross-entropies of its rows and ``psum`` adds them up. Equal to
    :func:`symmetric_infonce` (values and gradients; the all-gather's transpose is a
    reduce-scatter), with logits memory B^2 / d per device instead of B^2.

    Args:
      image_emb_bd, text_emb_bd: [B, D], B a multiple of the mesh's ``axis_name`` size.
      log_logit_scale: scalar s (replicated).
      mesh: the device mesh.
    Returns:
      float32 scalar (replicated).
    """
    image, text = _embedding_pair(image_emb_bd, text_emb_bd)
    batch = image.shape[0]
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    devices = math.prod(mesh.shape[a] for a in axes)
    if batch % devices:
        raise ValueError(f"the batch of {batch} rows does not split over the {devices} "
                         f"devices of mesh axis {axis_name!r}")
    from jax.sharding import PartitionSpec as P

    def local_losses(image_local, text_local, log_scale):
        scale = jnp.exp(jnp.minimum(log_scale, max_log_scale))
        image_local = _l2_normalize(image_local)
        text_local = _l2_normalize(text_local)
        image_all = jax.lax.all_gather(image_local, axis_name, tiled=True)  # [B, D]
        text_all = jax.lax.all_gather(text_local, axis_name, tiled=True)
        image_to_text = scale * jnp.matmul(image_local, text_all.T, precision=_PRECISION)
        text_to_image = scale * jnp.matmul(text_local, image_all.T, precision=_PRECISION)
        rows = image_local.shape[0]
        own = jax.lax.axis_index(axis_name) * rows + jnp.arange(rows)  # global row ids
        matched_i2t = jnp.take_along_axis(image_to_text, own[:, None], axis=1)[:, 0]
        matched_t2i = jnp.take_along_axis(text_to_image, own[:, None], axis=1)[:, 0]
        total = (jnp.sum(jax.nn.logsumexp(image_to_text, axis=1) - matched_i2t)
                 + jnp.sum(jax.nn.logsumexp(text_to_image, axis=1) - matched_t2i))
        return jax.lax.psum(total, axis_name)

    total = jax.shard_map(
        local_losses, mesh=mesh, in_specs=(P(axis_name), P(axis_name), P()), out_specs=P(),
    )(image, text, jnp.asarray(log_logit_scale, jnp.float32))
    return 0.5 * total / batch
