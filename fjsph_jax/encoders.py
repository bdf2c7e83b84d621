"""The encoders every method shares: config -> tower configs, dtype and pretrained towers.

FJSPH fine-tunes or freezes these towers; JDSH and JSPSH read features the towers wrote
(``launch/encode.py --features``). Towers come from presets resized to the data
(``config.model.vision`` / ``config.model.text``) or from a pretrained checkpoint
(``config.init.checkpoint``: a transformers CLIP directory, an OpenAI/OpenCLIP state
dict, a FLIP t5x checkpoint or a ``launch/convert.py`` directory).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx

from fjsph_jax.configuration import ConfigError
from fjsph_jax.models import layers, registry
from fjsph_jax.models.text import TextTransformer
from fjsph_jax.models.vit import VisionTransformer


def compute_dtype(config):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.dtype]


def compute_options(config) -> dict:
    """The towers' compute options from ``config.model`` (absent keys: today's behaviour).

    ``attention`` (``xla`` | ``dot_product_attention`` | ``cudnn``), ``remat`` (``none`` |
    ``full`` | ``dots``), ``scan_layers`` (bool): how the towers' blocks are computed, not
    what (see :mod:`fjsph_jax.models.layers`); they change neither the parameters nor the
    function beyond rounding. ConfigError names the key of a bad value.
    """
    model = config.model
    options = {
        "attention": model.get("attention", "xla"),
        "remat": model.get("remat", "none"),
        "scan_layers": model.get("scan_layers", False),
    }
    allowed = {"attention": layers.ATTENTION_IMPLEMENTATIONS, "remat": layers.REMAT_POLICIES}
    for key, values in allowed.items():
        if options[key] not in values:
            raise ConfigError(f"config.model.{key}={options[key]!r}; allowed: {list(values)}")
    if not isinstance(options["scan_layers"], bool):
        raise ConfigError(f"config.model.scan_layers={options['scan_layers']!r} must be True or False")
    return options


def with_compute_options(towers, config):
    """``towers`` (PretrainedTowers) whose tower configs carry ``config``'s compute options,
    so that the model built from them (same options) takes their weights."""
    options = compute_options(config)
    return dataclasses.replace(
        towers,
        vision=dataclasses.replace(towers.vision, **options),
        text=dataclasses.replace(towers.text, **options),
    )


def load_pretrained_towers(config):
    """The checkpoint ``config.init.checkpoint`` names (configs, weights, tokenizer), or None.

    Accepts every format ``fjsph_jax.weights.load_towers`` reads: a transformers CLIP
    directory, an OpenAI/OpenCLIP state-dict file, a FLIP t5x checkpoint, or a directory
    written by ``launch/convert.py``.
    """
    compute_options(config)  # bad compute options stop the run before the checkpoint is read
    if not config.init.checkpoint:
        return None
    from fjsph_jax import weights  # deferred: the importers pull in transformers

    towers = weights.load_towers(config.init.checkpoint)
    check_normalization(config, towers)
    return with_compute_options(towers, config)


def check_normalization(config, towers) -> bool:
    """Warns (and returns False) when ``config.data.image_mean`` / ``image_std`` differ from
    the normalisation the checkpoint was trained with (when it records one): the towers
    would see shifted inputs. The message gives the flags that match."""
    from fjsph_jax import weights

    known = weights.checkpoint_normalization(towers)
    if known is None:
        return True
    mean, std = known
    have_mean, have_std = tuple(config.data.image_mean), tuple(config.data.image_std)
    close = len(have_mean) == len(mean) == len(have_std) == len(std) and all(
        abs(a - b) < 1e-6 for a, b in zip(have_mean + have_std, mean + std)
    )
    if not close:
        logging.warning(
            "config.data.image_mean=%s / image_std=%s differ from the normalisation of "
            "config.init.checkpoint=%r (mean %s, std %s); to feed the towers what they were "
            "trained on, pass --config.data.image_mean='%s' --config.data.image_std='%s'",
            have_mean, have_std, config.init.checkpoint, mean, std, mean, std,
        )
    return close


def tower_configs(config, vocab_size: int, towers=None):
    """The ViT and text-transformer configs: the checkpoint's, or presets resized to the data.

    Both carry the compute options of ``config.model`` (:func:`compute_options`); towers
    from :func:`load_pretrained_towers` already do.
    """
    options = compute_options(config)
    if towers is not None:
        from fjsph_jax import weights

        vision, text = weights.fjsph_tower_configs(
            towers, image_size=config.data.image_size, context_length=config.data.context_length
        )
        if vision.output_dim != config.model.feature_dim:
            raise ConfigError(
                f"config.model.feature_dim={config.model.feature_dim} must equal the projection "
                f"dim {vision.output_dim} of config.init.checkpoint={config.init.checkpoint!r}"
            )
        return dataclasses.replace(vision, **options), dataclasses.replace(text, **options)
    vision = registry.vision_config(
        config.model.vision,
        image_size=config.data.image_size,
        output_dim=config.model.feature_dim,
        **options,
    )
    text = registry.text_config(
        config.model.text,
        vocab_size=vocab_size,
        context_length=config.data.context_length,
        output_dim=config.model.feature_dim,
        **options,
    )
    return vision, text


class TowerEncoders(nnx.Module):
    """The image and text towers alone (plus CLIP's temperature), as feature extractors.

        image_features(pixels [B, H, W, 3] normalised) -> [B, D]
        text_features(input_ids, attention_mask [B, L]) -> [B, D]

    Built from ``nnx.Rngs(seed)`` in the same order as FJSPH builds its towers (vision,
    then text), so the random towers of a seed are FJSPH's towers of that seed.
    """

    def __init__(self, vision_config, text_config, *, rngs: nnx.Rngs, dtype=None):
        self.vision = VisionTransformer(vision_config, rngs=rngs, dtype=dtype)
        self.text = TextTransformer(text_config, rngs=rngs, dtype=dtype)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    def image_features(self, pixels: jax.Array, *, mask_ratio: float = 0.0, mask_key=None):
        return self.vision(pixels, mask_ratio=mask_ratio, mask_key=mask_key)

    def text_features(self, input_ids: jax.Array, attention_mask: jax.Array):
        return self.text(input_ids, attention_mask)


def build_encoders(config, vocab_size: int, *, seed: int, towers=None) -> TowerEncoders:
    """The towers ``config`` describes: presets from ``seed``, or ``towers``' weights."""
    vision, text = tower_configs(config, vocab_size, towers)
    encoders = TowerEncoders(vision, text, rngs=nnx.Rngs(seed), dtype=compute_dtype(config))
    if towers is not None:
        from fjsph_jax import weights

        weights.init_fjsph_from_pretrained(encoders, towers)
    return encoders
