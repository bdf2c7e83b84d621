"""JDSH's objective as the authors' code computes it: joint-modal similarity, DSDW, loss.

JDSH (Liu et al., SIGIR 2020, "Joint-modal Distribution-based Similarity Hashing") builds
the target of every batch from the batch's own features, never from labels. With
``n(x) = x / max(||x||_2, 1e-12)`` row-wise (``torch.nn.functional.normalize``), image
features ``F_I [B, dI]`` (their ImgNet's AlexNet fc7) and raw text features ``T [B, dT]``
(bag of words)::

    S_I    = 2 n(F_I) n(F_I)^T - 1                                   [B, B]
    S_T    = 2 n(T) n(T)^T - 1                                       [B, B]
    S_high = n(S_I) n(S_T)^T                 (second order: rows of S_I vs rows of S_T)
    S~     = w_I S_I + w_T S_T + w_H (S_high + S_high^T) / 2

**DSDW** (distribution-based similarity decision and weighting) then pushes the two tails
of the distribution of ``S~`` further out, with ``left = loc_L - width_L scale_L`` and
``right = loc_R + width_R scale_R``::

    S~ <- (1 + gain_L exp(-(S~ - min))) S~     where S~ < left     (first)
    S~ <- (1 + gain_R exp(S~ - max)) S~        where S~ > right    (then, on the result)

Both inequalities are strict and the right branch reads the matrix the left branch wrote,
as their in-place code does (``S_[S_ < left] = ...`` then ``S_[S_ > right] = ...``). The
target is ``S = mu S~``, a constant for the gradient (:func:`similarity_target`).

**Loss** on ``B_I = n(code_I)``, ``B_T = n(code_T)`` (codes ``tanh(a h)``, ``[B, K]``),
with ``MSE`` the mean over all ``B^2`` entries (``F.mse_loss``)::

    L = intra (MSE(B_I B_I^T, S) + MSE(B_T B_T^T, S))
        + MSE(B_I B_T^T, S) + MSE(B_T B_I^T, S) - mean_i <B_I,i, B_T,i>

``params`` is ``config.jdsh`` (an ``ml_collections.ConfigDict``) or any mapping with its
keys (the authors' JSON names in brackets): ``image_weight`` (alpha), ``text_weight``
(beta), ``high_order_weight`` (lamb), ``scale`` (mu), ``intra_weight`` (INTRA),
``left_loc`` (LOC_LEFT), ``left_scale`` (SCALE_LEFT), ``left_width`` (ALPHA),
``right_loc`` (LOC_RIGHT), ``right_scale`` (SCALE_RIGHT), ``right_width`` (BETA),
``min_value`` (MIN), ``max_value`` (MAX), ``left_gain`` (L1), ``right_gain`` (L2), and
optionally ``dsdw``: ``"fixed"`` / ``"fitted"`` apply DSDW with the constants found in
``params`` (for ``"fitted"`` the method first replaces them by :func:`fit_dsdw`'s, see
:func:`with_fitted`), ``"none"`` skips it (an ablation: ``S = mu S~``).

**Fitted constants** (:func:`fit_dsdw`), so a new dataset needs no hand-tuned numbers.
The JDSH paper reads ``loc``, the scales and ``min`` / ``max`` off the distribution of
``S~`` over training pairs: a peak of unrelated pairs (``loc``; the authors' MIRFlickr and
NUS-WIDE constants put both ``loc_L`` and ``loc_R`` on it) with a steep, Laplace-like
left flank and a Gaussian-like right flank, and the related pairs further right. Given
the off-diagonal entries ``x`` of ``S~`` over the first training batches:

* ``loc_L = loc_R = m``: the half-sample mode of ``x`` (Bickel and Fruehwirth 2006:
  repeatedly keep the shortest half of the sorted sample), robust to the skewed tail;
* ``scale_L``: the Laplace scale ``b`` of the left flank, ``scale_R``: the Gaussian
  ``sigma`` of the right flank, each fitted to the SHAPE OF THE PEAK (:func:`flank_scale`):
  from the ratio of the points within ``2t`` and within ``t`` of the mode, which is
  ``1 + exp(-t / b)`` for a Laplace and ``erf(2u) / erf(u)``, ``u = t / (sigma sqrt 2)``
  for a Gaussian flank, iterated to ``t = scale``. Points further out (the related pairs,
  which DSDW is meant to single out beyond ``right``) do not enter, so they cannot
  inflate the scale of the bulk they are measured against: on a peak of the authors'
  MIRFlickr shape with 5% or 40% of the pairs in a far tail, the scales come back within
  a few percent (a whole-flank median or standard deviation would not);
* ``min`` / ``max``: the smallest and largest value of ``x``.

The model behind it is the authors' (each flank half of a symmetric law centred on the
mode); on a sample of another shape (a flat-topped or shoulder-like peak) the scales
describe the peak only roughly, and a right threshold beyond every value switches the
right branch off. The widths (``left_width``, ``right_width``) and gains stay the
configured ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-12  # torch.nn.functional.normalize's eps
DSDW_MODES = ("fixed", "fitted", "none")
# config.jdsh key -> the authors' JSON key (config/JDSH_*.json)
AUTHOR_KEYS = {
    "image_weight": "alpha",
    "text_weight": "beta",
    "high_order_weight": "lamb",
    "scale": "mu",
    "intra_weight": "INTRA",
    "left_loc": "LOC_LEFT",
    "left_scale": "SCALE_LEFT",
    "left_width": "ALPHA",
    "right_loc": "LOC_RIGHT",
    "right_scale": "SCALE_RIGHT",
    "right_width": "BETA",
    "min_value": "MIN",
    "max_value": "MAX",
    "left_gain": "L1",
    "right_gain": "L2",
}
FITTED_KEYS = ("left_loc", "left_scale", "right_loc", "right_scale", "min_value", "max_value")
HALF_NORMAL_MEDIAN = 0.6744897501960817  # Phi^-1(0.75): median |X - m| / sigma, normal
HALF_LAPLACE_MEDIAN = math.log(2.0)  # median |X - m| / b, Laplace


def param(params, key: str) -> float:
    """``float(params[key])``; KeyError naming ``config.jdsh.<key>`` when it is missing."""
    try:
        value = params[key]
    except (KeyError, AttributeError) as error:
        raise KeyError(f"JDSH params have no {key!r} (config.jdsh.{key})") from error
    return float(value)


def _mode(params) -> str:
    mode = params.get("dsdw", "fixed") if hasattr(params, "get") else "fixed"
    if mode not in DSDW_MODES:
        raise ValueError(f"config.jdsh.dsdw={mode!r}; allowed: {', '.join(map(repr, DSDW_MODES))}")
    return mode


def normalize_rows(x):
    """``x / max(||x||_2, 1e-12)`` per row (``F.normalize(x, dim=1)``)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, EPS)


def joint_similarity(image_features, text_features, params):
    """``S~ [B, B]``: the joint-modal similarity before DSDW (see the module doc).

    Args:
      image_features: ``F_I [B, dI]`` (normalised here; any scale).
      text_features: ``T [B, dT]``, the raw text features (bag of words).
      params: ``config.jdsh`` or a mapping (``image_weight``, ``text_weight``,
        ``high_order_weight``).
    """
    f_i = normalize_rows(jnp.asarray(image_features, jnp.float32))
    f_t = normalize_rows(jnp.asarray(text_features, jnp.float32))
    s_i = (f_i @ f_i.T) * 2 - 1
    s_t = (f_t @ f_t.T) * 2 - 1
    s_high = normalize_rows(s_i) @ normalize_rows(s_t).T
    return (
        param(params, "image_weight") * s_i
        + param(params, "text_weight") * s_t
        + param(params, "high_order_weight") * (s_high + s_high.T) / 2
    )


def dsdw_thresholds(params) -> tuple[float, float]:
    """``(left, right) = (loc_L - width_L scale_L, loc_R + width_R scale_R)``."""
    left = param(params, "left_loc") - param(params, "left_width") * param(params, "left_scale")
    right = (param(params, "right_loc")
             + param(params, "right_width") * param(params, "right_scale"))
    return left, right


def dsdw_with_masks(similarity, params):
    """``(DSDW(S~), left mask, right mask)``: the masks mark where each branch fired."""
    left, right = dsdw_thresholds(params)
    s = similarity
    low = s < left
    s = jnp.where(low, (1 + param(params, "left_gain")
                        * jnp.exp(-(s - param(params, "min_value")))) * s, s)
    high = s > right  # on the matrix the left branch wrote
    s = jnp.where(high, (1 + param(params, "right_gain")
                         * jnp.exp(s - param(params, "max_value"))) * s, s)
    return s, low, high


def dsdw(similarity, params):
    """DSDW reweighting of ``S~`` ``[B, B]``: the left branch (``S~ < left``), then the right
    branch (``> right``) on its result; both strict (see the module doc)."""
    return dsdw_with_masks(similarity, params)[0]


def similarity_target(image_features, text_features, params):
    """The JDSH target ``S = mu DSDW(S~)``, ``[B, B]`` float32, without gradient.

    Args:
      image_features: ``[B, dI]`` image features of the (global) batch.
      text_features: ``[B, dT]`` its raw text features.
      params: ``config.jdsh`` or a mapping (module doc); ``dsdw="none"`` skips DSDW.
    Returns:
      ``S = scale * DSDW(S~)`` with ``S~`` from :func:`joint_similarity`.
    """
    return similarity_target_with_stats(image_features, text_features, params)[0]


def similarity_target_with_stats(image_features, text_features, params):
    """``(S, stats)``: :func:`similarity_target` and the fractions of the ``B^2`` entries where
    DSDW's left and right branches fired (``dsdw_left``, ``dsdw_right``; 0 with "none")."""
    s = joint_similarity(image_features, text_features, params)
    stats = {"dsdw_left": jnp.zeros((), jnp.float32), "dsdw_right": jnp.zeros((), jnp.float32)}
    if _mode(params) != "none":
        s, low, high = dsdw_with_masks(s, params)
        stats = {"dsdw_left": jnp.mean(low.astype(jnp.float32)),
                 "dsdw_right": jnp.mean(high.astype(jnp.float32))}
    return jax.lax.stop_gradient(s * param(params, "scale")), stats


def loss_terms(image_codes, text_codes, target) -> dict[str, jax.Array]:
    """The unweighted terms of :func:`loss` (scalars): ``intra`` = MSE(B_I B_I^T, S) +
    MSE(B_T B_T^T, S), ``inter`` = MSE(B_I B_T^T, S) + MSE(B_T B_I^T, S), ``agreement`` =
    mean_i <B_I,i, B_T,i>."""
    b_i = normalize_rows(image_codes)
    b_t = normalize_rows(text_codes)

    def mse(a):
        return jnp.mean(jnp.square(a - target))

    return {
        "intra": mse(b_i @ b_i.T) + mse(b_t @ b_t.T),
        "inter": mse(b_i @ b_t.T) + mse(b_t @ b_i.T),
        "agreement": jnp.mean(jnp.sum(b_i * b_t, axis=1)),
    }


def loss(image_codes, text_codes, target, params):
    """The JDSH loss, a scalar (module doc).

    Args:
      image_codes: ``code_I [B, K]`` (``tanh(a h_I)``).
      text_codes: ``code_T [B, K]``.
      target: ``S [B, B]`` from :func:`similarity_target`.
      params: ``config.jdsh`` or a mapping with ``intra_weight``.
    Returns:
      ``intra_weight * (MSE(B_I B_I^T, S) + MSE(B_T B_T^T, S)) + MSE(B_I B_T^T, S)
      + MSE(B_T B_I^T, S) - mean_i <B_I,i, B_T,i>``, ``B = n(code)``.
    """
    terms = loss_terms(image_codes, text_codes, target)
    return combine(terms, params)


def combine(terms: Mapping[str, Any], params):
    """``intra_weight * intra + inter - agreement`` of :func:`loss_terms`."""
    return param(params, "intra_weight") * terms["intra"] + terms["inter"] - terms["agreement"]


# ------------------------------------------------------------------ fitted DSDW constants


def half_sample_mode(values) -> float:
    """The half-sample mode of ``values`` (Bickel and Fruehwirth 2006): of the sorted
    sample keep the shortest window holding half of it, repeat until <= 3 values remain
    (then the mean of the closest pair, or the middle value of three equidistant ones)."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    if x.size == 0:
        raise ValueError("half_sample_mode of an empty sample")
    while x.size > 3:
        half = (x.size + 1) // 2
        widths = x[half - 1 :] - x[: x.size - half + 1]
        start = int(np.argmin(widths))
        x = x[start : start + half]
    if x.size == 3:
        low, high = x[1] - x[0], x[2] - x[1]
        if low < high:
            return float((x[0] + x[1]) / 2)
        if high < low:
            return float((x[1] + x[2]) / 2)
        return float(x[1])
    return float(np.mean(x))


def _window_ratio(distances: np.ndarray, t: float) -> float:
    """``#{d <= 2t} / #{d <= t}`` of sorted ``distances`` (inf when none is <= t)."""
    inner = np.searchsorted(distances, t, side="right")
    outer = np.searchsorted(distances, 2 * t, side="right")
    return outer / inner if inner else math.inf


def _erf_ratio_inverse(ratio: float) -> float:
    """``u`` with ``erf(2u) / erf(u) = ratio`` (``1 < ratio < 2``; the ratio falls from 2 at
    u = 0 to 1 as u grows), by bisection."""
    low, high = 1e-8, 10.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if math.erf(2 * middle) / math.erf(middle) > ratio:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def flank_scale(distances, kind: str, *, iterations: int = 50) -> float:
    """Scale of one flank of a peak from its points' distances to the mode (all > 0).

    ``kind="laplace"``: the flank's density is ``f(m) exp(-d / b)``, so the mass within
    ``2t`` over the mass within ``t`` is ``1 + exp(-t / b)``: ``b = -t / ln(ratio - 1)``.
    ``kind="gauss"``: ``f(m) exp(-d^2 / (2 sigma^2))``, so the ratio is
    ``erf(2u) / erf(u)`` with ``u = t / (sigma sqrt 2)``. Only points within ``2t`` of the
    mode count, so whatever lies further out (the related pairs' tail) does not move the
    estimate. ``t`` starts at the median-based estimate (the median of the distances is
    ``b ln 2`` or ``0.6745 sigma``) and is iterated to ``t = scale``, the window where the
    ratio is most informative; if the ratio leaves the model's range (a flank of another
    shape) the median-based estimate is returned.
    """
    d = np.sort(np.asarray(distances, np.float64))
    if kind == "laplace":
        start = float(np.median(d) / HALF_LAPLACE_MEDIAN)
    elif kind == "gauss":
        start = float(np.median(d) / HALF_NORMAL_MEDIAN)
    else:
        raise ValueError(f"kind={kind!r}; allowed: 'laplace', 'gauss'")
    t = start
    for _ in range(iterations):
        ratio = _window_ratio(d, t)
        if not 1.0 < ratio < 2.0:
            return start
        if kind == "laplace":
            scale = -t / math.log(ratio - 1.0)
        else:
            scale = t / (_erf_ratio_inverse(ratio) * math.sqrt(2.0))
        if not math.isfinite(scale) or scale <= 0:
            return start
        done = abs(scale - t) <= 1e-6 * t
        t = scale
        if done:
            break
    return t


def fit_dsdw(values) -> dict[str, float]:
    """DSDW constants fitted to a sample of ``S~`` entries (module doc, "Fitted constants").

    Args:
      values: off-diagonal entries of ``S~`` (any shape; flattened).
    Returns:
      ``{"left_loc", "left_scale", "right_loc", "right_scale", "min_value", "max_value"}``.
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 16:
        raise ValueError(f"fit_dsdw needs at least 16 finite values, got {x.size}")
    mode = half_sample_mode(x)
    below, above = mode - x[x < mode], x[x > mode] - mode
    if below.size == 0 or above.size == 0:
        raise ValueError("fit_dsdw: the sample has no values on one side of its mode")
    return {
        "left_loc": mode,
        "left_scale": flank_scale(below, "laplace"),
        "right_loc": mode,
        "right_scale": flank_scale(above, "gauss"),
        "min_value": float(x.min()),
        "max_value": float(x.max()),
    }


def off_diagonal(matrices) -> np.ndarray:
    """The off-diagonal entries of ``[..., B, B]`` matrices, flattened (float64)."""
    m = np.asarray(matrices, np.float64)
    size = m.shape[-1]
    mask = ~np.eye(size, dtype=bool)
    return m[..., mask].ravel()


def with_fitted(params, fitted: Mapping[str, float] | None) -> dict[str, Any]:
    """A plain dict of ``params`` (every key of the objective) with the fitted constants in
    place of the configured ones (``fitted`` None: unchanged)."""
    out = {key: param(params, key) for key in AUTHOR_KEYS}
    out["dsdw"] = _mode(params)
    if fitted is not None:
        for key in FITTED_KEYS:
            out[key] = float(fitted[key])
    return out


def from_authors(json_config: Mapping[str, Any]) -> dict[str, float]:
    """``config.jdsh`` values from the authors' JSON config (``alpha`` -> ``image_weight``...)."""
    return {key: float(json_config[author]) for key, author in AUTHOR_KEYS.items()}
