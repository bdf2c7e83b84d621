"""One entry point for pretrained image-text encoders: ``load_towers`` / ``load_pretrained``.

``load_towers`` tells the format from what is at ``path``:

====================  ==========================================================  ==============
kind                  what is at path                                             importer
====================  ==========================================================  ==============
``converted``         directory with our model_config.json (launch/convert.py)    converted.py
``hf_clip``           directory with a transformers config.json (model_type clip)  hf_clip.py
``flip_t5x``          t5x checkpoint: ``checkpoint`` file, its directory, or a      flip.py
                      directory of ``checkpoint_<step>/``
``openai_clip``       a ``.pt``/``.pth``/``.bin``/``.safetensors`` state dict with    openai_clip.py
                      OpenAI key names, or a directory holding exactly one
====================  ==========================================================  ==============

and returns :class:`PretrainedTowers` (configs derived from the checkpoint, parameters
checked against them, the tokenizer found beside it or None).

:class:`CLIPEncoder` holds the two towers and the temperature::

    image_embeds = normalize(vision(pixels))              [B, P], pixels [B, H, W, 3] normalised
    text_embeds  = normalize(text(input_ids, mask))       [B, P]
    logits       = exp(logit_scale) image_embeds text_embeds^T     [B_img, B_txt]

(``normalize(x) = x / ||x||_2``; transformers' ``image_embeds``, ``text_embeds`` and
``logits_per_image``.) :func:`init_fjsph_from_pretrained` copies the towers into an FJSPH.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.models.text import TextConfig, TextTransformer
from fjsph_jax.models.vit import VisionTransformer, ViTConfig
from fjsph_jax.weights import converted, flip, hf_clip, openai_clip, t5x, tensors
from fjsph_jax.weights.errors import CheckpointFormatError
from fjsph_jax.weights.params import build_tower
from fjsph_jax.weights.tokenizers import load_tokenizer
from fjsph_jax.weights.towers import PretrainedTowers

_FORMATS_LOOKED_FOR = (
    f"a directory made by launch/convert.py ({converted.MODEL_CONFIG_FILE})",
    f"a transformers CLIP directory ({hf_clip.CONFIG_FILE} + one of {list(hf_clip.WEIGHT_FILES)})",
    "a FLIP t5x checkpoint ('checkpoint' msgpack file, or checkpoint_<step>/checkpoint)",
    f"an OpenAI/OpenCLIP state-dict file ({', '.join(tensors.STATE_DICT_SUFFIXES)}) "
    "or a directory with exactly one",
)


def detect_format(path: str) -> tuple[str, str]:
    """``(kind, path_to_read)`` for the checkpoint at ``path`` (see module docstring)."""
    if not os.path.exists(path):
        raise CheckpointFormatError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if converted.is_converted_dir(path):
            return "converted", path
        if hf_clip.is_hf_checkpoint_dir(path):
            return "hf_clip", path
        if t5x.find_t5x_checkpoint(path):
            return "flip_t5x", path
        files = sorted(n for n in os.listdir(path) if n.endswith(tensors.STATE_DICT_SUFFIXES))
        if len(files) == 1:
            return "openai_clip", os.path.join(path, files[0])
    elif os.path.basename(path) == t5x.CHECKPOINT_FILE:
        return "flip_t5x", path
    elif path.endswith(tensors.STATE_DICT_SUFFIXES):
        return "openai_clip", path
    raise CheckpointFormatError(
        f"{path}: not a checkpoint this package reads; looked for " + "; ".join(_FORMATS_LOOKED_FOR)
    )


def load_towers(path: str) -> PretrainedTowers:
    """Configs, weights and tokenizer of the pretrained checkpoint at ``path``, all checked.

    Raises CheckpointFormatError (unknown or corrupt), CheckpointKeysError (missing,
    unexpected or mis-shaped tensors, all listed) or UnsupportedCheckpointError.
    """
    path = os.fspath(path)
    kind, resolved = detect_format(path)
    read = {
        "converted": converted.read_converted,
        "hf_clip": hf_clip.read_hf_clip,
        "flip_t5x": flip.read_flip,
        "openai_clip": openai_clip.read_openai_clip,
    }[kind]
    fields = read(resolved)
    return PretrainedTowers(
        **fields, source=resolved, kind=kind, tokenizer=load_tokenizer(resolved)
    )


# The per-channel normalisation OpenAI's CLIP was trained with (pixels in [0, 1]).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


def checkpoint_normalization(towers: PretrainedTowers) -> tuple[tuple, tuple] | None:
    """``(mean, std)`` per RGB channel that the checkpoint's images were normalised with,
    ``x' = (x / 255 - mean) / std``, when known: ``image_mean`` / ``image_std`` of a
    transformers ``preprocessor_config.json`` beside the weights, else OpenAI CLIP's
    constants for OpenAI-layout state dicts; None when the checkpoint does not say
    (FLIP t5x, converted directories without that file)."""
    source = os.fspath(towers.source)
    directory = source if os.path.isdir(source) else os.path.dirname(source)
    path = os.path.join(directory, PREPROCESSOR_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
            mean, std = document["image_mean"], document["image_std"]
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a processor file without (readable) normalisation says nothing
    if towers.kind == "openai_clip":
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return None


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x||_2 along the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPEncoder(nnx.Module):
    """Image and text towers plus the temperature: CLIP's inference interface (module docstring)."""

    def __init__(self, vision: VisionTransformer, text: TextTransformer, logit_scale: float):
        self.vision = vision
        self.text = text
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale, jnp.float32))

    @classmethod
    def from_configs(
        cls,
        vision: ViTConfig,
        text: TextConfig,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        logit_scale: float = math.log(1 / 0.07),
    ) -> "CLIPEncoder":
        """A randomly initialised CLIPEncoder (``dtype``: compute dtype; params stay float32)."""
        return cls(
            VisionTransformer(vision, rngs=rngs, dtype=dtype),
            TextTransformer(text, rngs=rngs, dtype=dtype),
            logit_scale,
        )

    @classmethod
    def from_towers(cls, towers: PretrainedTowers, *, dtype=None) -> "CLIPEncoder":
        """A CLIPEncoder holding ``towers``' weights (no random initialisation is run)."""
        return cls(
            build_tower(
                "vision", towers.vision, towers.vision_params, source=towers.source, dtype=dtype
            ),
            build_tower("text", towers.text, towers.text_params, source=towers.source, dtype=dtype),
            towers.logit_scale,
        )

    @nnx.jit(static_argnames=("mask_ratio",))
    def encode_image(
        self, pixels: jax.Array, *, mask_ratio: float = 0.0, mask_key: jax.Array | None = None
    ):
        """pixels [B, H, W, 3] float, already normalised -> image_embeds [B, P] float32, unit norm.

        ``mask_ratio > 0`` applies FLIP's random patch masking (needs ``mask_key``).
        """
        return l2_normalize(self.vision(pixels, mask_ratio=mask_ratio, mask_key=mask_key))

    @nnx.jit
    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array):
        """input_ids, attention_mask [B, L] int -> text_embeds [B, P] float32, unit norm."""
        return l2_normalize(self.text(input_ids, attention_mask))

    def logits(
        self, pixels: jax.Array, input_ids: jax.Array, attention_mask: jax.Array
    ) -> jax.Array:
        """logits_per_image [B_img, B_txt] = exp(logit_scale) image_embeds text_embeds^T."""
        image = self.encode_image(pixels)
        text = self.encode_text(input_ids, attention_mask)
        return jnp.exp(self.logit_scale[...]) * image @ text.T


def load_pretrained(path: str, *, dtype=None):
    """``(CLIPEncoder, tokenizer or None)`` for the checkpoint at ``path`` (see load_towers)."""
    towers = load_towers(path)
    return CLIPEncoder.from_towers(towers, dtype=dtype), towers.tokenizer


def _config_differences(tower: str, model_config, checkpoint_config) -> list[str]:
    if type(model_config) is not type(checkpoint_config):
        return [
            f"{tower}: model {type(model_config).__name__} vs "
            f"checkpoint {type(checkpoint_config).__name__}"
        ]
    return [
        f"{tower}.{field.name}: model {getattr(model_config, field.name)!r} vs checkpoint "
        f"{getattr(checkpoint_config, field.name)!r}"
        for field in dataclasses.fields(model_config)
        if getattr(model_config, field.name) != getattr(checkpoint_config, field.name)
    ]


def fjsph_tower_configs(
    towers: PretrainedTowers, *, image_size: int | None = None, context_length: int | None = None
) -> tuple[ViTConfig, TextConfig]:
    """The (vision, text) configs an FJSPH model needs to take ``towers``' weights.

    They are the checkpoint's configs (FJSPHConfig.feature_dim must be their output_dim).
    ``image_size`` / ``context_length``, the data's, are checked: images must have the
    size the position embeddings were trained for, token rows at most the checkpoint's
    context length.
    """
    vision, text = towers.vision, towers.text
    if image_size is not None and image_size != vision.image_size:
        raise ValueError(
            f"image_size={image_size}, but {towers.source} has an image tower for "
            f"{vision.image_size} px ({vision.grid_size}x{vision.grid_size} patches of "
            f"{vision.patch_size}); set data.image_size={vision.image_size}"
        )
    if context_length is not None and context_length > text.context_length:
        raise ValueError(
            f"context_length={context_length} exceeds the {text.context_length} positions of "
            f"{towers.source}'s text tower; set data.context_length <= {text.context_length}"
        )
    vision_dim = vision.output_dim or vision.width
    text_dim = text.output_dim or text.width
    if vision_dim != text_dim:
        raise ValueError(
            f"{towers.source}: image embeddings have {vision_dim} dims, text embeddings {text_dim}"
        )
    return vision, text


def init_fjsph_from_pretrained(model, towers: PretrainedTowers) -> None:
    """Copies ``towers``' weights and logit_scale into an FJSPH ``model`` in place.

    The model's ``vision`` / ``text`` configs must equal the checkpoint's (build them with
    :func:`fjsph_tower_configs`); otherwise ValueError lists every differing field.
    Hash heads and the interaction block keep their initialisation.
    """
    if model.vision is None or model.text is None:
        raise ValueError(
            "init_fjsph_from_pretrained needs an FJSPH with both encoders "
            "(train.mode='end_to_end'); in frozen-encoder mode compute features with "
            "CLIPEncoder.from_towers(towers) instead"
        )
    differences = _config_differences(
        "vision", model.vision.config, towers.vision
    ) + _config_differences("text", model.text.config, towers.text)
    if differences:
        raise ValueError(
            f"the FJSPH towers do not match {towers.source}: "
            + "; ".join(differences)
            + " (build the model with fjsph_tower_configs(towers))"
        )
    nnx.update(model.vision, towers.vision_state())
    nnx.update(model.text, towers.text_state())
    model.logit_scale[...] = jnp.asarray(towers.logit_scale, jnp.float32)
