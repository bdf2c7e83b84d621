"""Importer for OpenAI / OpenCLIP CLIP state dicts (one ``.pt``, ``.bin`` or ``.safetensors`` file).

OpenAI's layout (``clip/model.py``), ``R`` = ``transformer.resblocks.i``::

    visual.conv1.weight [D, 3, p, p]           -> patch_embed.kernel [p, p, 3, D]
    visual.class_embedding [D]                 -> class_embedding
    visual.positional_embedding [1 + N, D]     -> position_embedding
    visual.ln_pre / visual.ln_post             -> ln_pre / ln_post
    visual.proj [D, P]                         -> proj.kernel (already [in, out])
    token_embedding.weight [V, W]              -> token_embedding.embedding
    positional_embedding [ctx, W]              -> position_embedding
    ln_final                                   -> ln_final
    text_projection [W, P]                     -> proj.kernel
    *.R.ln_1 / ln_2                            -> transformer.blocks.i.ln_1 / ln_2
    *.R.attn.in_proj_weight [3W, W] (+ bias)   -> attn.q_proj / k_proj / v_proj (rows split in 3)
    *.R.attn.out_proj                          -> attn.out_proj
    *.R.mlp.c_fc / c_proj                      -> mlp.fc1 / fc2
    logit_scale                                -> logit_scale

What the tensors do not say is taken from OpenAI's conventions: heads = width // 64 in both
towers, QuickGELU, LayerNorm eps 1e-5, causal text pooled at argmax(ids) (the end-of-text
id is the largest id of OpenAI's BPE vocabulary). An OpenCLIP ``open_clip_config.json`` next
to the file (``{"model_cfg": {...}}`` or the model config itself) overrides them:
``quick_gelu`` (OpenCLIP's default is False: exact GELU), ``vision_cfg.head_width``,
``text_cfg.heads``, ``text_cfg.pool_type``; OpenCLIP options our towers cannot express raise
UnsupportedCheckpointError. ResNet image towers (``visual.layer1...``) are not supported.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import tensors
from fjsph_jax.weights.errors import (
    CheckpointFormatError,
    CheckpointKeysError,
    UnsupportedCheckpointError,
)
from fjsph_jax.weights.params import Rule, apply_rules

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
OPENAI_HEAD_WIDTH = 64
OPENAI_EPS = 1e-5
# Keys OpenAI's TorchScript archives carry besides the weights.
_IGNORABLE = ("input_resolution", "context_length", "vocab_size")
# Keys that must be present to tell the architecture.
_REQUIRED = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
)
# OpenCLIP model_cfg options and the values our towers can express.
_OPEN_CLIP_VISION_OK: Mapping[str, tuple] = {
    "pool_type": ("tok",),
    "attentional_pool": (False, None),
    "global_average_pool": (False, None),
    "no_ln_pre": (False, None),
    "final_ln_after_pool": (False, None),
    "output_tokens": (False, None),
    "ls_init_value": (None,),
    "patch_dropout": None,  # training-only: any value
    "timm_model_name": (None,),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
}
_OPEN_CLIP_TEXT_OK: Mapping[str, tuple] = {
    "pool_type": ("argmax", "first"),  # OpenCLIP's 'last' is x[:, -1], not the last real token
    "hf_model_name": (None,),
    "proj_bias": (False, None),
    "embed_cls": (False, None),
    "no_causal_mask": (False, None),
    "ls_init_value": (None,),
    "pad_id": None,
    "proj_type": ("linear", None),
    "output_tokens": (False, None),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
}


def read_open_clip_config(directory: str) -> dict | None:
    """The OpenCLIP model config next to a state-dict file, or None if there is none."""
    path = os.path.join(directory, OPEN_CLIP_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path}: cannot read the OpenCLIP config ({error})") from error
    config = config.get("model_cfg", config) if isinstance(config, dict) else None
    if not isinstance(config, dict):
        raise CheckpointFormatError(
            f"{path}: expected a JSON object (optionally under 'model_cfg')"
        )
    return config


def _check_open_clip_options(
    section: Mapping, allowed: Mapping[str, tuple], where: str, source: str
) -> None:
    bad = [
        f"{where}.{key}={section[key]!r} (supported: {list(ok)})"
        for key, ok in allowed.items()
        if key in section and ok is not None and section[key] not in ok
    ]
    if bad:
        raise UnsupportedCheckpointError(
            f"{source}: unsupported OpenCLIP option(s): {'; '.join(bad)}"
        )


def _count_blocks(arrays: Mapping[str, np.ndarray], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in arrays if k.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise CheckpointFormatError(f"{prefix}*: block indices {sorted(indices)} are not 0..n-1")
    return len(indices)


def _rows(arrays: Mapping[str, np.ndarray], key: str, default: int) -> int:
    """Leading dim of ``arrays[key]``, or ``default`` if absent (the key map reports it then)."""
    return arrays[key].shape[0] if key in arrays else default


def _heads(width: int, head_width: int, where: str, source: str) -> int:
    if width % head_width:
        raise UnsupportedCheckpointError(
            f"{source}: {where} width {width} is not a multiple of the head width {head_width}; "
            f"give the head count in an {OPEN_CLIP_CONFIG_FILE} next to the file"
        )
    return width // head_width


def openai_clip_configs(
    arrays: Mapping[str, np.ndarray], open_clip: Mapping[str, Any] | None, *, source: str
) -> tuple[ViTConfig, TextConfig]:
    """Tower configs from the tensor shapes (and an optional OpenCLIP model config)."""
    if any(k.startswith("visual.layer1.") for k in arrays):
        raise UnsupportedCheckpointError(
            f"{source}: unknown architecture: ResNet image tower (visual.layer1...)"
        )
    if any(k.startswith("visual.trunk.") for k in arrays):
        raise UnsupportedCheckpointError(
            f"{source}: unknown architecture: timm image tower (visual.trunk...)"
        )
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise CheckpointKeysError(source, missing=missing, what="the OpenAI CLIP layout")
    open_clip = open_clip or {}
    vision_cfg = open_clip.get("vision_cfg") or {}
    text_cfg = open_clip.get("text_cfg") or {}
    _check_open_clip_options(vision_cfg, _OPEN_CLIP_VISION_OK, "vision_cfg", source)
    _check_open_clip_options(text_cfg, _OPEN_CLIP_TEXT_OK, "text_cfg", source)
    act = (
        ("quick_gelu" if open_clip.get("quick_gelu", False) else "gelu")
        if open_clip
        else "quick_gelu"
    )

    conv = arrays["visual.conv1.weight"]
    width, channels, patch, patch_w = conv.shape
    if channels != 3 or patch != patch_w:
        raise UnsupportedCheckpointError(
            f"{source}: visual.conv1.weight {conv.shape}: expected [D, 3, p, p]"
        )
    num_positions = arrays["visual.positional_embedding"].shape[0]
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise UnsupportedCheckpointError(
            f"{source}: visual.positional_embedding has {num_positions} rows, not 1 + a square grid"
        )
    vision_layers = _count_blocks(arrays, "visual.transformer.resblocks.")
    vision = ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=vision_layers,
        heads=_heads(
            width, int(vision_cfg.get("head_width", OPENAI_HEAD_WIDTH)), "image tower", source
        ),
        mlp_dim=_rows(arrays, "visual.transformer.resblocks.0.mlp.c_fc.weight", 4 * width),
        output_dim=arrays["visual.proj"].shape[1],
        act=act,
        pool="cls",
        eps=OPENAI_EPS,
    )
    vocab_size, text_width = arrays["token_embedding.weight"].shape
    text_layers = _count_blocks(arrays, "transformer.resblocks.")
    if "heads" in text_cfg:
        text_heads = int(text_cfg["heads"])
    else:
        text_heads = _heads(text_width, OPENAI_HEAD_WIDTH, "text tower", source)
    pool = text_cfg.get("pool_type", "argmax")
    text = TextConfig(
        vocab_size=vocab_size,
        context_length=arrays["positional_embedding"].shape[0],
        width=text_width,
        layers=text_layers,
        heads=text_heads,
        mlp_dim=_rows(arrays, "transformer.resblocks.0.mlp.c_fc.weight", 4 * text_width),
        output_dim=arrays["text_projection"].shape[1],
        act=act,
        causal=True,
        pool=pool,
        eos_token_id=None,
        eps=OPENAI_EPS,
    )
    return vision, text


def _split_rows(part: int):
    def take(w):
        rows = w.shape[0] // 3
        return w[part * rows : (part + 1) * rows]

    return take


def _blocks(tower: str, prefix: str, layers: int) -> list[Rule]:
    rules = []
    for i in range(layers):
        ours, theirs = f"transformer.blocks.{i}", f"{prefix}transformer.resblocks.{i}"
        for ln in ("ln_1", "ln_2"):
            rules += [
                Rule(tower, f"{ours}.{ln}.scale", (f"{theirs}.{ln}.weight",)),
                Rule(tower, f"{ours}.{ln}.bias", (f"{theirs}.{ln}.bias",)),
            ]
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            take = _split_rows(part)
            rules += [
                Rule(
                    tower,
                    f"{ours}.attn.{name}.kernel",
                    (f"{theirs}.attn.in_proj_weight",),
                    lambda w, take=take: take(w).T,
                ),
                Rule(tower, f"{ours}.attn.{name}.bias", (f"{theirs}.attn.in_proj_bias",), take),
            ]
        for mine, theirs_name in (
            ("attn.out_proj", "attn.out_proj"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            rules += [
                Rule(
                    tower,
                    f"{ours}.{mine}.kernel",
                    (f"{theirs}.{theirs_name}.weight",),
                    lambda w: w.T,
                ),
                Rule(tower, f"{ours}.{mine}.bias", (f"{theirs}.{theirs_name}.bias",)),
            ]
    return rules


def openai_clip_rules(vision_layers: int, text_layers: int) -> list[Rule]:
    """The key map of an OpenAI CLIP state dict onto our towers (module docstring)."""

    def ln(tower, ours, theirs):
        return [
            Rule(tower, f"{ours}.scale", (f"{theirs}.weight",)),
            Rule(tower, f"{ours}.bias", (f"{theirs}.bias",)),
        ]

    return [
        Rule(
            "vision",
            "patch_embed.kernel",
            ("visual.conv1.weight",),
            lambda w: w.transpose(2, 3, 1, 0),
        ),
        Rule("vision", "class_embedding", ("visual.class_embedding",)),
        Rule("vision", "position_embedding", ("visual.positional_embedding",)),
        *ln("vision", "ln_pre", "visual.ln_pre"),
        *_blocks("vision", "visual.", vision_layers),
        *ln("vision", "ln_post", "visual.ln_post"),
        Rule("vision", "proj.kernel", ("visual.proj",)),
        Rule("text", "token_embedding.embedding", ("token_embedding.weight",)),
        Rule("text", "position_embedding", ("positional_embedding",)),
        *_blocks("text", "", text_layers),
        *ln("text", "ln_final", "ln_final"),
        Rule("text", "proj.kernel", ("text_projection",)),
        Rule("model", "logit_scale", ("logit_scale",), lambda s: np.reshape(s, ())),
    ]


def read_openai_clip(path: str) -> dict:
    """Configs and parameters of an OpenAI-layout state-dict file (see module docstring).

    Returns the keyword arguments of PretrainedTowers apart from source, kind and tokenizer.
    """
    arrays = tensors.read_state_dict_file(path)
    if any(k.startswith(("vision_model.", "text_model.")) for k in arrays):
        raise CheckpointFormatError(
            f"{path}: this file has transformers CLIP key names (vision_model.*, text_model.*); "
            f"point at its directory, which needs the config.json saved with it"
        )
    open_clip = read_open_clip_config(os.path.dirname(os.path.abspath(path)))
    vision, text = openai_clip_configs(arrays, open_clip, source=path)
    params, origin = apply_rules(
        arrays,
        openai_clip_rules(vision.layers, text.layers),
        source=path,
        ignorable=lambda k: k in _IGNORABLE,
    )
    return dict(
        vision=vision,
        text=text,
        vision_params=params["vision"],
        text_params=params["text"],
        logit_scale=float(params["model"]["logit_scale"]),
        origin=origin,
    )
