"""Named encoder presets, chosen by string from configs (e.g. config.model.vision = 'vit_tiny').

Vision: 'vit_micro' (tests), 'vit_tiny' (embedded demo, 32 px), CLIP 'vit_b32', 'vit_b16', 'vit_l14' (224 px).
Text: 'text_micro' (tests), 'text_tiny' (demo), CLIP 'text_base' (pairs with vit_b32/vit_b16), CLIP 'text_large'
(pairs with vit_l14), FLIP-style 'bert_base' (BERT WordPiece vocabulary, bidirectional,
pooled at token 0).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig

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
    # FLIP text tower: BERT WordPiece vocabulary, bidirectional, pooled at [CLS] (token 0).
    "bert_base": TextConfig(
        vocab_size=30522, context_length=32, width=768, layers=12, heads=12, mlp_dim=3072, output_dim=512,
        act="gelu", causal=False, pool="first", eps=1e-6,
    ),
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
