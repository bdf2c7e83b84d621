"""Tests for fjsph_jax.models.text: masks, pooling modes, context handling."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models.text import TextConfig, TextTransformer, pool_positions

TINY = TextConfig(vocab_size=50, context_length=8, width=16, layers=1, heads=2, mlp_dim=32, output_dim=8, act="gelu")
EOS = 49

# example 0: 4 real tokens ending in EOS, then padding; example 1: full length, EOS at position 5
IDS = np.array([[3, 7, 9, EOS, 0, 0], [4, 5, 6, 8, 10, EOS]], np.int32)
MASK = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32)


@pytest.fixture(scope="module")
def causal_model():
    return TextTransformer(TINY, rngs=nnx.Rngs(0))


def manual_forward(model, ids, mask, positions):
    """token + position embedding -> transformer(mask) -> ln_final -> rows at `positions` -> proj."""
    length = ids.shape[1]
    x = model.token_embedding(jnp.asarray(ids)) + model.position_embedding[:length]
    attend = (np.asarray(mask) != 0)[:, None, None, :]
    if model.config.causal:
        attend = attend & np.tril(np.ones((length, length), bool))[None, None]
    hidden = np.asarray(model.ln_final(model.transformer(x, jnp.asarray(attend))))
    pooled = hidden[np.arange(ids.shape[0]), positions]
    return pooled @ np.asarray(model.proj.kernel[...])


def test_pool_positions_by_hand():
    ids = jnp.asarray(IDS)
    mask = jnp.asarray(MASK)
    np.testing.assert_array_equal(pool_positions(ids, mask, "last", None), [3, 5])
    np.testing.assert_array_equal(pool_positions(ids, mask, "eos", EOS), [3, 5])
    np.testing.assert_array_equal(pool_positions(ids, mask, "eos", 9), [2, 0])  # no 9 in row 1 -> 0
    np.testing.assert_array_equal(pool_positions(ids, mask, "argmax", None), [3, 5])
    np.testing.assert_array_equal(pool_positions(jnp.asarray([[5, 2, 7, 1]]), mask[:1, :4], "argmax", None), [2])
    np.testing.assert_array_equal(pool_positions(ids, mask, "first", None), [0, 0])


def test_last_pooled_output_matches_manual_forward(causal_model):
    out = causal_model(jnp.asarray(IDS), jnp.asarray(MASK))
    assert out.shape == (2, 8) and out.dtype == jnp.float32 and causal_model.output_dim == 8
    np.testing.assert_allclose(out, manual_forward(causal_model, IDS, MASK, [3, 5]), rtol=1e-4, atol=1e-5)


def test_padding_after_last_token_does_not_change_last_pool(causal_model):
    out = causal_model(jnp.asarray(IDS), jnp.asarray(MASK))
    other_padding = IDS.copy()
    other_padding[0, 4:] = [17, 23]
    out2 = causal_model(jnp.asarray(other_padding), jnp.asarray(MASK.astype(bool)))  # bool mask works too
    np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-6)
    # a shorter batch (fewer pad columns) gives the same embedding for the padded example
    short = causal_model(jnp.asarray(IDS[:1, :4]), jnp.asarray(MASK[:1, :4]))
    np.testing.assert_allclose(short, out[:1], rtol=1e-5, atol=1e-6)


def test_causal_first_token_sees_only_itself(causal_model):
    model = TextTransformer(dataclasses.replace(TINY, pool="first"), rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(causal_model))
    out = model(jnp.asarray(IDS), jnp.asarray(MASK))
    changed = IDS.copy()
    changed[:, 1:3] = [[11, 12], [13, 14]]
    np.testing.assert_allclose(model(jnp.asarray(changed), jnp.asarray(MASK)), out, rtol=1e-5, atol=1e-6)


def test_bidirectional_first_pool_sees_later_tokens_but_not_padding():
    config = dataclasses.replace(TINY, causal=False, pool="first")
    model = TextTransformer(config, rngs=nnx.Rngs(1))
    out = model(jnp.asarray(IDS), jnp.asarray(MASK))
    np.testing.assert_allclose(out, manual_forward(model, IDS, MASK, [0, 0]), rtol=1e-4, atol=1e-5)
    later = IDS.copy()
    later[:, 2] = 30
    assert np.abs(np.asarray(model(jnp.asarray(later), jnp.asarray(MASK))) - np.asarray(out)).max() > 1e-4
    padded = IDS.copy()
    padded[0, 4:] = [31, 32]
    np.testing.assert_allclose(model(jnp.asarray(padded), jnp.asarray(MASK))[0], out[0], rtol=1e-5, atol=1e-6)


def test_eos_pool_and_no_projection(causal_model):
    config = dataclasses.replace(TINY, pool="eos", eos_token_id=EOS, output_dim=None)
    model = TextTransformer(config, rngs=nnx.Rngs(2))
    assert model.proj is None and model.output_dim == 16
    # EOS is not at the last attended token of row 1 here
    ids = IDS.copy()
    ids[1] = [4, EOS, 6, 8, 10, 11]
    out = model(jnp.asarray(ids), jnp.asarray(MASK))
    x = model.token_embedding(jnp.asarray(ids)) + model.position_embedding[:6]
    attend = (MASK != 0)[:, None, None, :] & np.tril(np.ones((6, 6), bool))[None, None]
    hidden = np.asarray(model.ln_final(model.transformer(x, jnp.asarray(attend))))
    np.testing.assert_allclose(out, hidden[[0, 1], [3, 1]], rtol=1e-4, atol=1e-5)


def test_unmasked_padding_is_attended_like_flip():
    """mask_padding=False, causal=False: no attention mask at all, so padded keys change every token."""
    config = dataclasses.replace(TINY, causal=False, pool="first", mask_padding=False)
    model = TextTransformer(config, rngs=nnx.Rngs(3))
    assert model.attend_mask(jnp.asarray(MASK)) is None
    out = model(jnp.asarray(IDS), jnp.asarray(MASK))
    x = model.token_embedding(jnp.asarray(IDS)) + model.position_embedding[:6]
    ref = np.asarray(model.ln_final(model.transformer(x)))[:, 0] @ np.asarray(model.proj.kernel[...])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    padded = IDS.copy()
    padded[0, 4:] = [31, 32]  # other pad ids: row 0 changes, row 1 (no padding) does not
    changed = np.asarray(model(jnp.asarray(padded), jnp.asarray(MASK)))
    assert np.abs(changed[0] - np.asarray(out[0])).max() > 1e-4
    np.testing.assert_allclose(changed[1], out[1], rtol=1e-5, atol=1e-6)
    # and the attention mask is ignored: all-ones gives the same result
    np.testing.assert_allclose(model(jnp.asarray(IDS), jnp.ones_like(jnp.asarray(MASK))), out, atol=1e-6)


def test_unmasked_padding_keeps_the_causal_mask():
    """causal + mask_padding=False: only the causal mask; the padded positions' outputs see all earlier keys."""
    model = TextTransformer(dataclasses.replace(TINY, mask_padding=False, pool="mean_all"), rngs=nnx.Rngs(4))
    causal = np.tril(np.ones((6, 6), bool))[None, None]
    np.testing.assert_array_equal(model.attend_mask(jnp.asarray(MASK)), causal)
    out = model(jnp.asarray(IDS), jnp.asarray(MASK))
    x = model.token_embedding(jnp.asarray(IDS)) + model.position_embedding[:6]
    hidden = np.asarray(model.ln_final(model.transformer(x, jnp.asarray(causal))))
    np.testing.assert_allclose(out, hidden.mean(axis=1) @ np.asarray(model.proj.kernel[...]), rtol=1e-4, atol=1e-5)


def test_mean_all_pool_averages_every_position_and_projection_bias():
    """pool='mean_all': mean over all L positions of ln_final(x), padding included; proj_bias adds b."""
    config = dataclasses.replace(TINY, causal=False, pool="mean_all", mask_padding=False, proj_bias=True)
    model = TextTransformer(config, rngs=nnx.Rngs(5))
    model.proj.bias[...] = -jnp.arange(8, dtype=jnp.float32) / 4
    out = model(jnp.asarray(IDS), jnp.asarray(MASK))
    x = model.token_embedding(jnp.asarray(IDS)) + model.position_embedding[:6]
    hidden = np.asarray(model.ln_final(model.transformer(x)))  # [2, 6, 16]
    ref = hidden.mean(axis=1) @ np.asarray(model.proj.kernel[...]) - np.arange(8) / 4
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(out) - (hidden[:, :4].mean(axis=1) @ np.asarray(model.proj.kernel[...]))).max() > 1e-3
    with pytest.raises(ValueError, match="not a position pool"):
        pool_positions(jnp.asarray(IDS), jnp.asarray(MASK), "mean_all", None)


def test_default_options_mask_padding_without_projection_bias(causal_model):
    assert causal_model.config.mask_padding and not causal_model.config.proj_bias
    assert "bias" not in nnx.state(causal_model.proj, nnx.Param)
    mask = np.asarray(causal_model.attend_mask(jnp.asarray(MASK)))
    np.testing.assert_array_equal(mask, (MASK != 0)[:, None, None, :] & np.tril(np.ones((6, 6), bool)))


def test_context_length_checks(causal_model):
    with pytest.raises(ValueError, match="context_length=8"):
        causal_model(jnp.zeros((1, 9), jnp.int32), jnp.ones((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        causal_model(jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 5), jnp.int32))


def test_config_errors():
    with pytest.raises(ValueError, match="pool=.*allowed.*last.*eos.*argmax.*first.*mean_all"):
        dataclasses.replace(TINY, pool="mean")
    with pytest.raises(ValueError, match="eos_token_id"):
        dataclasses.replace(TINY, pool="eos")
    with pytest.raises(ValueError, match="act"):
        dataclasses.replace(TINY, act="tanh")
    with pytest.raises(ValueError, match="heads"):
        dataclasses.replace(TINY, heads=3)
