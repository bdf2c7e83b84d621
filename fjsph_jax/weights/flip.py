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

Head counts, pooling and the text options are not in the tensors: they come from a
``flip_config.json`` next to the checkpoint (FLIP's ml_collections config as JSON, any
subset of it) and otherwise from FLIP's own configs (head counts by width: 512 -> 8,
768 -> 12, 1024 -> 16, 1280 -> 16; ``clr.img_avg_token=True``, ``clr.txt_avg_token=False``).

How it maps onto our towers, exactly: the patch-conv bias is folded into the patch rows of
``position_embedding`` (FLIP adds both to every patch token before masking), the class
token's position row is zero, ``encoder_norm`` becomes ``ln_post`` / ``ln_final``, blocks
map one to one, the text tower is bidirectional and pooled at token 0.

What our towers cannot represent yet (each makes :func:`read_flip` raise
``UnsupportedCheckpointError("unsupported FLIP variant: ...")``; see :func:`unsupported_features`):

* FLIP's ViT has no ``ln_pre`` (tokens enter the first block unnormalised): every FLIP
  checkpoint;
* ``clr.img_avg_token=True`` (the default, used by the released checkpoints): the image
  embedding is the mean over all 1 + N tokens (class token included) of
  ``encoder_norm(x)``; ``ViTConfig.pool`` has 'cls' and 'gap' = ln_post(mean of patch tokens);
* FLIP's text tower never masks padding (``txt_is_valid`` is unused): pad tokens are
  attended to, while ``TextTransformer`` always masks keys where attention_mask == 0;
* ``clr.txt_avg_token=True`` (mean over all text tokens) and ``clr.proj_out_bias=True``.
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

    ``vision`` / ``text`` are the closest configs of our towers (cls / token-0 pooling,
    tanh GELU, eps 1e-6, bidirectional text); :func:`unsupported_features` lists what they
    miss for this checkpoint.
    """

    vision: ViTConfig
    text: TextConfig
    img_avg_token: bool
    txt_avg_token: bool
    img_proj_bias: bool
    txt_proj_bias: bool
    txt_cls_token: bool
    logit_scale: float


def unsupported_features(arch: FlipArchitecture) -> list[str]:
    """What our towers would compute differently from FLIP for this checkpoint (empty: exact)."""
    problems = [
        "the image tower has no ln_pre (FLIP feeds [cls; patches] to the first block unnormalised; "
        "VisionTransformer always applies ln_pre: needs a ViTConfig option to skip it)"
    ]
    if arch.img_avg_token:
        problems.append(
            "clr.img_avg_token=True: the image embedding is the mean of encoder_norm(x) over "
            "all 1 + N tokens, class token included (ViTConfig.pool offers 'cls' and 'gap' = "
            "ln_post(mean of patch tokens): needs a pool mode 'mean of normalised tokens, cls "
            "included')"
        )
    problems.append(
        "the text tower attends to padding tokens (FLIP applies no key-padding mask; "
        "TextTransformer always masks keys where attention_mask == 0: needs a TextConfig option "
        "to keep them)"
    )
    if arch.txt_avg_token:
        problems.append(
            "clr.txt_avg_token=True: the text embedding is the mean over all tokens "
            "(no TextConfig.pool for it)"
        )
    if arch.img_proj_bias or arch.txt_proj_bias:
        problems.append(
            "clr.proj_out_bias=True: the projections have a bias (our proj layers have none)"
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
    kernel = params["img_encoder/embedding/kernel"]
    patch, patch_w, channels, width = kernel.shape
    if channels != 3 or patch != patch_w:
        raise UnsupportedCheckpointError(
            f"{source}: img_encoder/embedding/kernel {kernel.shape}: expected [p, p, 3, D]"
        )
    num_positions = params["img_encoder/posembed_encoder/pos_embedding"].shape[1]
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise UnsupportedCheckpointError(
            f"{source}: img_encoder/posembed_encoder/pos_embedding has {num_positions} rows, "
            "not 1 + a square grid"
        )
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
        pool="cls",
        eps=FLIP_EPS,
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
        pool="first",
        eps=FLIP_EPS,
    )
    if "logit_scale" in params:
        logit_scale = float(np.clip(np.reshape(params["logit_scale"], -1)[0], 0.0, MAX_LOGIT_SCALE))
    else:  # clr.tau_learnable=False: a fixed temperature
        logit_scale = math.log(1.0 / float(_option(config, "model.clr.tau", 0.01)))
    return FlipArchitecture(
        vision=vision,
        text=text,
        img_avg_token=bool(_option(config, "model.clr.img_avg_token", True)),
        txt_avg_token=bool(_option(config, "model.clr.txt_avg_token", False)),
        img_proj_bias="img_mlp1/bias" in params,
        txt_proj_bias="txt_mlp1/bias" in params,
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
    """Key map of a FLIP checkpoint onto our towers (all but the image tower's ln_pre)."""
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
    # Projection biases are read (so they are not "unexpected"); unsupported_features rejects them.
    if arch.img_proj_bias:
        rules.append(Rule("unsupported", "img_mlp1/bias", ("img_mlp1/bias",)))
    if arch.txt_proj_bias:
        rules.append(Rule("unsupported", "txt_mlp1/bias", ("txt_mlp1/bias",)))
    return rules


def _config_dirs(path: str) -> list[str]:
    """Directories searched for flip_config.json: the step directory and its parent."""
    file = find_t5x_checkpoint(path)
    step_dir = os.path.dirname(file) if file else path
    return [step_dir, os.path.dirname(step_dir)]


def read_flip_params(path: str) -> tuple[FlipArchitecture, FlatParams, FlatParams]:
    """``(arch, vision_params, text_params)`` of a FLIP t5x checkpoint, keys checked.

    ``vision_params`` lacks ``ln_pre.*`` (FLIP has none); see the module docstring.
    """
    params = read_t5x_params(path)
    config: dict = {}
    for directory in _config_dirs(path):
        config = read_flip_config(directory)
        if config:
            break
    arch = flip_architecture(params, config, source=path)
    # logit_scale is read by flip_architecture; optimiser-free checkpoints have nothing else.
    mapped, _ = apply_rules(
        params, flip_rules(arch), source=path, ignorable=lambda k: k == "logit_scale"
    )
    return arch, mapped["vision"], mapped["text"]


def read_flip(path: str) -> dict:
    """Reads and checks a FLIP t5x checkpoint, then raises UnsupportedCheckpointError.

    Every FLIP checkpoint needs at least one feature our towers lack (no ln_pre), so this
    always raises, naming them all (:func:`unsupported_features`), after reporting any
    missing or unexpected keys first. Once the towers gain those options it will return
    the PretrainedTowers keyword arguments built from :func:`read_flip_params`.
    """
    arch, _, _ = read_flip_params(path)
    raise UnsupportedCheckpointError(
        f"{path}: unsupported FLIP variant: " + "; ".join(unsupported_features(arch))
    )
