"""Tests for fjsph_jax.models.layers against plain-numpy references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models import layers

RTOL, ATOL = 1e-5, 1e-5


def np_linear(lin, x):
    out = x @ np.asarray(lin.kernel[...])
    return out + np.asarray(lin.bias[...]) if lin.bias is not None else out


def np_layer_norm(ln, x, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(ln.scale[...]) + np.asarray(ln.bias[...])


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_attention(attn, x, mask):
    """Softmax attention with -inf on masked logits (mask: bool [B, 1|H, L, L])."""
    b, l, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q = np_linear(attn.q_proj, x).reshape(b, l, h, dh).transpose(0, 2, 1, 3)
    k = np_linear(attn.k_proj, x).reshape(b, l, h, dh).transpose(0, 2, 1, 3)
    v = np_linear(attn.v_proj, x).reshape(b, l, h, dh).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, l, d)
    return np_linear(attn.out_proj, out), weights


@pytest.fixture(scope="module")
def x_bld():
    return np.random.RandomState(0).randn(2, 5, 16).astype(np.float32)


def test_activations_match_numpy_formulas():
    x = np.linspace(-4, 4, 41).astype(np.float32)
    np.testing.assert_allclose(layers.activation("quick_gelu")(x), x / (1 + np.exp(-1.702 * x)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layers.activation("gelu")(x), np_gelu(x), rtol=RTOL, atol=ATOL)
    tanh_ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(layers.activation("gelu_tanh")(x), tanh_ref, rtol=RTOL, atol=ATOL)
    # exact and tanh GELU really differ (the test could tell them apart)
    assert np.abs(np_gelu(x) - tanh_ref).max() > 1e-4


def test_unknown_activation_lists_allowed_names():
    with pytest.raises(ValueError, match="quick_gelu.*gelu.*gelu_tanh"):
        layers.activation("relu6")


def test_mlp_matches_numpy(x_bld):
    mlp = layers.MLP(16, 32, 8, "quick_gelu", rngs=nnx.Rngs(1))
    hidden = np_linear(mlp.fc1, x_bld)
    ref = np_linear(mlp.fc2, hidden / (1 + np.exp(-1.702 * hidden)))
    out = mlp(jnp.asarray(x_bld))
    assert out.shape == (2, 5, 8) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_attention_matches_numpy_with_causal_and_padding_masks(x_bld):
    attn = layers.MultiHeadAttention(16, 2, rngs=nnx.Rngs(2))
    # example 0 has a hole at position 1; example 1 is right-padded after 3 tokens
    padding = np.array([[1, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = np.asarray(layers.key_padding_mask(jnp.asarray(padding)) & layers.causal_mask(5))
    out = attn(jnp.asarray(x_bld), jnp.asarray(mask))
    ref, weights = np_attention(attn, x_bld, mask)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # padded keys get no weight in the reference the layer matches
    assert np.all(weights[0, :, :, 1] == 0) and np.all(weights[1, :, :, 3:] == 0)
    # so changing a padded token changes no other position's output
    perturbed = x_bld.copy()
    perturbed[0, 1] += 10.0
    out2 = attn(jnp.asarray(perturbed), jnp.asarray(mask))
    np.testing.assert_allclose(out2[0, [0, 2, 3, 4]], out[0, [0, 2, 3, 4]], rtol=1e-5, atol=1e-5)


def test_attention_without_mask_matches_numpy(x_bld):
    attn = layers.MultiHeadAttention(16, 4, rngs=nnx.Rngs(3))
    ref, _ = np_attention(attn, x_bld, np.ones((1, 1, 5, 5), bool))
    np.testing.assert_allclose(attn(jnp.asarray(x_bld)), ref, rtol=1e-4, atol=1e-5)


def test_fully_masked_row_is_finite(x_bld):
    attn = layers.MultiHeadAttention(16, 2, rngs=nnx.Rngs(4))
    out = attn(jnp.asarray(x_bld), jnp.zeros((2, 1, 5, 5), bool))
    assert np.all(np.isfinite(out))


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="num_heads"):
        layers.MultiHeadAttention(16, 3, rngs=nnx.Rngs(0))


def test_causal_transformer_output_i_ignores_later_tokens(x_bld):
    model = layers.Transformer(16, 2, 2, 32, "gelu", 1e-5, rngs=nnx.Rngs(5))
    mask = layers.causal_mask(5)
    out = model(jnp.asarray(x_bld), mask)
    perturbed = x_bld.copy()
    perturbed[:, 3:] += np.random.RandomState(1).randn(2, 2, 16).astype(np.float32)
    out2 = model(jnp.asarray(perturbed), mask)
    np.testing.assert_allclose(out2[:, :3], out[:, :3], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(out2[:, 3:]) - np.asarray(out[:, 3:])).max() > 1e-3


def test_block_is_pre_ln_residual(x_bld):
    eps = 1e-5
    block = layers.TransformerBlock(16, 2, 32, "gelu", eps, rngs=nnx.Rngs(6))
    # non-trivial LayerNorm parameters so that scale/bias placement is checked
    rng = np.random.RandomState(2)
    for ln in (block.ln_1, block.ln_2):
        ln.scale[...] = jnp.asarray(1 + 0.1 * rng.randn(16), jnp.float32)
        ln.bias[...] = jnp.asarray(0.1 * rng.randn(16), jnp.float32)
    mask = np.asarray(layers.causal_mask(5))
    attn_out, _ = np_attention(block.attn, np_layer_norm(block.ln_1, x_bld, eps), mask)
    h = x_bld + attn_out
    hidden = np_gelu(np_linear(block.mlp.fc1, np_layer_norm(block.ln_2, h, eps)))
    ref = h + np_linear(block.mlp.fc2, hidden)
    np.testing.assert_allclose(block(jnp.asarray(x_bld), jnp.asarray(mask)), ref, rtol=1e-4, atol=1e-4)


def test_transformer_applies_blocks_in_order(x_bld):
    model = layers.Transformer(16, 3, 2, 32, "quick_gelu", 1e-5, rngs=nnx.Rngs(7))
    assert isinstance(model.blocks, nnx.List) and len(model.blocks) == 3
    x = jnp.asarray(x_bld)
    manual = model.blocks[2](model.blocks[1](model.blocks[0](x)))
    np.testing.assert_allclose(model(x), manual, rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params(x_bld):
    block = layers.TransformerBlock(16, 2, 32, "gelu", 1e-5, rngs=nnx.Rngs(8), dtype=jnp.bfloat16)
    out = block(jnp.asarray(x_bld, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(block, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)
    ref = layers.TransformerBlock(16, 2, 32, "gelu", 1e-5, rngs=nnx.Rngs(8))(jnp.asarray(x_bld))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=0.05, atol=0.1)


def _dot_contractions(fn, *args):
    """Contracting-dimension counts of every dot_general in fn's jaxpr (sub-jaxprs too)."""
    from jax.extend import core as jax_core

    counts = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                counts.append(len(lhs_contract))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def test_linear_is_nnx_linear_computed_as_one_2d_product():
    ours = layers.linear(8, 5, rngs=nnx.Rngs(0))
    reference = nnx.Linear(8, 5, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).randn(3, 4, 8), jnp.float32)
    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-6, atol=1e-6)
    assert ours(x[0, 0]).shape == (5,) and ours(x[0]).shape == (4, 5)

    def loss(module, x):
        return jnp.sum(jnp.sin(module(x)))

    grads = [nnx.grad(loss)(m, x) for m in (ours, reference)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The weight gradient contracts one flattened axis, not batch and sequence separately
    # (two contracting axes ran 3.7x slower on XLA's CPU backend).
    def contractions(module):
        graphdef, state = nnx.split(module)
        return _dot_contractions(jax.value_and_grad(lambda s, x: loss(nnx.merge(graphdef, s), x)),
                                 state, x)

    assert contractions(ours) == [1, 1]
    assert contractions(reference) == [1, 2]  # the plain layer's weight gradient
