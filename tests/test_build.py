"""Model and optimiser construction from a config."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fjsph_jax.methods.fjsph import build
from tiny import tiny_config


def test_model_follows_config():
    config = tiny_config()
    model = build.build_model(config, vocab_size=50, with_encoders=True, seed=0)
    assert model.vision.output_dim == model.text.output_dim == config.model.feature_dim
    assert model.config.bits == config.bits
    frozen = build.build_model(config, vocab_size=50, with_encoders=False, seed=0)
    assert frozen.vision is None and frozen.text is None


def test_param_labels_split_towers_from_heads():
    model = build.build_model(tiny_config(), vocab_size=50, with_encoders=True, seed=0)
    _, params = nnx.split(model)
    labels = build.param_labels(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
    assert all(v == "encoder" for k, v in flat.items() if k.startswith("['vision']"))
    assert all(v == "encoder" for k, v in flat.items() if k.startswith("['text']"))
    assert all(v == "head" for k, v in flat.items() if k.startswith("['image_hash']"))
    scale = [v for k, v in flat.items() if k.startswith("['logit_scale']")]
    assert scale == ["head"]


def test_encoder_learning_rate_applies_to_towers_only():
    config = tiny_config(**{"train.encoder_learning_rate": 0.0, "train.warmup_steps": 0})
    model = build.build_model(config, vocab_size=50, with_encoders=True, seed=0)
    _, params = nnx.split(model)
    optimizer = build.build_optimizer(config, params, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    updates = nnx.State(updates) if not isinstance(updates, nnx.State) else updates
    vision = jax.tree.leaves(updates["vision"])
    heads = jax.tree.leaves(updates["image_hash"])
    assert all(np.all(np.asarray(u) == 0) for u in vision)
    assert any(np.any(np.asarray(u) != 0) for u in heads)
