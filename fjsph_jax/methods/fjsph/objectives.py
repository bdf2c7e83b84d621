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
    image = jnp.asarray(image_emb_bd, jnp.float32)
    text = jnp.asarray(text_emb_bd, jnp.float32)
    _same_width("image_emb_bd", image, "text_emb_bd", text)
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"image_emb_bd and text_emb_bd must have the same batch size, "
                         f"got {image.shape} and {text.shape}")
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
