"""FJSPH's unified code bank and its discrete update.

Codes are int8 in {-1, +1} (``sign_pm``, never ``jnp.sign``).  The bank holds, for all
N training items, the codes ``B`` [N, K], the latest continuous outputs of the image
head ``F`` [N, K] and the text head ``G`` [N, K], and which rows the heads have ``seen``
[N] (rows of F and G not yet written hold no head output and are left out: they are
zero in ``F_s``, ``G_s`` below).  With the target ``T = floor + (1 - floor) S``
(``floor = -1``: ``T = 2S - 1``) of a :class:`~fjsph_jax.similarity.JointSimilarity`
and ``n`` the number of seen rows, the code step minimises over B

    J(B) = alpha / (n K) (||K T - B F_s^T||^2 + ||K T - B G_s^T||^2)
           + gamma (||B - F_s||^2 + ||B - G_s||^2)

(alpha = ``similarity_weight``, gamma = ``quantization_weight``).  The similarity part
is a sum over n columns of squared errors of size ~K^2 and the quantisation part a sum
over K bits of errors ~1 per row, so the ``1 / (n K)`` makes both O(K) per row: the two
weights are comparable numbers whatever N and K are.  Expanding, with

    Q = (alpha / n) T (F_s + G_s) + gamma (F_s + G_s)      [N, K]
    W = alpha / (n K) (F_s^T F_s + G_s^T G_s)              [K, K]

    J(B) = -2 <B, Q> + <B^T B, W> + 2 alpha K / n ||T_s||^2 + gamma (2 N K + ||F_s||^2 + ||G_s||^2)

for B in {-1, +1}^(N x K) (``||T_s||^2``: T restricted to the seen columns; see
:func:`code_objective`, which reports J for all-seen banks).

Nothing here builds an N x N matrix except :func:`dense_code_objective` (tests only).

Padded banks: when the similarity is padded along N (``similarity.pad_similarity``, to a
multiple of the device count), the padding rows are no items: they count as never seen
(whatever ``seen`` holds), keep their codes in the discrete step, and take no part in
J or in :func:`bank_statistics` (the step's cached statistics of B).
"""
from __future__ import annotations

import functools
import numbers
import typing

import jax
import jax.numpy as jnp

from fjsph_jax import similarity as similarity_lib
from fjsph_jax.binary import sign_pm

_PRECISION = jax.lax.Precision.HIGHEST


class CodeBank(typing.NamedTuple):
    """Training-set codes and head outputs (a pytree; shard every field along N).

    Fields:
      codes: int8 [N, K] in {-1, +1}, the unified code bank B.
      image_outputs: float32 [N, K], F, the latest image-head output of every item.
      text_outputs: float32 [N, K], G, the latest text-head output of every item.
      seen: bool [N], rows whose F, G the heads have written (None: all of them).
    """

    codes: jax.Array
    image_outputs: jax.Array
    text_outputs: jax.Array
    seen: jax.Array | None = None


def init_code_bank(num_items: int, bits: int, key, *, num_rows: int | None = None) -> CodeBank:
    """Random uniform ±1 codes [N, K]; F = G = the codes as float32; no row seen yet.

    F and G start at the codes, so the bank is self-consistent (``sign_pm(F + G) ==
    codes``), but the discrete step leaves rows out until the heads have written them.
    ``num_rows`` (>= N) pads the bank to that many rows (e.g. a multiple of the device
    count): padding rows hold code +1, F = G = 1, never seen; the first N rows are the
    unpadded bank's, bit for bit. Works under ``jit``.
    """
    if not _is_int(num_items) or num_items < 1:
        raise ValueError(f"num_items must be an int >= 1, got {num_items!r}")
    if not _is_int(bits) or bits < 1:
        raise ValueError(f"bits must be an int >= 1, got {bits!r}")
    num_rows = num_items if num_rows is None else num_rows
    if not _is_int(num_rows) or num_rows < num_items:
        raise ValueError(f"num_rows must be an int >= num_items={num_items}, got {num_rows!r}")
    bank = _init_code_bank(key, num_items=int(num_items), bits=int(bits))
    if num_rows == num_items:
        return bank
    padding = ((0, int(num_rows) - int(num_items)), (0, 0))
    return CodeBank(
        codes=jnp.pad(bank.codes, padding, constant_values=1),
        image_outputs=jnp.pad(bank.image_outputs, padding, constant_values=1.0),
        text_outputs=jnp.pad(bank.text_outputs, padding, constant_values=1.0),
        seen=jnp.pad(bank.seen, padding[:1], constant_values=False),
    )


def _is_int(value) -> bool:
    """True for Python and numpy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@functools.partial(jax.jit, static_argnames=("num_items", "bits"))
def _init_code_bank(key, *, num_items, bits):
    positive = jax.random.bernoulli(key, 0.5, (num_items, bits))
    codes = jnp.where(positive, 1, -1).astype(jnp.int8)
    as_float = codes.astype(jnp.float32)
    return CodeBank(codes=codes, image_outputs=as_float, text_outputs=as_float,
                    seen=jnp.zeros((num_items,), bool))


def update_outputs(bank: CodeBank, idx_b, image_out_bk, text_out_bk) -> CodeBank:
    """Scatter a batch's head outputs into F and G: ``F[idx] = image_out``, ``G[idx] = text_out``.

    Args:
      idx_b: int [B] training-item indices (distinct).
      image_out_bk, text_out_bk: [B, K] continuous outputs (cast to float32).
    Returns:
      A new :class:`CodeBank` (codes unchanged; rows ``idx`` marked seen).
    """
    idx_b = jnp.asarray(idx_b)
    expected = (idx_b.shape[0], bank.image_outputs.shape[1])
    for name, value in (("image_out_bk", image_out_bk), ("text_out_bk", text_out_bk)):
        if tuple(jnp.shape(value)) != expected:
            raise ValueError(f"{name} must have shape [B, K] = {expected}, got {jnp.shape(value)}")
    return bank._replace(
        image_outputs=bank.image_outputs.at[idx_b].set(jnp.asarray(image_out_bk, jnp.float32)),
        text_outputs=bank.text_outputs.at[idx_b].set(jnp.asarray(text_out_bk, jnp.float32)),
        seen=None if bank.seen is None else bank.seen.at[idx_b].set(True),
    )


def _outputs(bank_or_f_g, valid=None):
    """(F_s, G_s, seen) float32 from a CodeBank or an (F, G) pair: unseen rows zeroed;
    ``seen`` is float32 [N] (all ones for a pair or a bank without ``seen``). ``valid``
    (bool [N] or None): padding rows (False) count as never seen."""
    if isinstance(bank_or_f_g, CodeBank):
        f, g, seen = bank_or_f_g.image_outputs, bank_or_f_g.text_outputs, bank_or_f_g.seen
    else:
        (f, g), seen = bank_or_f_g, None
    f, g = jnp.asarray(f, jnp.float32), jnp.asarray(g, jnp.float32)
    seen = jnp.ones(f.shape[:1], jnp.float32) if seen is None else seen.astype(jnp.float32)
    if valid is not None:
        seen = jnp.where(valid, seen, 0.0)
        f, g = jnp.where(valid[:, None], f, 0.0), jnp.where(valid[:, None], g, 0.0)
    return f * seen[:, None], g * seen[:, None], seen


def _check_weights(similarity_weight, quantization_weight):
    """ValueError for concrete negative weights (traced values pass through)."""
    for name, value in (("similarity_weight", similarity_weight),
                        ("quantization_weight", quantization_weight)):
        if isinstance(value, numbers.Real) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _linear_and_quadratic_terms(f_nk, g_nk, seen_n, sim, alpha, gamma, floor):
    """``Q = (alpha / n) T (F+G) + gamma (F+G)`` [N, K] and
    ``W = alpha / (n K) (F^T F + G^T G)`` [K, K], ``n`` the number of seen rows (F, G
    already zero on unseen rows)."""
    bits = f_nk.shape[1]
    num_seen = jnp.maximum(jnp.sum(seen_n), 1.0)
    f_plus_g = f_nk + g_nk
    q = (alpha / num_seen) * similarity_lib.apply_target(sim, f_plus_g, floor=floor) \
        + gamma * f_plus_g
    w = (alpha / (num_seen * bits)) * (jnp.matmul(f_nk.T, f_nk, precision=_PRECISION)
                                       + jnp.matmul(g_nk.T, g_nk, precision=_PRECISION))
    return q, w


@functools.partial(jax.jit, static_argnames=("num_sweeps",))
def _discrete_code_step(bank, sim, alpha, gamma, floor, num_sweeps):
    valid = similarity_lib.row_mask(sim)
    f, g, seen = _outputs(bank, valid)
    alpha = jnp.asarray(alpha, jnp.float32)
    gamma = jnp.asarray(gamma, jnp.float32)
    q, w = _linear_and_quadratic_terms(f, g, seen, sim, alpha, gamma, floor)
    # alpha == 0: W == 0 and the step is sign_pm(gamma (F + G)); use F + G itself so
    # that the result is exactly sign_pm(F + G) (no underflow of gamma * x to -0).
    q = jnp.where(alpha == 0, f + g, q)
    bits = f.shape[1]

    def update_bit(k, codes):
        w_k = jax.lax.dynamic_index_in_dim(w, k, axis=1, keepdims=False)         # [K]
        b_k = jax.lax.dynamic_index_in_dim(codes, k, axis=1, keepdims=False)     # [N]
        q_k = jax.lax.dynamic_index_in_dim(q, k, axis=1, keepdims=False)         # [N]
        others = jnp.matmul(codes, w_k, precision=_PRECISION) - b_k * w_k[k]     # B_{:,-k} W_{-k,k}
        new_b_k = jnp.where(q_k - others >= 0, 1.0, -1.0)
        return jax.lax.dynamic_update_index_in_dim(codes, new_b_k, k, axis=1)

    def sweep(_, codes):
        return jax.lax.fori_loop(0, bits, update_bit, codes)

    old = bank.codes.astype(jnp.float32)
    codes = jax.lax.fori_loop(0, num_sweeps, sweep, old)
    # With alpha == 0, J does not depend on the codes of unseen rows: keep them.
    keep = (alpha == 0) & (seen == 0)
    if valid is not None:  # padding rows keep their codes (and count nowhere)
        keep = keep | ~valid
    return sign_pm(jnp.where(keep[:, None], old, codes))


def discrete_code_step(bank: CodeBank, sim: similarity_lib.JointSimilarity, *,
                       similarity_weight: float, quantization_weight: float,
                       num_sweeps: int = 1, floor: float = -1.0) -> jax.Array:
    """Discrete cyclic coordinate descent on B for J(B) (see the module docstring).

    Starting from ``bank.codes``, each sweep updates the bit columns k = 0..K-1 in turn,
    each the exact minimiser of J with the other columns fixed:

        b_k = sign_pm(q_k - B_{:,-k} W_{-k,k})

    so J never increases.  With ``similarity_weight == 0`` the result is exactly
    ``sign_pm(F + G)`` (also when ``quantization_weight == 0``).

    Args:
      bank: the :class:`CodeBank` (codes, F, G) [N, K].
      sim: the joint similarity of the N items.
      similarity_weight: alpha >= 0.
      quantization_weight: gamma >= 0.
      num_sweeps: passes over all K bits (static, >= 1).
    Returns:
      int8 [N, K] codes in {-1, +1}.  Cost O(N K (C + m) + num_sweeps N K^2) time,
      O(N K + K^2) memory.
    """
    _check_weights(similarity_weight, quantization_weight)
    if not _is_int(num_sweeps) or num_sweeps < 1:
        raise ValueError(f"num_sweeps must be an int >= 1, got {num_sweeps!r}")
    if bank.image_outputs.shape[0] != sim.num_items:
        raise ValueError(f"bank has N={bank.image_outputs.shape[0]} items but sim has "
                         f"N={sim.num_items}")
    return _discrete_code_step(bank, sim, similarity_weight, quantization_weight, floor,
                               num_sweeps=int(num_sweeps))


def code_objective(codes, bank_or_f_g, sim: similarity_lib.JointSimilarity, *,
                   similarity_weight, quantization_weight,
                   include_constant: bool = True, floor: float = -1.0) -> jax.Array:
    """J(B) computed from the low-rank factors (no N x N matrix).

        J(B) = -2 <B, Q> + <B^T B, W>
               + 2 alpha K / n ||T||_F^2 + gamma (2 ||B||^2 + ||F_s||^2 + ||G_s||^2)

    where ``||T||_F^2`` comes from :func:`~fjsph_jax.similarity.target_squared_norm`
    (and ``||B||^2 = N K`` for ±1 codes); that constant is exact when every row is seen
    (the terms in B are exact always).  With ``include_constant=False`` the last line
    is dropped: the result is J(B) up to a constant independent of B, which is the
    numerically better quantity for comparing codes at large N (float32 cancellation in
    ``K^2 ||T||^2``).

    Args:
      codes: [N, K] codes (int8 ±1, or any real B).
      bank_or_f_g: a :class:`CodeBank` (its F, G are used) or an ``(F, G)`` pair [N, K].
      sim: joint similarity; similarity_weight: alpha; quantization_weight: gamma.
    Returns:
      float32 scalar.  Cost O(N K (C + m) + N K^2) plus ``target_squared_norm``.
    """
    _check_weights(similarity_weight, quantization_weight)
    return _code_objective(codes, _outputs(bank_or_f_g, similarity_lib.row_mask(sim)), sim,
                           similarity_weight, quantization_weight, floor,
                           include_constant=bool(include_constant))


def _valid_codes(codes, sim):
    """Codes as float32 with the padding rows of a padded ``sim`` zeroed."""
    b = jnp.asarray(codes, jnp.float32)
    valid = similarity_lib.row_mask(sim)
    return b if valid is None else jnp.where(valid[:, None], b, 0.0)


@functools.partial(jax.jit, static_argnames=("include_constant",))
def _code_objective(codes, f_g, sim, alpha, gamma, floor, include_constant):
    f, g, seen = f_g
    b = _valid_codes(codes, sim)
    alpha = jnp.asarray(alpha, jnp.float32)
    gamma = jnp.asarray(gamma, jnp.float32)
    q, w = _linear_and_quadratic_terms(f, g, seen, sim, alpha, gamma, floor)
    gram_b = jnp.matmul(b.T, b, precision=_PRECISION)
    value = -2.0 * jnp.sum(b * q) + jnp.sum(gram_b * w)
    if include_constant:
        bits = f.shape[1]
        num_seen = jnp.maximum(jnp.sum(seen), 1.0)
        value += (2.0 * alpha * bits / num_seen
                  * similarity_lib.target_squared_norm(sim, floor=floor)
                  + gamma * (2.0 * jnp.trace(gram_b) + jnp.sum(f * f) + jnp.sum(g * g)))
    return value


@jax.jit
def dense_code_objective(codes, bank_or_f_g, sim: similarity_lib.JointSimilarity, *,
                         similarity_weight, quantization_weight,
                         floor: float = -1.0) -> jax.Array:
    """J(B) evaluated literally with the dense target T [N, N] (columns of unseen rows
    dropped).  Tests / small N only."""
    valid = similarity_lib.row_mask(sim)
    f, g, seen = _outputs(bank_or_f_g, valid)
    b = _valid_codes(codes, sim)
    bits = f.shape[1]
    num_seen = jnp.maximum(jnp.sum(seen), 1.0)
    target = bits * (floor + (1.0 - floor) * similarity_lib.dense_similarity(sim))
    target = target * seen[None, :]
    if valid is not None:  # padding rows have no target row
        target = jnp.where(valid[:, None], target, 0.0)
    similarity_term = (jnp.sum((target - jnp.matmul(b, f.T, precision=_PRECISION)) ** 2)
                       + jnp.sum((target - jnp.matmul(b, g.T, precision=_PRECISION)) ** 2))
    quantization_term = jnp.sum((b - f) ** 2) + jnp.sum((b - g) ** 2)
    return (similarity_weight / (num_seen * bits) * similarity_term
            + quantization_weight * quantization_term)


# ------------------------------------------------------- statistics the step reads


class BankStatistics(typing.NamedTuple):
    """What FJSPH's step needs of the whole bank, cached (small, replicated).

    The mse bank term of a batch (:func:`fjsph_jax.methods.fjsph.objectives.bank_similarity_mse`)
    needs ``(T B)[idx]``, ``B^T B`` and ``sum_n T[idx, n]^2``; from these statistics they
    cost O(B K (C + m) + B K^2 + B (C^2 + m C + m^2)) instead of O(B N K).  ``B`` changes
    only at the discrete code update, so they are recomputed there
    (:func:`bank_statistics`, O(N K (C + m) + N K^2 + N (C^2 + m C + m^2))) and live in
    the train state (checkpointed with it).

    Fields:
      projections: :class:`~fjsph_jax.similarity.FactorProjections` of the codes
        (``N_hat^T B`` [C, K], ``C_j^T B`` stacked [sum k, K], ``1^T B`` [K]).
      code_gram: float32 [K, K], ``B^T B``.
      target: :class:`~fjsph_jax.similarity.TargetStatistics` (S only: ``N_hat^T N_hat``,
        cluster sizes, contingency tables, ...).
    """

    projections: similarity_lib.FactorProjections
    code_gram: jax.Array
    target: similarity_lib.TargetStatistics


@jax.jit
def bank_statistics(codes, sim: similarity_lib.JointSimilarity) -> BankStatistics:
    """:class:`BankStatistics` of bank ``codes`` [N, K] under ``sim`` (padding rows of a
    padded ``sim`` masked out).  Exact: the codes are +-1, so ``B^T B`` and ``1^T B`` are
    integers, exact in float32 up to N = 2^24."""
    b = _valid_codes(codes, sim)
    return BankStatistics(
        projections=similarity_lib.project_on_factors(sim, b),
        code_gram=jnp.matmul(b.T, b, precision=_PRECISION),
        target=similarity_lib.target_statistics(sim),
    )
