"""Hash heads: continuous relaxations of binary codes.

    h = tanh(fc2(act(fc1(x))))     (hidden_dim > 0)
    h = tanh(fc(x))                (hidden_dim == 0)

x: [B, in_dim] -> h: [B, bits] in (-1, 1) (float32 tanh saturates to exactly +-1 only for
|pre-activation| > ~9). Binary codes are taken from h later, outside the model, with a
sign that maps 0 to +1 (never `jnp.sign`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.layers import activation, linear


class HashHead(nnx.Module):
    """Per-modality hash function: features [B, in_dim] -> relaxed codes [B, bits] float32 in (-1, 1)."""

    def __init__(self, in_dim: int, bits: int, hidden_dim: int, *, rngs: nnx.Rngs, act: str = "gelu", dtype=None):
        if bits <= 0:
            raise ValueError(f"bits={bits} must be positive")
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim={hidden_dim} must be >= 0 (0 means a single Linear layer)")
        self.act_name = act
        self.act = activation(act)
        if hidden_dim == 0:
            self.fc1 = None
            self.fc2 = linear(in_dim, bits, rngs=rngs, dtype=dtype)
        else:
            self.fc1 = linear(in_dim, hidden_dim, rngs=rngs, dtype=dtype)
            self.fc2 = linear(hidden_dim, bits, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, in_dim] -> [B, bits] float32 (tanh computed in float32)."""
        hidden = x if self.fc1 is None else self.act(self.fc1(x))
        return jnp.tanh(self.fc2(hidden).astype(jnp.float32))
