"""Named encoder presets, chosen by string from configs (e.g. config.model.vision = 'vit_tiny').

Vision: 'vit_micro' (tests), 'vit_tiny' (embedded demo, 32 px), CLIP 'vit_b32', 'vit_b16', 'vit_l14' (224 px),
FLIP 'flip_vit_b16', 'flip_vit_l16', 'flip_vit_h14' (224 px).
Text: 'text_micro' (tests), 'text_tiny' (demo), CLIP 'text_base' (pairs with vit_b32/vit_b16), CLIP 'text_large'
(pairs with vit_l14), BERT-style 'bert_base' (WordPiece vocabulary, bidirectional, pooled at
token 0, exact GELU, padding masked: FLIP-like, not FLIP's exact tower), FLIP 'flip_text_base',
'flip_text_large', 'flip_text_huge'.

The FLIP presets are exactly the towers of facebookresearch/flip's configs (cfg_flip_base,
cfg_flip_large, cfg_flip_huge14 on configs/default.py): no ln_pre, tanh GELU, LayerNorm eps
1e-6, image embedding = mean of the normalised tokens (clr.img_avg_token), a bidirectional
text tower over 30522 + 1 word pieces that attends to its padding, pooled at token 0,
projections without bias. Pair flip_vit_X with flip_text_X (same output_dim).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig


def _flip_vit(*, patch_size: int, width: int, layers: int, heads: int, output_dim: int) -> ViTConfig:
    """A FLIP image tower at 224 px: no ln_pre, mean of the normalised tokens, tanh GELU, eps 1e-6."""
    return ViTConfig(
        image_size=224, patch_size=patch_size, width=width, layers=layers, heads=heads, mlp_dim=4 * width,
        output_dim=output_dim, act="gelu_tanh", pool="mean_all", eps=1e-6, ln_pre=False,
    )


def _flip_text(*, width: int, layers: int, heads: int, output_dim: int) -> TextConfig:
    """A FLIP text tower: BERT WordPiece ids (30522 + 1 rows), 32 tokens, bidirectional, pads attended."""
    return TextConfig(
        vocab_size=30523, context_length=32, width=width, layers=layers, heads=heads, mlp_dim=4 * width,
        output_dim=output_dim, act="gelu_tanh", causal=False, pool="first", eps=1e-6, mask_padding=False,
    )


VISION_PRESETS: Mapping[str, ViTConfig] = {
    # One block, for tests: the smallest tower that exercises every code path.
    "vit_micro": ViTConfig(
        image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_dim=64, output_dim=32, act="gelu"
    ),
    "vit_tiny": ViTConfig(
        image_size=32, patch_size=4, width=96, layers=3, heads=3, mlp_dim=384, output_dim=64, act="gelu"
    ),
    "vit_b32": ViTConfig(
        image_size=224, patch_size=32, width=768, layers=12, heads=12, mlp_dim=3072, output_dim=512
    ),
    "vit_b16": ViTConfig(
        image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_dim=3072, output_dim=512
    ),
    "vit_l14": ViTConfig(
        image_size=224, patch_size=14, width=1024, layers=24, heads=16, mlp_dim=4096, output_dim=768
    ),
    # FLIP (facebookresearch/flip cfg_flip_base / cfg_flip_large / cfg_flip_huge14).
    "flip_vit_b16": _flip_vit(patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    "flip_vit_l16": _flip_vit(patch_size=16, width=1024, layers=24, heads=16, output_dim=768),
    "flip_vit_h14": _flip_vit(patch_size=14, width=1280, layers=32, heads=16, output_dim=1024),
}

TEXT_PRESETS: Mapping[str, TextConfig] = {
    "text_micro": TextConfig(
        vocab_size=128, context_length=12, width=32, layers=1, heads=2, mlp_dim=64, output_dim=32,
        act="gelu", causal=True, pool="last",
    ),
    "text_tiny": TextConfig(
        vocab_size=512, context_length=24, width=64, layers=2, heads=2, mlp_dim=256, output_dim=64,
        act="gelu", causal=True, pool="last",
    ),
    # OpenAI CLIP text tower: BPE vocabulary whose end-of-text id 49407 is the largest id.
    "text_base": TextConfig(
        vocab_size=49408, context_length=77, width=512, layers=12, heads=8, mlp_dim=2048, output_dim=512,
        act="quick_gelu", causal=True, pool="argmax", eos_token_id=49407,
    ),
    "text_large": TextConfig(
        vocab_size=49408, context_length=77, width=768, layers=12, heads=12, mlp_dim=3072, output_dim=768,
        act="quick_gelu", causal=True, pool="argmax", eos_token_id=49407,
    ),
    # BERT-style text tower (WordPiece ids, bidirectional, pooled at token 0) with exact GELU and
    # masked padding: FLIP-like but not FLIP's function; the flip_text_* presets are exact.
    "bert_base": TextConfig(
        vocab_size=30522, context_length=32, width=768, layers=12, heads=12, mlp_dim=3072, output_dim=512,
        act="gelu", causal=False, pool="first", eps=1e-6,
    ),
    # FLIP text towers (pair with flip_vit_b16 / flip_vit_l16 / flip_vit_h14).
    "flip_text_base": _flip_text(width=512, layers=12, heads=8, output_dim=512),
    "flip_text_large": _flip_text(width=768, layers=12, heads=12, output_dim=768),
    "flip_text_huge": _flip_text(width=1024, layers=24, heads=16, output_dim=1024),
}

_Config = TypeVar("_Config", ViTConfig, TextConfig)


def _lookup(kind: str, presets: Mapping[str, _Config], name: str, overrides: dict[str, Any]) -> _Config:
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; allowed: {sorted(presets)}")
    base = presets[name]
    fields = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown {kind} override(s) {unknown} for {name!r}; allowed keys: {fields}")
    return dataclasses.replace(base, **overrides)


def vision_config(name: str, **overrides: Any) -> ViTConfig:
    """The ViTConfig preset `name` with fields replaced by `overrides` (e.g. output_dim=64)."""
    return _lookup("vision", VISION_PRESETS, name, overrides)


def text_config(name: str, **overrides: Any) -> TextConfig:
    """The TextConfig preset `name` with fields replaced by `overrides` (e.g. vocab_size=1000)."""
    return _lookup("text", TEXT_PRESETS, name, overrides)
