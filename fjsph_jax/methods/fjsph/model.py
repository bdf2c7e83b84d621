"""The FJSPH model: two encoders, per-modality hash heads, an optional fusion block.

    f_img = vision(pixels)                 [B, feature_dim]  (FLIP masking while training)
    f_txt = text(input_ids, mask)          [B, feature_dim]
    e_img = embed_image(f_img)             [B, feature_dim]  (= f_img end to end)
    e_txt = embed_text(f_txt)              [B, feature_dim]
    h_img = image_hash(e_img)              [B, bits] in (-1, 1)
    h_txt = text_hash(e_txt)               [B, bits] in (-1, 1)
    h_fus = fused_hash(interaction(e_img, e_txt))   [B, bits]   (training only; optional)
    logit_scale                            scalar, log-space: logits = exp(s) * cos-sim

The contrastive loss acts on ``e_img, e_txt``: the embeddings that feed the hash heads.

Frozen-encoder mode (config.vision and config.text None): features arrive precomputed
(``[B, image_input_dim]`` and ``[B, text_input_dim]``: tower features, or any feature
file), `image_features` / `text_features` raise, and trainable projections
``e = image_proj(f)`` / ``text_proj(f)`` (Linear to ``feature_dim``) map them into the
space that the contrastive loss, the interaction block and the heads share. Without them
the contrastive term would act on constants and train nothing but the temperature.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.heads import HashHead
from fjsph_jax.models.interaction import ModalityInteraction
from fjsph_jax.models.layers import linear
from fjsph_jax.models.text import TextConfig, TextTransformer
from fjsph_jax.models.vit import ViTConfig, VisionTransformer

INTERACTION_KINDS = ("none", "transformer")


@dataclasses.dataclass(frozen=True)
class FJSPHConfig:
    """FJSPH architecture. vision/text None: frozen-encoder mode (precomputed features).

    interaction_mlp_dim None means 4 * feature_dim; hash_act is the hash heads' activation.
    """

    vision: ViTConfig | None
    text: TextConfig | None
    feature_dim: int
    bits: int
    hash_hidden_dim: int
    interaction: str
    interaction_layers: int = 1
    interaction_heads: int = 2
    init_logit_scale: float = math.log(1 / 0.07)
    interaction_mlp_dim: int | None = None
    hash_act: str = "gelu"
    image_input_dim: int | None = None  # frozen mode: feature dims (None: feature_dim)
    text_input_dim: int | None = None

    def __post_init__(self):
        if self.interaction not in INTERACTION_KINDS:
            raise ValueError(f"FJSPHConfig.interaction={self.interaction!r}; allowed: {list(INTERACTION_KINDS)}")
        for name, encoder in (("vision", self.vision), ("text", self.text)):
            if encoder is None:
                continue
            out = encoder.output_dim if encoder.output_dim is not None else encoder.width
            if out != self.feature_dim:
                raise ValueError(
                    f"FJSPHConfig.{name} output dim {out} must equal feature_dim={self.feature_dim} "
                    f"(set {name}.output_dim={self.feature_dim})"
                )
        if self.interaction == "transformer" and self.feature_dim % self.interaction_heads != 0:
            raise ValueError(
                f"FJSPHConfig.interaction_heads={self.interaction_heads} must divide feature_dim={self.feature_dim}"
            )

    @property
    def frozen_encoders(self) -> bool:
        """True when the model has no encoders and takes precomputed features for both modalities."""
        return self.vision is None and self.text is None


class FJSPH(nnx.Module):
    """FLIP-based Joint Similarity Preserving Hashing network (see module docstring)."""

    def __init__(self, config: FJSPHConfig, *, rngs: nnx.Rngs, dtype=None):
        self.config = config
        self.vision = VisionTransformer(config.vision, rngs=rngs, dtype=dtype) if config.vision else None
        self.text = TextTransformer(config.text, rngs=rngs, dtype=dtype) if config.text else None
        for name, encoder in (("vision", self.vision), ("text", self.text)):
            if encoder is not None and encoder.output_dim != config.feature_dim:
                raise ValueError(
                    f"{name} encoder output_dim={encoder.output_dim} must equal feature_dim={config.feature_dim}"
                )
        if config.frozen_encoders:
            self.image_proj = linear(
                config.image_input_dim or config.feature_dim, config.feature_dim, rngs=rngs,
                dtype=dtype)
            self.text_proj = linear(
                config.text_input_dim or config.feature_dim, config.feature_dim, rngs=rngs,
                dtype=dtype)
        else:
            self.image_proj = None
            self.text_proj = None
        head = dict(rngs=rngs, act=config.hash_act, dtype=dtype)
        self.image_hash = HashHead(config.feature_dim, config.bits, config.hash_hidden_dim, **head)
        self.text_hash = HashHead(config.feature_dim, config.bits, config.hash_hidden_dim, **head)
        if config.interaction == "transformer":
            self.interaction = ModalityInteraction(
                config.feature_dim,
                config.interaction_layers,
                config.interaction_heads,
                config.interaction_mlp_dim or 4 * config.feature_dim,
                rngs=rngs,
                dtype=dtype,
            )
            self.fused_hash = HashHead(config.feature_dim, config.bits, config.hash_hidden_dim, **head)
        else:
            self.interaction = None
            self.fused_hash = None
        self.logit_scale = nnx.Param(jnp.asarray(config.init_logit_scale, jnp.float32))

    def image_features(
        self, pixels: jax.Array, *, mask_ratio: float = 0.0, mask_key: jax.Array | None = None
    ) -> jax.Array:
        """pixels [B, H, W, 3] -> [B, feature_dim] (unnormalised; FLIP-masked when mask_ratio > 0)."""
        if self.vision is None:
            raise ValueError(
                "image_features needs an image encoder, but this FJSPH was built in frozen-encoder mode "
                "(config.vision is None): pass precomputed features to hash_image instead"
            )
        return self.vision(pixels, mask_ratio=mask_ratio, mask_key=mask_key)

    def text_features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids, attention_mask [B, L] -> [B, feature_dim] (unnormalised)."""
        if self.text is None:
            raise ValueError(
                "text_features needs a text encoder, but this FJSPH was built in frozen-encoder mode "
                "(config.text is None): pass precomputed features to hash_text instead"
            )
        return self.text(input_ids, attention_mask)

    def embed_image(self, features: jax.Array) -> jax.Array:
        """Image features -> the embedding the heads read [B, feature_dim] (projected in
        frozen mode, unchanged end to end)."""
        return features if self.image_proj is None else self.image_proj(features)

    def embed_text(self, features: jax.Array) -> jax.Array:
        """Text features -> the embedding the heads read [B, feature_dim]."""
        return features if self.text_proj is None else self.text_proj(features)

    def hash_image(self, features: jax.Array) -> jax.Array:
        """Image features -> relaxed codes [B, bits] float32 in (-1, 1)."""
        return self.image_hash(self.embed_image(features))

    def hash_text(self, features: jax.Array) -> jax.Array:
        """Text features -> relaxed codes [B, bits] float32 in (-1, 1)."""
        return self.text_hash(self.embed_text(features))

    def fuse(self, image_embedding: jax.Array, text_embedding: jax.Array) -> jax.Array | None:
        """Paired embeddings ([B, D], [B, D], from :meth:`embed_image` / :meth:`embed_text`)
        -> fused relaxed codes [B, bits]; None when interaction='none'."""
        if self.interaction is None:
            return None
        return self.fused_hash(self.interaction(image_embedding, text_embedding))
