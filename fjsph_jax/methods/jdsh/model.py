"""JDSH's two hash networks (Flax NNX), as the authors' ``models.py`` has them.

    image:  h_I = Linear(dI -> K)(x)                       on frozen image features x [B, dI]
                  (theirs: the hash layer on AlexNet fc7, 4096-d, under no_grad)
    text:   h_T = Linear(H -> K)(ReLU(Linear(dT -> H)(t))) on bag-of-words t [B, dT],
                  H = config.jdsh.text_hidden_dim (theirs: 4096)
    codes:  code = tanh(a h),  a = sqrt(epoch + 1), epochs counted from 0 (``set_alpha``)

Layers start as ``torch.nn.Linear`` does: weights and biases uniform in
``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (kaiming_uniform with a = sqrt(5)). Binary codes are
``sign(h)`` (= ``sign(tanh(a h))`` for any ``a > 0``; :func:`fjsph_jax.binary.sign_pm`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def _uniform(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def torch_linear(in_dim: int, out_dim: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` initialised like ``torch.nn.Linear(in_dim, out_dim)``."""
    limit = 1.0 / math.sqrt(in_dim)
    return nnx.Linear(in_dim, out_dim, kernel_init=_uniform(limit), bias_init=_uniform(limit),
                      param_dtype=jnp.float32, rngs=rngs)


def code_scale(epoch):
    """``a = sqrt(epoch + 1)`` (float32; ``epoch`` may be a traced integer)."""
    return jnp.sqrt(jnp.asarray(epoch, jnp.float32) + 1.0)


class ImageNet(nnx.Module):
    """The image hash layer ``h_I = x W + b``, ``[B, dI] -> [B, K]``."""

    def __init__(self, input_dim: int, bits: int, *, rngs: nnx.Rngs):
        self.hash_layer = torch_linear(input_dim, bits, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.hash_layer(x)


class TextNet(nnx.Module):
    """``h_T = Linear(H -> K)(ReLU(Linear(dT -> H)(t)))``, ``[B, dT] -> [B, K]``."""

    def __init__(self, input_dim: int, hidden_dim: int, bits: int, *, rngs: nnx.Rngs):
        self.fc1 = torch_linear(input_dim, hidden_dim, rngs=rngs)
        self.fc2 = torch_linear(hidden_dim, bits, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(t)))


class JDSHNetworks(nnx.Module):
    """Both networks; :meth:`logits` gives ``(h_I, h_T)``, :meth:`codes` ``tanh(a h)``."""

    def __init__(self, image_dim: int, text_dim: int, bits: int, text_hidden_dim: int, *,
                 seed: int):
        rngs = nnx.Rngs(seed)
        self.image = ImageNet(image_dim, bits, rngs=rngs)
        self.text = TextNet(text_dim, text_hidden_dim, bits, rngs=rngs)

    def logits(self, image_features: jax.Array, text_features: jax.Array):
        return self.image(image_features), self.text(text_features)

    def codes(self, image_features: jax.Array, text_features: jax.Array, epoch):
        scale = code_scale(epoch)
        h_i, h_t = self.logits(image_features, text_features)
        return jnp.tanh(scale * h_i), jnp.tanh(scale * h_t)
