"""CLIP-style text Transformer (also FLIP/BERT-style when bidirectional).

Forward pass (input_ids [B, L] int, attention_mask [B, L] int|bool, nonzero = real token)::

    x      = token_embedding[input_ids] + pos[:L]        # [B, L, D]; L <= context_length
    mask   = key_padding(attention_mask) & causal(L)     # each part only when config.mask_padding
                                                         # / config.causal; no mask if neither
    x      = ln_final(transformer(x, mask))
    pooled = x[b, t_b]                                   # t_b chosen by config.pool
    out    = pooled @ proj (+ proj_bias)                 # [B, output_dim]

Pooling positions t_b:
  'last'   the last attended token: sum(attention_mask_b) - 1
  'eos'    the first position with id == eos_token_id (current HF CLIP); 0 if there is none
  'argmax' argmax of the ids (legacy OpenAI CLIP: the end-of-text id is the largest)
  'first'  token 0 (BERT/FLIP style, usually with causal=False)
and one pool that is not a position:
  'mean_all'  pooled = mean_{t = 0..L-1} x[:, t], padding positions included (FLIP's
              clr.txt_avg_token)

FLIP's text tower attends to its padding ([PAD] = 0, always padded to the context length):
`mask_padding=False` reproduces that; attention_mask then only matters for pool='last'.
Such a tower computes FLIP's function only on rows padded to the length FLIP used.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.layers import (
    ACTIVATION_NAMES,
    AttentionMask,
    Transformer,
    causal_mask,
    check_compute_options,
    key_padding_mask,
    layer_norm,
    linear,
)

TEXT_POOLS = ("last", "eos", "argmax", "first", "mean_all")
POSITION_POOLS = ("last", "eos", "argmax", "first")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Architecture of a TextTransformer. `output_dim=None` means no projection (output = width).

    `mask_padding=False` lets every token attend to padded keys (FLIP); `proj_bias=True`
    gives the projection a bias (FLIP's `clr.proj_out_bias`). `pool` is one of TEXT_POOLS.
    `attention`, `remat`, `scan_layers` choose how the blocks are computed, not what
    (:mod:`fjsph_jax.models.layers`).
    """

    vocab_size: int
    context_length: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    output_dim: int | None
    act: str = "quick_gelu"
    causal: bool = True
    pool: str = "last"
    eos_token_id: int | None = None
    eps: float = 1e-5
    mask_padding: bool = True
    proj_bias: bool = False
    # Compute options (fjsph_jax.models.layers docstring): the same function and the same
    # parameters whatever their values. Not part of the architecture.
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        check_compute_options("TextConfig", self.attention, self.remat, self.scan_layers)
        if self.pool not in TEXT_POOLS:
            raise ValueError(f"TextConfig.pool={self.pool!r}; allowed: {list(TEXT_POOLS)}")
        if self.pool == "eos" and self.eos_token_id is None:
            raise ValueError("TextConfig.pool='eos' needs eos_token_id (an int)")
        if self.act not in ACTIVATION_NAMES:
            raise ValueError(f"TextConfig.act={self.act!r}; allowed: {list(ACTIVATION_NAMES)}")
        if self.heads <= 0 or self.width % self.heads != 0:
            raise ValueError(f"TextConfig.heads={self.heads} must be positive and divide width={self.width}")


def pool_positions(input_ids_bl: jax.Array, attention_mask_bl: jax.Array, pool: str, eos_token_id: int | None):
    """The token index t_b [B] int32 each sequence is pooled at, for pool in POSITION_POOLS.

    input_ids_bl, attention_mask_bl: [B, L]. See the module docstring for each rule.
    """
    if pool == "last":
        return jnp.maximum(jnp.sum(attention_mask_bl != 0, axis=1) - 1, 0).astype(jnp.int32)
    if pool == "eos":
        return jnp.argmax(input_ids_bl == eos_token_id, axis=1).astype(jnp.int32)
    if pool == "argmax":
        return jnp.argmax(input_ids_bl, axis=1).astype(jnp.int32)
    if pool == "first":
        return jnp.zeros(input_ids_bl.shape[0], jnp.int32)
    raise ValueError(f"pool={pool!r} is not a position pool; allowed: {list(POSITION_POOLS)}")


class TextTransformer(nnx.Module):
    """Text encoder: (input_ids [B, L], attention_mask [B, L]) -> [B, output_dim] (see module doc).

    Parameter names follow OpenAI CLIP's text tower: `token_embedding` (nnx.Embed,
    [vocab, D]), `position_embedding` [context_length, D], `transformer.blocks[i]`,
    `ln_final`, `proj` (Linear, with a bias only when config.proj_bias; None when
    output_dim is None).
    """

    def __init__(self, config: TextConfig, *, rngs: nnx.Rngs, dtype=None):
        self.config = config
        self.dtype = dtype
        width = config.width
        self.token_embedding = nnx.Embed(
            config.vocab_size,
            width,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.position_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (config.context_length, width), jnp.float32)
        )
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_dim, config.act, config.eps, rngs=rngs, dtype=dtype,
            attention=config.attention, remat=config.remat, scan_layers=config.scan_layers,
        )
        self.ln_final = layer_norm(width, config.eps, rngs=rngs, dtype=dtype)
        self.proj = (
            linear(width, config.output_dim, rngs=rngs, dtype=dtype, use_bias=config.proj_bias)
            if config.output_dim is not None
            else None
        )

    @property
    def output_dim(self) -> int:
        """Width of the returned embedding: config.output_dim, or width without a projection."""
        return self.config.output_dim if self.config.output_dim is not None else self.config.width

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids [B, L] int, attention_mask [B, L] int|bool -> [B, output_dim]."""
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {input_ids.shape} and {attention_mask.shape}"
            )
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(
                f"input_ids has length {length} > context_length={self.config.context_length}; "
                "truncate the tokens or use a config with a longer context"
            )
        compute = self.dtype or jnp.float32
        x = self.token_embedding(input_ids) + self.position_embedding[:length].astype(compute)
        x = self.ln_final(self.transformer(x, self.attention_mask(attention_mask)))
        if self.config.pool == "mean_all":
            pooled = jnp.mean(x, axis=1)
        else:
            positions = pool_positions(input_ids, attention_mask, self.config.pool, self.config.eos_token_id)
            pooled = jnp.take_along_axis(x, positions[:, None, None], axis=1)[:, 0]
        return self.proj(pooled) if self.proj is not None else pooled

    def attention_mask(self, attention_mask_bl: jax.Array) -> AttentionMask | None:
        """The mask of :meth:`attend_mask` kept in parts (padding [B, L], causal flag), so that
        fused attention never materialises it; None when nothing is masked."""
        padding = attention_mask_bl if self.config.mask_padding else None
        if padding is None and not self.config.causal:
            return None
        return AttentionMask(padding=padding, causal=self.config.causal)

    def attend_mask(self, attention_mask_bl: jax.Array) -> jax.Array | None:
        """Bool mask broadcastable to [B, H, L, L] (True = may attend), or None when nothing is masked.

        key_padding(attention_mask) if config.mask_padding, & causal(L) if config.causal.
        """
        length = attention_mask_bl.shape[1]
        mask = key_padding_mask(attention_mask_bl) if self.config.mask_padding else None
        if self.config.causal:
            mask = causal_mask(length) if mask is None else mask & causal_mask(length)
        return mask
