"""Tests for fjsph_jax.models.vit: FLIP masking and the CLIP-style ViT."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models.vit import ViTConfig, VisionTransformer, num_kept_patches, random_patch_mask

# 18 px with 4 px patches: not divisible, floors to a 4 x 4 grid of 16 patches
TINY = ViTConfig(image_size=18, patch_size=4, width=16, layers=1, heads=2, mlp_dim=32, output_dim=8, act="gelu")


@pytest.fixture(scope="module")
def vit():
    return VisionTransformer(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def pixels():
    return jnp.asarray(np.random.RandomState(0).randn(2, 18, 18, 3), jnp.float32)


@pytest.fixture(scope="module")
def forward():
    """Eager calls: per-op compilations are shared with the other tests (one jit each would not be)."""
    return lambda model, x, key, ratio: model(x, mask_ratio=ratio, mask_key=key)


def test_num_kept_patches():
    assert num_kept_patches(64, 0.0) == 64
    assert num_kept_patches(64, 0.25) == 48
    assert num_kept_patches(49, 0.5) == 24  # int(24.5)
    assert num_kept_patches(3, 0.9) == 1  # int(0.3) = 0, but at least one patch
    with pytest.raises(ValueError, match="mask_ratio"):
        num_kept_patches(64, 1.0)


def test_random_patch_mask_properties():
    tokens = jnp.asarray(np.random.RandomState(1).randn(3, 10, 4), jnp.float32)
    key = jax.random.key(7)
    keep = num_kept_patches(10, 0.3)
    kept, ids = random_patch_mask(tokens, keep, key)
    assert keep == 7 and kept.shape == (3, 7, 4) and ids.shape == (3, 7) and ids.dtype == jnp.int32
    ids_np = np.asarray(ids)
    noise = np.asarray(jax.random.uniform(key, (3, 10)))
    for b in range(3):
        assert len(set(ids_np[b])) == keep  # unique
        kept_noise = noise[b, ids_np[b]]
        assert np.all(np.diff(kept_noise) >= 0)  # ordered by increasing noise
        dropped = np.setdiff1d(np.arange(10), ids_np[b])
        assert kept_noise.max() <= noise[b, dropped].min()  # the smallest-noise tokens are kept
        np.testing.assert_array_equal(kept[b], np.asarray(tokens)[b, ids_np[b]])
    _, same = random_patch_mask(tokens, keep, key)
    np.testing.assert_array_equal(same, ids)
    _, other = random_patch_mask(tokens, keep, jax.random.key(8))
    assert not np.array_equal(other, ids)
    with pytest.raises(ValueError, match="keep"):
        random_patch_mask(tokens, 11, key)


def test_output_shape_and_dim(vit, pixels, forward):
    out = forward(vit, pixels, None, 0.0)
    assert out.shape == (2, 8) and out.dtype == jnp.float32 and vit.output_dim == 8
    assert vit.position_embedding.shape == (1 + 16, 16)


def test_patch_embedding_is_row_major_over_the_floored_grid(vit, pixels):
    """Patch n = (row i, col j), n = 4 i + j, is the flattened p x p x 3 block times the kernel."""
    patches = np.asarray(vit.patch_embed(pixels)).reshape(2, 16, 16)
    kernel = np.asarray(vit.patch_embed.kernel[...]).reshape(4 * 4 * 3, 16)
    px = np.asarray(pixels)
    ref = np.stack(
        [px[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, :].reshape(2, -1) @ kernel for i in range(4) for j in range(4)],
        axis=1,
    )
    np.testing.assert_allclose(patches, ref, rtol=1e-4, atol=1e-4)


def test_border_pixels_beyond_the_grid_are_ignored(vit, pixels, forward):
    changed = pixels.at[:, 16:, :, :].add(5.0).at[:, :, 16:, :].add(5.0)
    np.testing.assert_allclose(forward(vit, changed, None, 0.0), forward(vit, pixels, None, 0.0), atol=1e-6)


def test_unmasked_forward_matches_manual_composition(vit, pixels):
    """cls pooling: ln_post(transformer(ln_pre([cls + pos0, patches + pos1:]))[:, 0]) @ proj."""
    tokens = np.asarray(vit.patch_embed(pixels)).reshape(2, 16, 16)
    pos = np.asarray(vit.position_embedding[...])
    cls = np.broadcast_to(np.asarray(vit.class_embedding[...]) + pos[0], (2, 1, 16))
    x = jnp.asarray(np.concatenate([cls, tokens + pos[1:]], axis=1))
    pooled = vit.ln_post(vit.transformer(vit.ln_pre(x))[:, 0])
    ref = np.asarray(pooled) @ np.asarray(vit.proj.kernel[...])
    np.testing.assert_allclose(vit(pixels), ref, rtol=1e-4, atol=1e-5)


def test_mask_ratio_zero_ignores_mask_key(vit, pixels, forward):
    plain = forward(vit, pixels, None, 0.0)
    with_key = forward(vit, pixels, jax.random.key(3), 0.0)
    np.testing.assert_array_equal(plain, with_key)


def test_masked_forward_keeps_cls_and_position_embeddings(vit, pixels, forward):
    key = jax.random.key(4)
    masked = forward(vit, pixels, key, 0.5)
    assert masked.shape == (2, 8)
    assert np.abs(np.asarray(masked) - np.asarray(forward(vit, pixels, None, 0.0))).max() > 1e-4
    np.testing.assert_array_equal(masked, forward(vit, pixels, key, 0.5))  # deterministic per key
    assert np.abs(np.asarray(masked) - np.asarray(forward(vit, pixels, jax.random.key(5), 0.5))).max() > 1e-5
    # reference: mask the position-embedded patch tokens with the same key, then prepend the class token
    pos = vit.position_embedding[...]
    tokens = vit.patch_embed(pixels).reshape(2, 16, 16) + pos[1:]
    kept, _ = random_patch_mask(tokens, num_kept_patches(16, 0.5), key)
    cls = jnp.broadcast_to(vit.class_embedding[...] + pos[0], (2, 1, 16))
    x = jnp.concatenate([cls, kept], axis=1)
    ref = vit.proj(vit.ln_post(vit.transformer(vit.ln_pre(x))[:, 0]))
    np.testing.assert_allclose(masked, ref, rtol=1e-4, atol=1e-5)


def test_gap_pool_uses_patch_tokens():
    model = VisionTransformer(dataclasses.replace(TINY, pool="gap", output_dim=None), rngs=nnx.Rngs(1))
    px = jnp.asarray(np.random.RandomState(2).randn(1, 16, 16, 3), jnp.float32)
    assert model.output_dim == 16 and model.proj is None
    tokens = model.patch_embed(px).reshape(1, 16, 16) + model.position_embedding[1:]
    cls = (model.class_embedding[...] + model.position_embedding[0])[None, None]
    hidden = model.transformer(model.ln_pre(jnp.concatenate([cls, tokens], axis=1)))
    ref = model.ln_post(hidden[:, 1:].mean(axis=1))
    np.testing.assert_allclose(model(px), ref, rtol=1e-4, atol=1e-5)


def _hidden_without_ln_pre(model, px, kept_ids=None):
    """[cls + pos0, (patches + pos1:)[kept_ids]] through the blocks, no ln_pre (FLIP's order)."""
    pos = np.asarray(model.position_embedding[...])
    tokens = np.asarray(model.patch_embed(px)).reshape(px.shape[0], 16, 16) + pos[1:]
    if kept_ids is not None:
        tokens = np.take_along_axis(tokens, np.asarray(kept_ids)[:, :, None], axis=1)
    cls = np.broadcast_to(np.asarray(model.class_embedding[...]) + pos[0], (px.shape[0], 1, 16))
    return model.transformer(jnp.asarray(np.concatenate([cls, tokens], axis=1)))


def test_flip_options_no_ln_pre_mean_all_pool_and_projection_bias(pixels):
    """ln_pre=False, pool='mean_all', proj_bias=True: mean_t ln_post(blocks(x))[:, t] @ W + b."""
    config = dataclasses.replace(TINY, ln_pre=False, pool="mean_all", proj_bias=True)
    model = VisionTransformer(config, rngs=nnx.Rngs(3))
    assert model.ln_pre is None and "ln_pre" not in nnx.state(model, nnx.Param)
    model.proj.bias[...] = jnp.arange(8, dtype=jnp.float32) / 8  # a nonzero bias
    hidden = _hidden_without_ln_pre(model, pixels)  # [2, 17, 16]
    kernel, bias = np.asarray(model.proj.kernel[...]), np.arange(8) / 8
    ref = np.asarray(model.ln_post(hidden)).mean(axis=1) @ kernel + bias
    out = np.asarray(model(pixels))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # unlike 'gap' (norm of the mean of the patch tokens), the class token counts and the norm comes first
    gap = np.asarray(model.ln_post(hidden[:, 1:].mean(axis=1))) @ kernel + bias
    assert np.abs(out - gap).max() > 1e-3


def test_mean_all_pool_of_a_masked_forward_averages_cls_and_kept_tokens(pixels):
    model = VisionTransformer(dataclasses.replace(TINY, ln_pre=False, pool="mean_all"), rngs=nnx.Rngs(4))
    key = jax.random.key(9)
    masked = model(pixels, mask_ratio=0.25, mask_key=key)
    noise = np.asarray(jax.random.uniform(key, (2, 16)))
    kept_ids = np.argsort(noise, axis=1)[:, :12]  # int(16 * 0.75) patches with the smallest noise
    hidden = _hidden_without_ln_pre(model, pixels, kept_ids)  # [2, 1 + 12, 16]
    ref = np.asarray(model.ln_post(hidden)).mean(axis=1) @ np.asarray(model.proj.kernel[...])
    np.testing.assert_allclose(masked, ref, rtol=1e-4, atol=1e-5)


def test_default_options_keep_ln_pre_and_a_bias_free_projection(vit):
    config = vit.config
    assert (config.ln_pre, config.proj_bias, config.pool) == (True, False, "cls")
    assert vit.ln_pre is not None and "bias" not in nnx.state(vit.proj, nnx.Param)


def test_errors(vit, pixels):
    with pytest.raises(ValueError, match="mask_key"):
        vit(pixels, mask_ratio=0.5)
    with pytest.raises(ValueError, match="image_size=18"):
        vit(jnp.zeros((1, 12, 12, 3)))
    with pytest.raises(ValueError, match="pool='mean'.*'cls', 'gap', 'mean_all'"):
        dataclasses.replace(TINY, pool="mean")
    with pytest.raises(ValueError, match="act"):
        dataclasses.replace(TINY, act="swish")
