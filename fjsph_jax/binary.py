"""Binary codes shared by every method: the sign that never returns 0, and bit packing.

Codes are int8 in {-1, +1} (:func:`sign_pm`, never ``jnp.sign``, which maps 0 to 0);
storage and search pack them into bits (:func:`pack_bits`, ``np.packbits`` order).
"""
from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _is_int(value) -> bool:
    """True for Python and numpy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def sign_pm(x) -> jax.Array:
    """Elementwise sign in {-1, +1} as int8: ``+1 if x >= 0 else -1`` (0 and -0 -> +1).

    NaN maps to -1 (``NaN >= 0`` is false).  Same shape as ``x``.
    """
    return jnp.where(jnp.asarray(x) >= 0, 1, -1).astype(jnp.int8)


# ------------------------------------------------------------------------ bit packing

_BYTE_WEIGHTS = np.array([128, 64, 32, 16, 8, 4, 2, 1], np.uint8)


@jax.jit
def pack_bits(codes_nk) -> jax.Array:
    """Pack ±1 codes into bytes: bit 1 for +1, 0 for -1, big-endian within a byte.

    Matches ``np.packbits(codes > 0, axis=1)`` (the last byte zero-padded).

    Args:
      codes_nk: [N, K] codes in {-1, +1}.
    Returns:
      uint8 [N, ceil(K / 8)].
    """
    codes = jnp.asarray(codes_nk)
    if codes.ndim != 2:
        raise ValueError(f"codes_nk must be 2-D [N, K], got shape {codes.shape}")
    num_items, bits = codes.shape
    num_bytes = -(-bits // 8)
    ones = (codes > 0).astype(jnp.uint8)
    ones = jnp.pad(ones, ((0, 0), (0, num_bytes * 8 - bits)))
    grouped = ones.reshape(num_items, num_bytes, 8) * _BYTE_WEIGHTS
    return jnp.sum(grouped, axis=2, dtype=jnp.uint8)


@functools.partial(jax.jit, static_argnames=("bits",))
def unpack_bits(packed, bits: int) -> jax.Array:
    """Inverse of :func:`pack_bits`: uint8 [N, B] -> int8 ±1 [N, bits].

    Args:
      packed: uint8 [N, ceil(bits / 8)] as produced by :func:`pack_bits`.
      bits: K, the number of code bits (static), 8 * (B - 1) < K <= 8 * B.
    """
    packed = jnp.asarray(packed)
    if packed.ndim != 2 or packed.dtype != jnp.uint8:
        raise ValueError(f"packed must be a 2-D uint8 array, got {packed.dtype}{packed.shape}")
    num_bytes = packed.shape[1]
    if not _is_int(bits) or not 8 * (num_bytes - 1) < bits <= 8 * num_bytes:
        raise ValueError(f"bits must be an int in [{8 * (num_bytes - 1) + 1}, "
                         f"{8 * num_bytes}] for {num_bytes} bytes per row, got {bits!r}")
    bits = int(bits)
    shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)
    ones = (packed[:, :, None] >> shifts) & jnp.uint8(1)
    ones = ones.reshape(packed.shape[0], num_bytes * 8)[:, :bits]
    return (2 * ones.astype(jnp.int8) - 1).astype(jnp.int8)
