"""Config -> FJSPH model and optimiser: the one place that reads FJSPH's model and optimiser keys.

Model: :class:`fjsph_jax.methods.fjsph.model.FJSPH` with towers chosen by preset name
(``config.model.vision``, ``config.model.text``) and resized to the data
(``image_size``, ``context_length``, ``vocab_size``) and to ``feature_dim``.

Optimiser: AdamW with linear warm-up then cosine decay, global-norm clipping, weight
decay only on matrices (ndim >= 2), and two learning rates through
``optax.multi_transform``: ``encoder_learning_rate`` for the towers (fine-tuned in
end-to-end mode) and ``learning_rate`` for everything else (interaction block, hash
heads, temperature).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fjsph_jax.encoders import compute_dtype, tower_configs
from fjsph_jax.methods.fjsph.model import FJSPH, FJSPHConfig

# Attribute names of the two towers inside FJSPH: their parameters get the encoder LR.
ENCODER_ATTRS = ("vision", "text")


def model_config(config, vocab_size: int, *, with_encoders: bool, towers=None,
                 input_dims=(None, None)) -> FJSPHConfig:
    """FJSPH config; ``with_encoders=False`` is the frozen-encoder model (projections and
    heads on feature vectors of ``input_dims = (dI, dT)``; None: ``feature_dim``)."""
    if with_encoders or not config.data.get("features", ""):
        vision, text = tower_configs(config, vocab_size, towers)
    else:  # feature files: no towers anywhere
        vision = text = None
    return FJSPHConfig(
        vision=vision if with_encoders else None,
        text=text if with_encoders else None,
        feature_dim=config.model.feature_dim,
        bits=config.bits,
        hash_hidden_dim=config.model.hash_hidden_dim,
        interaction=config.model.interaction,
        interaction_layers=config.model.interaction_layers,
        interaction_heads=config.model.interaction_heads,
        image_input_dim=None if with_encoders else input_dims[0],
        text_input_dim=None if with_encoders else input_dims[1],
    )


def build_model(config, vocab_size: int, *, with_encoders: bool, seed: int, towers=None,
                input_dims=(None, None)) -> FJSPH:
    """FJSPH as the config says; towers (and temperature) copied from ``towers`` if given."""
    model = FJSPH(
        model_config(config, vocab_size, with_encoders=with_encoders, towers=towers,
                     input_dims=input_dims),
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
