"""Tests for fjsph_jax.methods.fjsph.model: the composed FJSPH network, end-to-end and frozen modes."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.methods.fjsph.model import FJSPH, FJSPHConfig
from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig

VISION = ViTConfig(image_size=8, patch_size=4, width=16, layers=1, heads=2, mlp_dim=32, output_dim=16, act="gelu")
TEXT = TextConfig(vocab_size=20, context_length=6, width=16, layers=1, heads=2, mlp_dim=32, output_dim=16, act="gelu")
CONFIG = FJSPHConfig(vision=VISION, text=TEXT, feature_dim=16, bits=8, hash_hidden_dim=32, interaction="transformer",
    interaction_mlp_dim=32)
FROZEN = dataclasses.replace(CONFIG, vision=None, text=None, interaction="none")


def param_paths(model):
    return {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def model():
    return FJSPH(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    pixels = jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32)
    ids = jnp.asarray([[1, 5, 6, 19, 0, 0], [4, 4, 4, 4, 4, 19]], jnp.int32)
    return pixels, ids, (ids != 0).astype(jnp.int32)


def test_end_to_end_forward_shapes_in_one_jit(model, batch):
    @nnx.jit
    def forward(m, pixels, ids, mask, key):
        f_img = m.image_features(pixels, mask_ratio=0.5, mask_key=key)
        f_txt = m.text_features(ids, mask)
        return f_img, f_txt, m.hash_image(f_img), m.hash_text(f_txt), m.fuse(f_img, f_txt)

    f_img, f_txt, u, v, z = forward(model, *batch, jax.random.key(0))
    assert f_img.shape == f_txt.shape == (2, 16)
    for codes in (u, v, z):
        assert codes.shape == (2, 8) and codes.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(codes)) < 1.0)
    # methods delegate to their own submodules
    np.testing.assert_allclose(u, model.image_hash(f_img), rtol=1e-6)
    np.testing.assert_allclose(z, model.fused_hash(model.interaction(f_img, f_txt)), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(u) - np.asarray(model.text_hash(f_img))).max() > 1e-4  # separate heads


def test_logit_scale_is_a_log_space_scalar_param(model):
    assert isinstance(model.logit_scale, nnx.Param)
    assert model.logit_scale.shape == () and model.logit_scale.dtype == jnp.float32
    np.testing.assert_allclose(float(model.logit_scale[...]), math.log(1 / 0.07), rtol=1e-6)
    assert {"vision", "text", "image_hash", "text_hash", "interaction", "fused_hash", "logit_scale"} == param_paths(model)


def test_frozen_mode_has_only_heads_and_raises_on_encoders():
    model = FJSPH(FROZEN, rngs=nnx.Rngs(1))
    assert FROZEN.frozen_encoders
    assert param_paths(model) == {"image_proj", "text_proj", "image_hash", "text_hash",
                                  "logit_scale"}
    features = jnp.ones((2, 16), jnp.float32)
    assert model.hash_image(features).shape == (2, 8) and model.hash_text(features).shape == (2, 8)
    assert model.fuse(features, features) is None
    with pytest.raises(ValueError, match="frozen-encoder"):
        model.image_features(jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="frozen-encoder"):
        model.text_features(jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32))


def test_config_errors():
    with pytest.raises(ValueError, match="feature_dim=8"):
        dataclasses.replace(CONFIG, feature_dim=8)
    with pytest.raises(ValueError, match="interaction=.*allowed.*none.*transformer"):
        dataclasses.replace(CONFIG, interaction="cross")
    with pytest.raises(ValueError, match="interaction_heads"):
        dataclasses.replace(FROZEN, interaction="transformer", interaction_heads=3)


def test_frozen_mode_projects_features_of_any_width():
    """Feature files have their own widths (dI != dT): trainable projections map both into
    feature_dim, and the heads read the projections."""
    config = dataclasses.replace(FROZEN, image_input_dim=40, text_input_dim=7)
    model = FJSPH(config, rngs=nnx.Rngs(2))
    image, text = jnp.ones((3, 40), jnp.float32), jnp.ones((3, 7), jnp.float32)
    assert model.embed_image(image).shape == model.embed_text(text).shape == (3, 16)
    np.testing.assert_allclose(model.hash_image(image),
                               model.image_hash(model.image_proj(image)), rtol=1e-6)
    assert model.hash_text(text).shape == (3, 8)
