"""Transformer building blocks shaped like CLIP's, so CLIP weights map onto them one to one.

Every block is pre-LayerNorm, as in OpenAI CLIP and `transformers.CLIPEncoderLayer`::

    x = x + attn(ln_1(x), mask)
    x = x + mlp(ln_2(x))          mlp(h) = fc2(act(fc1(h)))

Attention keeps separate `q_proj`, `k_proj`, `v_proj`, `out_proj` Linear layers with
bias (HF CLIP's layout). Parameters are always float32; an optional compute `dtype`
(e.g. `jnp.bfloat16`) is used for activations and matmuls, while LayerNorm statistics
and the attention softmax are computed in float32.

Shapes: B batch, L sequence length, D model width, H heads, Dh = D / H.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATION_NAMES = ("quick_gelu", "gelu", "gelu_tanh")


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's QuickGELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """Tanh-approximated GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The elementwise activation called `name`: 'quick_gelu', 'gelu' (exact erf) or 'gelu_tanh'."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"act={name!r} is not a known activation; allowed: {list(ACTIVATION_NAMES)}")
    return _ACTIVATIONS[name]


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    """LayerNorm over the last axis with scale and bias, like `torch.nn.LayerNorm(dim, eps)`.

    Uses the two-pass variance (E[(x - mean)^2]) so float32 results match PyTorch closely.
    """
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs
    )


def linear(in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=None, use_bias: bool = True) -> nnx.Linear:
    """Dense layer y = x W + b with W: [in_dim, out_dim] float32 parameters."""
    return nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class MLP(nnx.Module):
    """Two-layer perceptron: fc2(act(fc1(x))).  x: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: str, *, rngs: nnx.Rngs, dtype=None):
        self.act_name = act
        self.act = activation(act)
        self.fc1 = linear(in_dim, hidden_dim, rngs=rngs, dtype=dtype)
        self.fc2 = linear(hidden_dim, out_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention with separate q/k/v/out projections.

    For each head h, with q = x Wq + bq, k = x Wk + bk, v = x Wv + bv split into H heads::

        a_h = softmax(q_h k_h^T / sqrt(Dh) + M) v_h        M = 0 where mask else -inf (finite)
        out = concat_h(a_h) Wo + bo

    `mask` is boolean, broadcastable to [B, H, L, L] with [query, key] in the last two axes;
    True means "may attend". A query row whose keys are all masked gets uniform weights
    (a finite large negative bias is used, so no NaNs appear).
    """

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be positive and divide dim={dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dtype = dtype
        self.q_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.k_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.v_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.out_proj = linear(dim, dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, L, D], mask: bool broadcastable to [B, H, L, L] or None -> [B, L, D]."""
        batch, length, _ = x.shape
        split = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(split)
        k = self.k_proj(x).reshape(split)
        v = self.v_proj(x).reshape(split)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (self.head_dim**-0.5)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, self.dim)
        return self.out_proj(attended)


class TransformerBlock(nnx.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then + mlp(ln_2(x)).  [B, L, D] -> [B, L, D]."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, act: str, eps: float, *, rngs: nnx.Rngs, dtype=None
    ):
        self.ln_1 = layer_norm(dim, eps, rngs=rngs, dtype=dtype)
        self.attn = MultiHeadAttention(dim, num_heads, rngs=rngs, dtype=dtype)
        self.ln_2 = layer_norm(dim, eps, rngs=rngs, dtype=dtype)
        self.mlp = MLP(dim, mlp_dim, dim, act, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """A stack of `layers` TransformerBlocks held in `self.blocks` (an nnx.List).  [B, L, D] -> [B, L, D].

    No final LayerNorm: the encoders own theirs (`ln_post`, `ln_final`), as in CLIP.
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        num_heads: int,
        mlp_dim: int,
        act: str,
        eps: float,
        *,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        if layers < 0:
            raise ValueError(f"layers={layers} must be >= 0")
        self.blocks = nnx.List(
            [TransformerBlock(dim, num_heads, mlp_dim, act, eps, rngs=rngs, dtype=dtype) for _ in range(layers)]
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for block in self.blocks:
            x = block(x, mask)
        return x


def causal_mask(length: int) -> jax.Array:
    """Lower-triangular bool [1, 1, L, L]: query i may attend key j iff j <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def key_padding_mask(attention_mask_bl: jax.Array) -> jax.Array:
    """Bool [B, 1, 1, L] from a [B, L] int/bool mask (nonzero = real token): padded keys get no weight."""
    return (attention_mask_bl != 0)[:, None, None, :]
