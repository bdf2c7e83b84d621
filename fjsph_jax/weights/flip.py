"""Importer for the official FLIP checkpoints (facebookresearch/flip, t5x format).

Parameter tree (``models_flip.py``; ``B`` = ``Transformer/encoderblock_NN``)::

    img_encoder/embedding/{kernel [p, p, 3, D], bias [D]}     patch conv, with bias
    img_encoder/cls [1, 1, D]                                 class token (gets no position)
    img_encoder/posembed_encoder/pos_embedding [1, 1 + N, D]  fixed 2-D sin-cos, row 0 unused
    txt_encoder/token_embedding/embedding [V, W]              BERT WordPiece ids (V = 30522 + 1)
    txt_encoder/posembed_encoder/pos_embedding [1, L, W]      learned
    */B/LayerNorm_0, LayerNorm_1                              pre-LN blocks (eps 1e-6)
    */B/MultiHeadDotProductAttention_0/{query,key,value,out}  kernels [in, out] (+ bias)
    */B/MlpBlock_0/Dense_0, Dense_1                           GELU (tanh approximation)
    */Transformer/encoder_norm                                final LayerNorm
    img_mlp1/kernel [D, P], txt_mlp1/kernel [W, P]            projections (+ bias: proj_out_bias)
    logit_scale [1]                                           used as exp(clip(s, 0, log 100))

FLIP's forward pass (inference, no masking)::

    x_img = encoder_norm(blocks([cls; conv(pixels) + pos[1:]]))        [B, 1 + N, D]
    z_img = mean_t x_img[:, t]  (clr.img_avg_token, the default)  or  x_img[:, 0]
    x_txt = encoder_norm(blocks(embed(ids) + pos))                     [B, L, W], no padding mask
    z_txt = x_txt[:, 0]  (default)  or  mean_t x_txt[:, t]  (clr.txt_avg_token)
    z     = z @ mlp1 (+ bias), then L2-normalised

Head counts, pooling and the text options are not in the tensors: they come from a
``flip_config.json`` next to the checkpoint (FLIP's ml_collections config as JSON, any
subset of it) and otherwise from FLIP's own configs (head counts by width: 512 -> 8,
768 -> 12, 1024 -> 16, 1280 -> 16; ``clr.img_avg_token=True``, ``clr.txt_avg_token=False``).

How it maps onto our towers, exactly: the patch-conv bias is folded into the patch rows of
``position_embedding`` (FLIP adds both to every patch token before masking), the class
token's position row is zero, ``encoder_norm`` becomes ``ln_post`` / ``ln_final``, blocks
map one to one; the image tower has ``ln_pre=False`` and ``pool='mean_all'`` (or 'cls'),
the text tower is bidirectional with ``mask_padding=False`` and ``pool='first'`` (or
'mean_all'), and ``proj_bias`` follows ``clr.proj_out_bias`` (the presence of
``img_mlp1/bias`` / ``txt_mlp1/bias``).

What our towers cannot represent makes :func:`read_flip` raise
``UnsupportedCheckpointError("<path>: unsupported FLIP variant: ...")`` naming every such
feature (:func:`unsupported_features`): a non-square or non-RGB patch kernel, a position
embedding that is not 1 + a square grid, a head count that does not divide the width, and
``model.model_img.use_cls_token=False`` in the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping

import numpy as np

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights.errors import (
    CheckpointFormatError,
    CheckpointKeysError,
    UnsupportedCheckpointError,
)
from fjsph_jax.weights.params import FlatParams, Rule, apply_rules
from fjsph_jax.weights.t5x import find_t5x_checkpoint, read_t5x_params

FLIP_CONFIG_FILE = "flip_config.json"
FLIP_EPS = 1e-6
FLIP_ACT = "gelu_tanh"  # flax.linen.gelu defaults to approximate=True
# Heads per width in FLIP's configs (cfg_flip_base/large/huge14): head width 64, ViT-H 80.
KNOWN_HEADS: Mapping[int, int] = {512: 8, 768: 12, 1024: 16, 1280: 16}
MAX_LOGIT_SCALE = math.log(100.0)
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_REQUIRED = (
    "img_encoder/embedding/kernel",
    "img_encoder/cls",
    "img_encoder/posembed_encoder/pos_embedding",
    "img_mlp1/kernel",
    "txt_encoder/token_embedding/embedding",
    "txt_encoder/posembed_encoder/pos_embedding",
    "txt_mlp1/kernel",
)


@dataclasses.dataclass(frozen=True)
class FlipArchitecture:
    """A FLIP checkpoint's architecture, and the tower configs that hold its weights.

    ``vision`` / ``text`` are the configs of our towers that compute FLIP's image and text
    embeddings exactly (before the L2 normalisation); the other fields record the FLIP
    options they were derived from.
    """

    vision: ViTConfig
    text: TextConfig
    img_avg_token: bool
    txt_avg_token: bool
    img_proj_bias: bool
    txt_proj_bias: bool
    txt_cls_token: bool
    logit_scale: float


def unsupported_features(params: Mapping[str, np.ndarray], config: Mapping) -> list[str]:
    """What of FLIP ``params`` (flat t5x keys, the required ones present) and ``config`` our
    towers cannot represent; empty when the checkpoint maps exactly."""
    problems = []
    kernel_shape = tuple(params["img_encoder/embedding/kernel"].shape)
    if len(kernel_shape) != 4 or kernel_shape[2] != 3 or kernel_shape[0] != kernel_shape[1]:
        problems.append(
            f"img_encoder/embedding/kernel has shape {kernel_shape}; only square patches of RGB "
            "pixels, [p, p, 3, D], are supported"
        )
    pos_shape = tuple(params["img_encoder/posembed_encoder/pos_embedding"].shape)
    if (
        len(pos_shape) != 3
        or pos_shape[1] < 2
        or math.isqrt(pos_shape[1] - 1) ** 2 != pos_shape[1] - 1
    ):
        problems.append(
            f"img_encoder/posembed_encoder/pos_embedding has shape {pos_shape}, not [1, 1 + G * G, D] "
            "(only square grids of patches are supported)"
        )
    if not _option(config, "model.model_img.use_cls_token", True):
        problems.append("model.model_img.use_cls_token=False (the image tower needs a class token)")
    for tower, tower_config, width in (
        ("img_encoder", "model_img", kernel_shape[-1]),
        ("txt_encoder", "model_txt", params["txt_encoder/token_embedding/embedding"].shape[-1]),
    ):
        heads = _option(config, f"model.{tower_config}.transformer.num_heads", None)
        if heads is not None and (int(heads) <= 0 or width % int(heads) != 0):
            problems.append(
                f"model.{tower_config}.transformer.num_heads={heads} does not divide the "
                f"{tower} width {width}"
            )
    return problems


def read_flip_config(directory: str) -> dict:
    """FLIP options from ``flip_config.json`` in ``directory`` (FLIP's config as JSON), or {}."""
    path = os.path.join(directory, FLIP_CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path}: cannot read the FLIP config ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object")
    return config


def _option(config: Mapping, dotted: str, default: Any) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _count_blocks(params: Mapping[str, np.ndarray], tower: str) -> int:
    prefix = tower + "/"
    indices = set()
    for key in params:
        if key.startswith(prefix):
            match = _BLOCK.match(key[len(prefix) :])
            if match:
                indices.add(int(match.group(1)))
    if indices != set(range(len(indices))):
        raise CheckpointFormatError(
            f"{tower}: encoder block indices {sorted(indices)} are not 0..n-1"
        )
    return len(indices)


def _heads(config: Mapping, tower_config: str, width: int, source: str) -> int:
    heads = _option(config, f"model.{tower_config}.transformer.num_heads", None)
    if heads is not None:
        return int(heads)
    if width not in KNOWN_HEADS:
        raise UnsupportedCheckpointError(
            f"{source}: cannot tell the head count of a FLIP tower of width {width} (known widths: "
            f"{dict(KNOWN_HEADS)}); give model.{tower_config}.transformer.num_heads in "
            f"{FLIP_CONFIG_FILE}"
        )
    return KNOWN_HEADS[width]


def flip_architecture(
    params: Mapping[str, np.ndarray], config: Mapping, *, source: str
) -> FlipArchitecture:
    """The architecture of FLIP ``params`` (flat t5x keys); ``config`` for what tensors omit."""
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise CheckpointKeysError(source, missing=missing, what="the FLIP layout")
    problems = unsupported_features(params, config)
    if problems:
        raise UnsupportedCheckpointError(
            f"{source}: unsupported FLIP variant: " + "; ".join(problems)
        )
    patch, _, _, width = params["img_encoder/embedding/kernel"].shape
    grid = math.isqrt(params["img_encoder/posembed_encoder/pos_embedding"].shape[1] - 1)
    img_avg_token = bool(_option(config, "model.clr.img_avg_token", True))
    txt_avg_token = bool(_option(config, "model.clr.txt_avg_token", False))
    vision_layers = _count_blocks(params, "img_encoder")
    text_layers = _count_blocks(params, "txt_encoder")
    mlp = "Transformer/encoderblock_00/MlpBlock_0/Dense_0/kernel"
    vocab_size, text_width = params["txt_encoder/token_embedding/embedding"].shape
    vision = ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=vision_layers,
        heads=_heads(config, "model_img", width, source),
        mlp_dim=params[f"img_encoder/{mlp}"].shape[1]
        if f"img_encoder/{mlp}" in params
        else 4 * width,
        output_dim=params["img_mlp1/kernel"].shape[1],
        act=FLIP_ACT,
        pool="mean_all" if img_avg_token else "cls",
        eps=FLIP_EPS,
        ln_pre=False,
        proj_bias="img_mlp1/bias" in params,
    )
    text = TextConfig(
        vocab_size=vocab_size,
        context_length=params["txt_encoder/posembed_encoder/pos_embedding"].shape[1],
        width=text_width,
        layers=text_layers,
        heads=_heads(config, "model_txt", text_width, source),
        mlp_dim=params[f"txt_encoder/{mlp}"].shape[1]
        if f"txt_encoder/{mlp}" in params
        else 4 * text_width,
        output_dim=params["txt_mlp1/kernel"].shape[1],
        act=FLIP_ACT,
        causal=False,
        pool="mean_all" if txt_avg_token else "first",
        eps=FLIP_EPS,
        mask_padding=False,
        proj_bias="txt_mlp1/bias" in params,
    )
    if "logit_scale" in params:
        logit_scale = float(np.clip(np.reshape(params["logit_scale"], -1)[0], 0.0, MAX_LOGIT_SCALE))
    else:  # clr.tau_learnable=False: a fixed temperature
        logit_scale = math.log(1.0 / float(_option(config, "model.clr.tau", 0.01)))
    return FlipArchitecture(
        vision=vision,
        text=text,
        img_avg_token=img_avg_token,
        txt_avg_token=txt_avg_token,
        img_proj_bias=vision.proj_bias,
        txt_proj_bias=text.proj_bias,
        txt_cls_token=bool(_option(config, "aug.txt.cls_token", False)),
        logit_scale=logit_scale,
    )


def _block_rules(tower: str, theirs_tower: str, layers: int) -> list[Rule]:
    rules = []
    for i in range(layers):
        ours, theirs = f"transformer.blocks.{i}", f"{theirs_tower}/Transformer/encoderblock_{i:02d}"
        pairs = [
            ("ln_1.scale", "LayerNorm_0/scale"),
            ("ln_1.bias", "LayerNorm_0/bias"),
            ("ln_2.scale", "LayerNorm_1/scale"),
            ("ln_2.bias", "LayerNorm_1/bias"),
            ("mlp.fc1.kernel", "MlpBlock_0/Dense_0/kernel"),
            ("mlp.fc1.bias", "MlpBlock_0/Dense_0/bias"),
            ("mlp.fc2.kernel", "MlpBlock_0/Dense_1/kernel"),
            ("mlp.fc2.bias", "MlpBlock_0/Dense_1/bias"),
        ]
        for mine, flax_name in (
            ("q_proj", "query"),
            ("k_proj", "key"),
            ("v_proj", "value"),
            ("out_proj", "out"),
        ):
            pairs += [
                (f"attn.{mine}.kernel", f"MultiHeadDotProductAttention_0/{flax_name}/kernel"),
                (f"attn.{mine}.bias", f"MultiHeadDotProductAttention_0/{flax_name}/bias"),
            ]
        rules += [
            Rule(tower, f"{ours}.{mine}", (f"{theirs}/{flax_name}",)) for mine, flax_name in pairs
        ]
    return rules


def _fold_patch_bias(pos_1nd: np.ndarray, bias_d: np.ndarray) -> np.ndarray:
    """position_embedding [1 + N, D]: row 0 (class token) zero, rows 1.. = FLIP pos + conv bias."""
    pos = np.array(pos_1nd[0], dtype=np.float32)
    pos[0] = 0.0
    pos[1:] += bias_d
    return pos


def flip_rules(arch: FlipArchitecture) -> list[Rule]:
    """Key map of a FLIP checkpoint onto our towers (see the module docstring)."""
    rules = [
        Rule("vision", "patch_embed.kernel", ("img_encoder/embedding/kernel",)),
        Rule("vision", "class_embedding", ("img_encoder/cls",), lambda c: np.reshape(c, -1)),
        Rule(
            "vision",
            "position_embedding",
            ("img_encoder/posembed_encoder/pos_embedding", "img_encoder/embedding/bias"),
            _fold_patch_bias,
        ),
        *_block_rules("vision", "img_encoder", arch.vision.layers),
        Rule("vision", "ln_post.scale", ("img_encoder/Transformer/encoder_norm/scale",)),
        Rule("vision", "ln_post.bias", ("img_encoder/Transformer/encoder_norm/bias",)),
        Rule("vision", "proj.kernel", ("img_mlp1/kernel",)),
        Rule("text", "token_embedding.embedding", ("txt_encoder/token_embedding/embedding",)),
        Rule(
            "text",
            "position_embedding",
            ("txt_encoder/posembed_encoder/pos_embedding",),
            lambda p: p[0],
        ),
        *_block_rules("text", "txt_encoder", arch.text.layers),
        Rule("text", "ln_final.scale", ("txt_encoder/Transformer/encoder_norm/scale",)),
        Rule("text", "ln_final.bias", ("txt_encoder/Transformer/encoder_norm/bias",)),
        Rule("text", "proj.kernel", ("txt_mlp1/kernel",)),
    ]
    if arch.vision.proj_bias:
        rules.append(Rule("vision", "proj.bias", ("img_mlp1/bias",)))
    if arch.text.proj_bias:
        rules.append(Rule("text", "proj.bias", ("txt_mlp1/bias",)))
    return rules


def _config_dirs(path: str) -> list[str]:
    """Directories searched for flip_config.json: the step directory and its parent."""
    file = find_t5x_checkpoint(path)
    step_dir = os.path.dirname(file) if file else path
    return [step_dir, os.path.dirname(step_dir)]


def read_flip_params(path: str) -> tuple[FlipArchitecture, FlatParams, FlatParams, dict]:
    """``(arch, vision_params, text_params, origin)`` of a FLIP t5x checkpoint, keys checked.

    ``origin[tower][key]`` names the checkpoint key(s) each parameter came from.
    """
    params = read_t5x_params(path)
    config: dict = {}
    for directory in _config_dirs(path):
        config = read_flip_config(directory)
        if config:
            break
    arch = flip_architecture(params, config, source=path)
    # logit_scale is read by flip_architecture; optimiser-free checkpoints have nothing else.
    mapped, origin = apply_rules(
        params, flip_rules(arch), source=path, ignorable=lambda k: k == "logit_scale"
    )
    return arch, mapped["vision"], mapped["text"], origin


def read_flip(path: str) -> dict:
    """PretrainedTowers keyword arguments (configs, params, logit_scale, origin) of a FLIP checkpoint.

    Raises CheckpointKeysError (missing / unexpected tensors) or UnsupportedCheckpointError
    (``unsupported FLIP variant: ...``, see :func:`unsupported_features`).
    """
    arch, vision_params, text_params, origin = read_flip_params(path)
    return {
        "vision": arch.vision,
        "text": arch.text,
        "vision_params": vision_params,
        "text_params": text_params,
        "logit_scale": arch.logit_scale,
        "origin": origin,
    }
