"""Flax NNX building blocks: CLIP-shaped ViT and text encoders, hash heads, modality interaction.

The methods compose them (FJSPH's network is :mod:`fjsph_jax.methods.fjsph.model`).
"""
from fjsph_jax.models.heads import HashHead
from fjsph_jax.models.interaction import ModalityInteraction
from fjsph_jax.models.layers import MLP, MultiHeadAttention, Transformer, TransformerBlock, activation
from fjsph_jax.models.registry import TEXT_PRESETS, VISION_PRESETS, text_config, vision_config
from fjsph_jax.models.text import TextConfig, TextTransformer
from fjsph_jax.models.vit import ViTConfig, VisionTransformer, num_kept_patches, random_patch_mask

__all__ = [
    "HashHead",
    "MLP",
    "ModalityInteraction",
    "MultiHeadAttention",
    "TEXT_PRESETS",
    "TextConfig",
    "TextTransformer",
    "Transformer",
    "TransformerBlock",
    "VISION_PRESETS",
    "ViTConfig",
    "VisionTransformer",
    "activation",
    "num_kept_patches",
    "random_patch_mask",
    "text_config",
    "vision_config",
]
