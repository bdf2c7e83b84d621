"""Multimodal interaction: fuse an image vector and a text vector of the same pair.

    tokens = stack(image, text) + modality_embedding      # [B, 2, D]
    tokens = ln_out(transformer(tokens))                  # bidirectional, no mask
    fused  = mean(tokens, axis=1)                         # [B, D]

It is used only in training, on (image, text) pairs: the fused vector feeds a fused hash
head whose codes join the similarity objective. At retrieval time a query has a single
modality, so codes come from the per-modality hash heads and this block is not called.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.layers import Transformer, layer_norm


class ModalityInteraction(nnx.Module):
    """Two-token bidirectional Transformer over (image, text): ([B, D], [B, D]) -> fused [B, D]."""

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        mlp_dim: int,
        *,
        rngs: nnx.Rngs,
        act: str = "gelu",
        eps: float = 1e-5,
        dtype=None,
    ):
        self.dtype = dtype
        self.modality_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (2, dim), jnp.float32))
        self.transformer = Transformer(dim, layers, heads, mlp_dim, act, eps, rngs=rngs, dtype=dtype)
        self.ln_out = layer_norm(dim, eps, rngs=rngs, dtype=dtype)

    def __call__(self, image_features: jax.Array, text_features: jax.Array) -> jax.Array:
        """image_features [B, D], text_features [B, D] -> fused [B, D]."""
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image_features {image_features.shape} and text_features {text_features.shape} must match"
            )
        compute = self.dtype or jnp.float32
        tokens = jnp.stack([image_features, text_features], axis=1).astype(compute)
        tokens = tokens + self.modality_embedding[...].astype(compute)
        tokens = self.ln_out(self.transformer(tokens))
        return jnp.mean(tokens, axis=1)
