"""CLIP-style Vision Transformer with FLIP patch masking.

Forward pass (pixels [B, H, W, 3], already normalised; p = patch_size, D = width)::

    patches = conv_pxp_stride_p(pixels)          # VALID, no bias -> [B, H//p, W//p, D]
    tokens  = flatten(patches) + pos[1:]         # [B, N, D], N = (H//p) * (W//p)
    tokens  = random_patch_mask(tokens)          # FLIP: keep int(N (1 - r)) of them (training only)
    x       = concat(cls + pos[0], tokens)       # [B, T, D], T = 1 + N_keep
    x       = transformer(ln_pre(x))             # ln_pre skipped when config.ln_pre is False (FLIP)
    pooled  = pool(x)                            # [B, D], see below
    out     = pooled @ proj (+ proj_bias)        # [B, output_dim], not normalised

Pooling (config.pool):
  'cls'       ln_post(x[:, 0])                          (CLIP)
  'gap'       ln_post(mean_{t >= 1} x[:, t])            (patch tokens only, normalised after the mean)
  'mean_all'  mean_{t = 0..T-1} ln_post(x)[:, t]        (FLIP's clr.img_avg_token: every token,
                                                         class token included, normalised before the mean)

Masking is applied after adding position embeddings, so kept tokens keep theirs; the class
token is never masked. Image sizes that are not a multiple of p floor like CLIP's conv
(the extra border pixels are dropped); the resulting grid must have the number of patches
the position embedding was built for, (image_size // p) ** 2.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.layers import ACTIVATION_NAMES, Transformer, check_compute_options, layer_norm, linear

VIT_POOLS = ("cls", "gap", "mean_all")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a VisionTransformer. `output_dim=None` means no projection (output = width).

    `ln_pre=False` drops the LayerNorm before the first block (FLIP's ViT has none; the
    tower then has no `ln_pre` parameters). `proj_bias=True` gives the projection a bias
    (FLIP's `clr.proj_out_bias`). `pool` is one of VIT_POOLS (see the module docstring).
    `attention`, `remat`, `scan_layers` choose how the blocks are computed, not what
    (:mod:`fjsph_jax.models.layers`).
    """

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    output_dim: int | None
    act: str = "quick_gelu"
    pool: str = "cls"
    eps: float = 1e-5
    ln_pre: bool = True
    proj_bias: bool = False
    # Compute options (fjsph_jax.models.layers docstring): the same function and the same
    # parameters whatever their values. Not part of the architecture.
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        check_compute_options("ViTConfig", self.attention, self.remat, self.scan_layers)
        if self.pool not in VIT_POOLS:
            raise ValueError(f"ViTConfig.pool={self.pool!r}; allowed: {list(VIT_POOLS)}")
        if self.act not in ACTIVATION_NAMES:
            raise ValueError(f"ViTConfig.act={self.act!r}; allowed: {list(ACTIVATION_NAMES)}")
        if self.patch_size <= 0 or self.image_size < self.patch_size:
            raise ValueError(
                f"ViTConfig.patch_size={self.patch_size} must be positive and <= image_size={self.image_size}"
            )
        if self.heads <= 0 or self.width % self.heads != 0:
            raise ValueError(f"ViTConfig.heads={self.heads} must be positive and divide width={self.width}")

    @property
    def grid_size(self) -> int:
        """Patches per side: image_size // patch_size."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image: grid_size ** 2."""
        return self.grid_size**2


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches FLIP keeps: int(num_patches * (1 - mask_ratio)), at least 1.

    mask_ratio must be a Python float in [0, 1); it fixes a static shape.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def random_patch_mask(tokens_bld: jax.Array, keep: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FLIP random masking: per example, keep the `keep` tokens with the smallest uniform noise.

    noise ~ U[0, 1) of shape [B, L]; ids_keep = argsort(noise, axis=1)[:, :keep] (so ids are
    ordered by increasing noise); kept[b, i] = tokens[b, ids_keep[b, i]].

    Args:
      tokens_bld: [B, L, D] tokens (position embeddings already added).
      keep: number of tokens to keep, 1 <= keep <= L (a Python int).
      key: PRNG key; the same key gives the same mask.
    Returns:
      kept [B, keep, D] and ids_keep [B, keep] int32.
    """
    batch, length, _ = tokens_bld.shape
    if not 1 <= keep <= length:
        raise ValueError(f"keep={keep} must be in [1, {length}] (the number of tokens)")
    noise_bl = jax.random.uniform(key, (batch, length))
    ids_keep = jnp.argsort(noise_bl, axis=1)[:, :keep].astype(jnp.int32)
    kept = jnp.take_along_axis(tokens_bld, ids_keep[:, :, None], axis=1)
    return kept, ids_keep


class VisionTransformer(nnx.Module):
    """Image encoder: pixels [B, H, W, 3] -> unnormalised embedding [B, output_dim] (see module doc).

    Parameter names follow OpenAI CLIP's visual tower: `patch_embed` (conv, kernel
    [p, p, 3, D]), `class_embedding` [D], `position_embedding` [1 + N, D], `ln_pre` (None
    when config.ln_pre is False), `transformer.blocks[i]`, `ln_post`, `proj` (Linear, with
    a bias only when config.proj_bias; None when output_dim is None).
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs, dtype=None):
        self.config = config
        self.dtype = dtype
        width = config.width
        self.patch_embed = nnx.Conv(
            3,
            width,
            kernel_size=(config.patch_size, config.patch_size),
            strides=(config.patch_size, config.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        scale = width**-0.5
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (width,), jnp.float32))
        self.position_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (config.num_patches + 1, width), jnp.float32)
        )
        self.ln_pre = layer_norm(width, config.eps, rngs=rngs, dtype=dtype) if config.ln_pre else None
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_dim, config.act, config.eps, rngs=rngs, dtype=dtype,
            attention=config.attention, remat=config.remat, scan_layers=config.scan_layers,
        )
        self.ln_post = layer_norm(width, config.eps, rngs=rngs, dtype=dtype)
        self.proj = (
            linear(width, config.output_dim, rngs=rngs, dtype=dtype, use_bias=config.proj_bias)
            if config.output_dim is not None
            else None
        )

    @property
    def output_dim(self) -> int:
        """Width of the returned embedding: config.output_dim, or width without a projection."""
        return self.config.output_dim if self.config.output_dim is not None else self.config.width

    def __call__(self, pixels: jax.Array, *, mask_ratio: float = 0.0, mask_key: jax.Array | None = None) -> jax.Array:
        """pixels [B, H, W, 3] -> [B, output_dim]. Masks patches when mask_ratio > 0 (needs mask_key)."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"pixels must be [B, H, W, 3], got shape {pixels.shape}")
        patch = self.config.patch_size
        grid_h, grid_w = pixels.shape[1] // patch, pixels.shape[2] // patch
        if grid_h * grid_w != self.config.num_patches:
            raise ValueError(
                f"pixels of size {pixels.shape[1]}x{pixels.shape[2]} give {grid_h}x{grid_w} patches of "
                f"{patch} px, but the model was built for image_size={self.config.image_size} "
                f"({self.config.num_patches} patches)"
            )
        compute = self.dtype or jnp.float32
        patches = self.patch_embed(pixels)
        tokens = patches.reshape(patches.shape[0], grid_h * grid_w, self.config.width)
        position = self.position_embedding[...].astype(compute)
        tokens = tokens + position[1:]
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be a Python float in [0, 1)")
        if mask_ratio > 0.0:
            if mask_key is None:
                raise ValueError("mask_key is required when mask_ratio > 0")
            tokens, _ = random_patch_mask(tokens, num_kept_patches(tokens.shape[1], mask_ratio), mask_key)
        cls = (self.class_embedding[...].astype(compute) + position[0])[None, None, :]
        x = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, tokens.shape[2])), tokens], axis=1)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        pooled = self.pool_tokens(self.transformer(x))
        return self.proj(pooled) if self.proj is not None else pooled

    def pool_tokens(self, hidden_btd: jax.Array) -> jax.Array:
        """Last-block tokens [B, T, D] (class token first) -> normalised embedding [B, D] (config.pool)."""
        if self.config.pool == "cls":
            return self.ln_post(hidden_btd[:, 0])
        if self.config.pool == "gap":
            return self.ln_post(jnp.mean(hidden_btd[:, 1:], axis=1))
        return jnp.mean(self.ln_post(hidden_btd), axis=1)  # 'mean_all'
