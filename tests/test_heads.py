"""Tests for fjsph_jax.models.heads.HashHead against numpy."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models.heads import HashHead


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_linear(lin, x):
    return x @ np.asarray(lin.kernel[...]) + np.asarray(lin.bias[...])


@pytest.fixture(scope="module")
def features():
    return np.random.RandomState(0).randn(2, 16).astype(np.float32)


def test_two_layer_head_matches_numpy(features):
    head = HashHead(16, 8, 32, rngs=nnx.Rngs(0))
    out = head(jnp.asarray(features))
    assert out.shape == (2, 8) and out.dtype == jnp.float32
    ref = np.tanh(np_linear(head.fc2, np_gelu(np_linear(head.fc1, features))))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(out)) < 1.0)


def test_single_linear_head_when_hidden_dim_is_zero(features):
    head = HashHead(16, 8, 0, rngs=nnx.Rngs(1), act="quick_gelu")
    assert head.fc1 is None
    np.testing.assert_allclose(head(jnp.asarray(features)), np.tanh(np_linear(head.fc2, features)), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_returns_float32_in_open_interval(features):
    head = HashHead(16, 8, 32, rngs=nnx.Rngs(2), dtype=jnp.bfloat16)
    out = head(jnp.asarray(features))
    assert out.dtype == jnp.float32
    assert np.all(np.abs(np.asarray(out)) < 1.0)


def test_errors():
    with pytest.raises(ValueError, match="bits"):
        HashHead(6, 0, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_dim"):
        HashHead(6, 8, -1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="allowed"):
        HashHead(6, 8, 4, rngs=nnx.Rngs(0), act="relu")
