"""Importer for Hugging Face transformers CLIP checkpoint directories.

A directory written by ``transformers.CLIPModel.save_pretrained`` (or downloaded from the
hub, e.g. openai/clip-vit-base-patch32, -base-patch16, -large-patch14) holds::

    config.json                       model_type "clip", text_config, vision_config, projection_dim
    model.safetensors                 or model.safetensors.index.json + shards,
                                      or pytorch_model.bin (+ .index.json)
    vocab.json + merges.txt / tokenizer.json   (optional; see tokenizers.py)

config.json is parsed here with transformers' defaults (importing ``transformers.CLIPConfig``
would import torch). Key map (HF Linear weights are [out, in]: transposed; the patch conv
[D, 3, p, p] becomes [p, p, 3, D]); ``L`` = ``encoder.layers.i``::

    vision_model.embeddings.patch_embedding.weight    -> patch_embed.kernel
    vision_model.embeddings.class_embedding           -> class_embedding
    vision_model.embeddings.position_embedding.weight -> position_embedding
    vision_model.pre_layrnorm / post_layernorm        -> ln_pre / ln_post
    text_model.embeddings.token_embedding.weight      -> token_embedding.embedding
    text_model.embeddings.position_embedding.weight   -> position_embedding
    text_model.final_layer_norm                       -> ln_final
    *.L.layer_norm1 / layer_norm2                     -> transformer.blocks.i.ln_1 / ln_2
    *.L.self_attn.{q,k,v,out}_proj                    -> transformer.blocks.i.attn.{q,k,v,out}_proj
    *.L.mlp.fc1 / fc2                                 -> transformer.blocks.i.mlp.fc1 / fc2
    visual_projection.weight / text_projection.weight -> proj.kernel of each tower
    logit_scale                                       -> logit_scale

Text pooling follows ``CLIPTextTransformer``: the argmax of the ids when the config's
``eos_token_id`` is the legacy value 2, else the first position of ``eos_token_id``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import tensors
from fjsph_jax.weights.errors import CheckpointFormatError, UnsupportedCheckpointError
from fjsph_jax.weights.params import Rule, apply_rules

CONFIG_FILE = "config.json"
# Weight files looked for, in this order.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SUPPORTED_MODEL_TYPES = ("clip",)

# transformers' hidden_act names -> ours.
ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (keys config.json omits).
TEXT_DEFAULTS: Mapping[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
VISION_DEFAULTS: Mapping[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM_DEFAULT = 512
# The eos id configs had before transformers PR #24773; with it, HF pools at argmax(ids).
LEGACY_EOS_TOKEN_ID = 2


def read_config_json(directory: str) -> dict:
    """config.json of ``directory`` as a dict (CheckpointFormatError if absent or not JSON)."""
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path}: cannot read the model config ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object")
    return config


def is_hf_checkpoint_dir(path: str) -> bool:
    """True if ``path`` is a directory with a transformers config.json (any model_type)."""
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return False
    try:
        return "model_type" in read_config_json(path)
    except CheckpointFormatError:
        return False


def _sub_config(config: Mapping, name: str, defaults: Mapping) -> dict:
    """defaults | config[name] | config[name + '_dict'] (legacy override, as CLIPConfig does)."""
    merged = dict(defaults)
    merged.update(config.get(name) or {})
    legacy = config.get(name + "_dict")
    if legacy:
        merged.update(defaults)
        merged.update(legacy)
    return merged


def _activation(name: str, where: str, source: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedCheckpointError(
            f"{source}: {where}.hidden_act={name!r} is not supported; "
            f"allowed: {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _square(value, field: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise UnsupportedCheckpointError(
                f"{source}: vision_config.{field}={value} is not square"
            )
        value = value[0]
    return int(value)


def hf_clip_configs(config: Mapping, *, source: str) -> tuple[ViTConfig, TextConfig]:
    """Our tower configs for a transformers CLIP config.json (a parsed dict)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedCheckpointError(
            f"{source}: unknown architecture model_type={model_type!r} "
            f"(architectures={config.get('architectures')}); "
            f"supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    text = _sub_config(config, "text_config", TEXT_DEFAULTS)
    vision = _sub_config(config, "vision_config", VISION_DEFAULTS)
    projection_dim = int(config.get("projection_dim") or PROJECTION_DIM_DEFAULT)
    if int(vision["num_channels"]) != 3:
        raise UnsupportedCheckpointError(
            f"{source}: vision_config.num_channels={vision['num_channels']}; "
            "only 3 (RGB) is supported"
        )
    eos = text["eos_token_id"]
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise UnsupportedCheckpointError(
                f"{source}: text_config.eos_token_id={eos}: one id expected"
            )
        eos = eos[0]
    legacy = eos == LEGACY_EOS_TOKEN_ID
    vision_config = ViTConfig(
        image_size=_square(vision["image_size"], "image_size", source),
        patch_size=_square(vision["patch_size"], "patch_size", source),
        width=int(vision["hidden_size"]),
        layers=int(vision["num_hidden_layers"]),
        heads=int(vision["num_attention_heads"]),
        mlp_dim=int(vision["intermediate_size"]),
        output_dim=projection_dim,
        act=_activation(vision["hidden_act"], "vision_config", source),
        pool="cls",
        eps=float(vision["layer_norm_eps"]),
    )
    text_config = TextConfig(
        vocab_size=int(text["vocab_size"]),
        context_length=int(text["max_position_embeddings"]),
        width=int(text["hidden_size"]),
        layers=int(text["num_hidden_layers"]),
        heads=int(text["num_attention_heads"]),
        mlp_dim=int(text["intermediate_size"]),
        output_dim=projection_dim,
        act=_activation(text["hidden_act"], "text_config", source),
        causal=True,
        pool="argmax" if legacy else "eos",
        eos_token_id=None if legacy else int(eos),
        eps=float(text["layer_norm_eps"]),
    )
    return vision_config, text_config


def read_hf_weights(directory: str) -> tuple[dict[str, np.ndarray], str]:
    """``(arrays, file)`` from the first of WEIGHT_FILES present in ``directory``."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            if name.endswith(".index.json"):
                return tensors.read_sharded(directory, name), path
            return tensors.read_state_dict_file(path), path
    present = sorted(os.listdir(directory))
    raise CheckpointFormatError(
        f"{directory}: a transformers checkpoint directory needs one of {list(WEIGHT_FILES)}; "
        f"found {present}"
    )


def _linear(tower: str, ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(tower, f"{ours}.kernel", (f"{theirs}.weight",), lambda w: w.T)]
    if bias:
        rules.append(Rule(tower, f"{ours}.bias", (f"{theirs}.bias",)))
    return rules


def _layer_norm(tower: str, ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(tower, f"{ours}.scale", (f"{theirs}.weight",)),
        Rule(tower, f"{ours}.bias", (f"{theirs}.bias",)),
    ]


def _encoder_rules(tower: str, prefix: str, layers: int) -> list[Rule]:
    rules = []
    for i in range(layers):
        ours, theirs = f"transformer.blocks.{i}", f"{prefix}.encoder.layers.{i}"
        rules += _layer_norm(tower, f"{ours}.ln_1", f"{theirs}.layer_norm1")
        rules += _layer_norm(tower, f"{ours}.ln_2", f"{theirs}.layer_norm2")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rules += _linear(tower, f"{ours}.attn.{proj}", f"{theirs}.self_attn.{proj}")
        rules += _linear(tower, f"{ours}.mlp.fc1", f"{theirs}.mlp.fc1")
        rules += _linear(tower, f"{ours}.mlp.fc2", f"{theirs}.mlp.fc2")
    return rules


def hf_clip_rules(vision_layers: int, text_layers: int) -> list[Rule]:
    """The key map of a transformers CLIPModel state dict onto our towers (module docstring)."""
    v, t = "vision_model", "text_model"
    rules = [
        Rule(
            "vision",
            "patch_embed.kernel",
            (f"{v}.embeddings.patch_embedding.weight",),
            lambda w: w.transpose(2, 3, 1, 0),
        ),
        Rule("vision", "class_embedding", (f"{v}.embeddings.class_embedding",)),
        Rule("vision", "position_embedding", (f"{v}.embeddings.position_embedding.weight",)),
        *_layer_norm("vision", "ln_pre", f"{v}.pre_layrnorm"),
        *_encoder_rules("vision", v, vision_layers),
        *_layer_norm("vision", "ln_post", f"{v}.post_layernorm"),
        *_linear("vision", "proj", "visual_projection", bias=False),
        Rule("text", "token_embedding.embedding", (f"{t}.embeddings.token_embedding.weight",)),
        Rule("text", "position_embedding", (f"{t}.embeddings.position_embedding.weight",)),
        *_encoder_rules("text", t, text_layers),
        *_layer_norm("text", "ln_final", f"{t}.final_layer_norm"),
        *_linear("text", "proj", "text_projection", bias=False),
        Rule("model", "logit_scale", ("logit_scale",), lambda s: np.reshape(s, ())),
    ]
    return rules


def _ignorable(key: str) -> bool:
    # Non-persistent buffers that older transformers versions still saved.
    return key.endswith("embeddings.position_ids")


def read_hf_clip(directory: str) -> dict:
    """Configs and parameters of a transformers CLIP directory.

    Returns a dict with ``vision``, ``text`` (configs), ``vision_params``, ``text_params``,
    ``logit_scale`` (float) and ``origin``: the keyword arguments of PretrainedTowers
    apart from source, kind and tokenizer.
    """
    vision_config, text_config = hf_clip_configs(read_config_json(directory), source=directory)
    arrays, weights_path = read_hf_weights(directory)
    params, origin = apply_rules(
        arrays,
        hf_clip_rules(vision_config.layers, text_config.layers),
        source=weights_path,
        ignorable=_ignorable,
    )
    return dict(
        vision=vision_config,
        text=text_config,
        vision_params=params["vision"],
        text_params=params["text"],
        logit_scale=float(params["model"]["logit_scale"]),
        origin=origin,
    )
