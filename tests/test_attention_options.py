"""Attention implementations and bf16 compute give the numbers of the default path.

`config.model.attention` = "xla" (the written-out einsum/softmax, the default),
"dot_product_attention" (jax.nn.dot_product_attention, implementation=None: XLA) and
"cudnn" (cuDNN flash attention: GPU only, tested when one is present). Masks: none (ViT,
interaction), causal + key padding (CLIP text), key padding only (BERT-style),
unmasked padding (FLIP text), fully masked query rows, dense boolean masks. Also: bf16
compute keeps float32 parameters and runs the towers' matmuls in bf16.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jax_core

from fjsph_jax.configuration import ConfigError
from fjsph_jax.models import layers, registry
from fjsph_jax.models.text import TextTransformer
from fjsph_jax.models.vit import VisionTransformer

FUSED = "dot_product_attention"
MASK = np.array([[1] * 12, [1] * 5 + [0] * 7, [1] + [0] * 11], np.int32)


def _attention(attention, dtype=None):
    return layers.MultiHeadAttention(16, 4, rngs=nnx.Rngs(0), dtype=dtype, attention=attention)


@pytest.fixture(scope="module")
def x_bld():
    return jnp.asarray(np.random.RandomState(0).randn(3, 12, 16), jnp.float32)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "padding_causal", "dense_causal",
                                       "dense_padding", "all_masked_rows"])
def test_fused_attention_equals_xla(x_bld, mask_kind):
    padding = jnp.asarray(MASK)
    mask = {
        "none": None,
        "causal": layers.AttentionMask(None, True),
        "padding": layers.AttentionMask(padding, False),
        "padding_causal": layers.AttentionMask(padding, True),
        "dense_causal": layers.causal_mask(12),
        "dense_padding": layers.key_padding_mask(padding),
        # Row 2 of the batch: every key padded, no causal part -> uniform weights on both paths.
        "all_masked_rows": layers.AttentionMask(jnp.asarray(MASK * np.array([[1], [1], [0]])), False),
    }[mask_kind]
    want = _attention("xla")(x_bld, mask)
    got = _attention(FUSED)(x_bld, mask)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-6)


def test_attention_mask_parts_equal_the_dense_mask():
    padding = jnp.asarray(MASK)
    text = TextTransformer(registry.text_config("text_micro", context_length=12), rngs=nnx.Rngs(0))
    parts = text.attention_mask(padding)
    np.testing.assert_array_equal(
        np.broadcast_to(parts.dense(12), (3, 1, 12, 12)),
        np.broadcast_to(text.attend_mask(padding), (3, 1, 12, 12)))


TEXT_VARIANTS = {
    "clip_causal_padding": dict(causal=True, mask_padding=True, pool="last"),
    "bert_padding": dict(causal=False, mask_padding=True, pool="first"),
    "flip_unmasked": dict(causal=False, mask_padding=False, pool="mean_all"),
    "causal_argmax": dict(causal=True, mask_padding=False, pool="argmax"),
}


@pytest.mark.parametrize("variant", sorted(TEXT_VARIANTS))
def test_text_tower_value_and_gradient_equal_across_attention(variant):
    base = registry.text_config("text_micro", vocab_size=64, context_length=12, layers=2, **TEXT_VARIANTS[variant])
    ids = jnp.asarray(np.random.RandomState(1).randint(1, 64, (3, 12)) * MASK)
    mask = jnp.asarray(MASK)

    def value_and_grad(attention):
        model = TextTransformer(dataclasses.replace(base, attention=attention), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(ids, mask)))  # noqa: E731
        return jax.value_and_grad(loss)(params)

    (want, want_grads), (got, got_grads) = value_and_grad("xla"), value_and_grad(FUSED)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_vit_equal_across_attention_with_flip_masking():
    base = registry.vision_config("vit_micro", layers=2)
    pixels = jnp.asarray(np.random.RandomState(2).randn(2, 32, 32, 3), jnp.float32)
    key = jax.random.PRNGKey(3)
    outs = [VisionTransformer(dataclasses.replace(base, attention=a), rngs=nnx.Rngs(0))(
        pixels, mask_ratio=0.5, mask_key=key) for a in ("xla", FUSED)]
    np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(outs[0]), rtol=1e-5, atol=1e-5)


def test_bf16_fused_attention_within_bf16_tolerance_of_fp32(x_bld):
    mask = layers.AttentionMask(jnp.asarray(MASK), True)
    want = np.asarray(_attention("xla")(x_bld, mask))
    for attention in ("xla", FUSED):
        got = _attention(attention, dtype=jnp.bfloat16)(x_bld, mask)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05)


def _dot_operand_dtypes(fn, *args):
    """Input dtypes of every dot_general / conv in fn's jaxpr (sub-jaxprs included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("attention", ["xla", FUSED])
def test_bf16_towers_keep_fp32_params_and_run_bf16_matmuls(attention):
    vision = VisionTransformer(registry.vision_config("vit_micro", attention=attention), rngs=nnx.Rngs(0),
                               dtype=jnp.bfloat16)
    text = TextTransformer(registry.text_config("text_micro", attention=attention), rngs=nnx.Rngs(0),
                           dtype=jnp.bfloat16)
    for module in (vision, text):
        dtypes = {str(p.dtype) for p in jax.tree.leaves(nnx.state(module, nnx.Param))}
        assert dtypes == {"float32"}
    pixels = jnp.zeros((2, 32, 32, 3), jnp.float32)
    ids, mask = jnp.ones((2, 12), jnp.int32), jnp.ones((2, 12), jnp.int32)
    for fn, args in ((lambda p: vision(p), (pixels,)), (lambda i, m: text(i, m), (ids, mask))):
        operands = _dot_operand_dtypes(fn, *args)
        assert operands and all(set(dt) == {"bfloat16"} for dt in operands), operands
    # ... and the outputs are the float32 towers' to bf16 precision.
    full = VisionTransformer(registry.vision_config("vit_micro"), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(4).randn(2, 32, 32, 3), jnp.float32)
    np.testing.assert_allclose(np.asarray(vision(x), np.float32), np.asarray(full(x)), rtol=0.05, atol=0.05)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs an NVIDIA GPU")
def test_cudnn_attention_equals_xla_on_gpu():
    base = registry.text_config("text_micro", vocab_size=64, context_length=16, width=64, heads=2, layers=2)
    mask = jnp.asarray([[1] * 16, [1] * 5 + [0] * 11])
    ids = jnp.asarray(np.random.RandomState(1).randint(1, 64, (2, 16))) * mask
    outs = [TextTransformer(dataclasses.replace(base, attention=a), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)(ids, mask)
            for a in ("xla", "cudnn")]
    np.testing.assert_allclose(np.asarray(outs[1], np.float32), np.asarray(outs[0], np.float32), atol=0.05)


def test_config_keys_reach_the_towers_and_bad_values_name_the_key():
    from fjsph_jax import encoders
    from tiny import tiny_config

    config = tiny_config()
    vision, text = encoders.tower_configs(config, 100)
    assert (vision.attention, vision.remat, vision.scan_layers) == ("xla", "none", False)  # today's default
    config.model.attention = FUSED
    config.model.remat = "dots"
    config.model.scan_layers = True
    vision, text = encoders.tower_configs(config, 100)
    for tower in (vision, text):
        assert (tower.attention, tower.remat, tower.scan_layers) == (FUSED, "dots", True)
    config.model.attention = "flash"
    with pytest.raises(ConfigError, match=r"config\.model\.attention='flash'.*'xla'"):
        encoders.tower_configs(config, 100)
    with pytest.raises(ValueError, match="ViTConfig.attention"):
        registry.vision_config("vit_micro", attention="flash")
