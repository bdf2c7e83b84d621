"""Config -> model and optimiser: the one place that reads model and optimiser keys.

Model: :class:`fjsph_jax.models.fjsph.FJSPH` with towers chosen by preset name
(``config.model.vision``, ``config.model.text``) and resized to the data
(``image_size``, ``context_length``, ``vocab_size``) and to ``feature_dim``.

Optimiser: AdamW with linear warm-up then cosine decay, global-norm clipping, weight
decay only on matrices (ndim >= 2), and two learning rates through
``optax.multi_transform``: ``encoder_learning_rate`` for the towers (fine-tuned in
end-to-end mode) and ``learning_rate`` for everything else (interaction block, hash
heads, temperature).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fjsph_jax.configuration import ConfigError
from fjsph_jax.models import registry
from fjsph_jax.models.fjsph import FJSPH, FJSPHConfig

# Attribute names of the two towers inside FJSPH: their parameters get the encoder LR.
ENCODER_ATTRS = ("vision", "text")


def compute_dtype(config):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.dtype]


def load_pretrained_towers(config):
    """The checkpoint ``config.init.checkpoint`` names (configs, weights, tokenizer), or None.

    Accepts every format ``fjsph_jax.weights.load_towers`` reads: a transformers CLIP
    directory, an OpenAI/OpenCLIP state-dict file, a FLIP t5x checkpoint, or a directory
    written by ``launch/convert.py``.
    """
    if not config.init.checkpoint:
        return None
    from fjsph_jax import weights  # deferred: the importers pull in transformers

    towers = weights.load_towers(config.init.checkpoint)
    check_normalization(config, towers)
    return towers


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
    """The ViT and text-transformer configs: the checkpoint's, or presets resized to the data."""
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
        return vision, text
    vision = registry.vision_config(
        config.model.vision,
        image_size=config.data.image_size,
        output_dim=config.model.feature_dim,
    )
    text = registry.text_config(
        config.model.text,
        vocab_size=vocab_size,
        context_length=config.data.context_length,
        output_dim=config.model.feature_dim,
    )
    return vision, text


def model_config(config, vocab_size: int, *, with_encoders: bool, towers=None) -> FJSPHConfig:
    """FJSPH config; ``with_encoders=False`` is the frozen-encoder (heads only) model."""
    vision, text = tower_configs(config, vocab_size, towers)
    return FJSPHConfig(
        vision=vision if with_encoders else None,
        text=text if with_encoders else None,
        feature_dim=config.model.feature_dim,
        bits=config.bits,
        hash_hidden_dim=config.model.hash_hidden_dim,
        interaction=config.model.interaction,
        interaction_layers=config.model.interaction_layers,
        interaction_heads=config.model.interaction_heads,
    )


def build_model(config, vocab_size: int, *, with_encoders: bool, seed: int, towers=None) -> FJSPH:
    """FJSPH as the config says; towers (and temperature) copied from ``towers`` if given."""
    model = FJSPH(
        model_config(config, vocab_size, with_encoders=with_encoders, towers=towers),
        rngs=nnx.Rngs(seed),
        dtype=compute_dtype(config),
    )
    if towers is not None and with_encoders:
        from fjsph_jax import weights

        weights.init_fjsph_from_pretrained(model, towers)
    return model


def param_labels(params: nnx.State):
    """``'encoder'`` for tower parameters, ``'head'`` for the rest (same tree as params)."""

    def label(path, _):
        return (
            "encoder" if path and str(getattr(path[0], "key", path[0])) in ENCODER_ATTRS else "head"
        )

    return jax.tree_util.tree_map_with_path(label, params)


def _adamw(config, peak_lr: float, total_steps: int):
    warmup = min(config.train.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak_lr * 0.01,
    )
    decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    return optax.adamw(schedule, weight_decay=config.train.weight_decay, mask=decay_mask)


def build_optimizer(config, params: nnx.State, total_steps: int) -> optax.GradientTransformation:
    """Clipped AdamW with per-group learning rates (see module docstring)."""
    return optax.chain(
        optax.clip_by_global_norm(config.train.grad_clip_norm),
        optax.multi_transform(
            {
                "encoder": _adamw(config, config.train.encoder_learning_rate, total_steps),
                "head": _adamw(config, config.train.learning_rate, total_steps),
            },
            param_labels(params),
        ),
    )
