"""Tests for fjsph_jax.binary: sign_pm and bit packing."""
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax import binary as codes_lib


def test_sign_pm_never_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, jnp.nan])
    got = codes_lib.sign_pm(x)
    assert got.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(got), [-1, 1, 1, 1, -1, 1, -1])


@pytest.mark.parametrize("bits", [8, 12, 32, 64])
def test_pack_unpack_round_trip_matches_numpy(bits):
    rng = np.random.default_rng(bits)
    codes = np.where(rng.random((5, bits)) < 0.5, 1, -1).astype(np.int8)
    packed = codes_lib.pack_bits(codes)
    assert packed.dtype == jnp.uint8 and packed.shape == (5, -(-bits // 8))
    np.testing.assert_array_equal(np.asarray(packed), np.packbits(codes > 0, axis=1))
    unpacked = codes_lib.unpack_bits(packed, bits)
    assert unpacked.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(unpacked), codes)


def test_unpack_bits_rejects_bad_bit_count():
    packed = codes_lib.pack_bits(np.ones((2, 12), np.int8))
    with pytest.raises(ValueError, match=r"bits must be an int in \[9, 16\]"):
        codes_lib.unpack_bits(packed, 17)
