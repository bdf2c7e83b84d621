"""Tests for fjsph_jax.models.interaction.ModalityInteraction."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models.interaction import ModalityInteraction


@pytest.fixture(scope="module")
def block():
    return ModalityInteraction(16, 1, 2, 32, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def pair():
    rng = np.random.RandomState(0)
    return jnp.asarray(rng.randn(2, 16), jnp.float32), jnp.asarray(rng.randn(2, 16), jnp.float32)


def test_fused_is_mean_of_the_two_output_tokens(block, pair):
    image, text = pair
    fused = block(image, text)
    assert fused.shape == (2, 16) and fused.dtype == jnp.float32
    emb = np.asarray(block.modality_embedding[...])
    tokens = np.stack([np.asarray(image) + emb[0], np.asarray(text) + emb[1]], axis=1)
    out = np.asarray(block.ln_out(block.transformer(jnp.asarray(tokens))))  # no mask: bidirectional
    np.testing.assert_allclose(fused, out.mean(axis=1), rtol=1e-5, atol=1e-5)


def test_each_token_sees_the_other_modality(block, pair):
    image, text = pair
    emb = block.modality_embedding[...]
    tokens = jnp.stack([image + emb[0], text + emb[1]], axis=1)
    changed = jnp.stack([image + emb[0], -text + emb[1]], axis=1)
    first = np.asarray(block.transformer(tokens))[:, 0]
    first_changed = np.asarray(block.transformer(changed))[:, 0]
    assert np.abs(first - first_changed).max() > 1e-4  # the image token attends to the text token


def test_modality_embedding_breaks_the_swap_symmetry(block, pair):
    image, text = pair
    assert np.abs(np.asarray(block(image, text)) - np.asarray(block(text, image))).max() > 1e-5


def test_shape_mismatch_raises(block, pair):
    with pytest.raises(ValueError, match="must match"):
        block(pair[0], pair[1][:, :8])
