"""`config.model.remat` and `config.model.scan_layers` compute the same function, the
same gradients and keep the same parameters (names, shapes, values) as the default.

remat: "none" | "full" (jax.checkpoint, nothing saved) | "dots" (matmul outputs saved);
scan_layers: one lax.scan over the blocks, their parameters stacked at call time (the
stored layout stays per block, so checkpoints and the weight importers are unaffected).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jax_core

from fjsph_jax.models import layers, registry
from fjsph_jax.models.text import TextTransformer
from fjsph_jax.models.vit import VisionTransformer

OPTIONS = [dict(remat=r, scan_layers=s) for s in (False, True) for r in ("none", "full", "dots")][1:]
IDS_MASK = np.array([[1] * 12, [1] * 7 + [0] * 5, [1] * 2 + [0] * 10], np.int32)


def _close(got, want):
    """float32 rounding: recomputation and fusion change the order of the sums, so errors
    are relative to the leaf's largest entry."""
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def _text_value_and_grads(options, dtype=None):
    config = registry.text_config("text_micro", vocab_size=64, context_length=12, layers=3, **options)
    model = TextTransformer(config, rngs=nnx.Rngs(0), dtype=dtype)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 64, (3, 12)) * IDS_MASK)
    mask = jnp.asarray(IDS_MASK)
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(ids, mask).astype(jnp.float32)))  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return value, grads


@pytest.fixture(scope="module")
def reference():
    return _text_value_and_grads({})


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"remat={o['remat']},scan={o['scan_layers']}")
def test_text_tower_value_and_gradients_unchanged(reference, options):
    want, want_grads = reference
    got, grads = _text_value_and_grads(options)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        _close(a, b)


def test_vit_with_flip_masking_unchanged_by_scan_and_remat():
    base = registry.vision_config("vit_micro", layers=3)
    pixels = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3), jnp.float32)

    def value_and_grads(**options):
        model = VisionTransformer(dataclasses.replace(base, **options), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(pixels, mask_ratio=0.5, mask_key=jax.random.PRNGKey(2)) ** 2)  # noqa: E731
        return jax.value_and_grad(loss)(params)

    want, want_grads = value_and_grads()
    got, grads = value_and_grads(scan_layers=True, remat="dots", attention="dot_product_attention")
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        _close(a, b)


def test_bf16_scan_and_remat_within_bf16_tolerance(reference):
    want, _ = reference
    got, _ = _text_value_and_grads(dict(remat="full", scan_layers=True), dtype=jnp.bfloat16)
    np.testing.assert_allclose(float(got), float(want), rtol=0.05, atol=0.05)


def test_parameters_keep_their_per_block_layout():
    flat = {}
    for scan in (False, True):
        config = registry.text_config("text_micro", layers=3, scan_layers=scan, remat="full")
        state = nnx.state(TextTransformer(config, rngs=nnx.Rngs(0)), nnx.Param)
        flat[scan] = {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}
    assert sorted(flat[True]) == sorted(flat[False])
    assert any(key.startswith("transformer/blocks/2/") for key in flat[True])
    for key in flat[False]:
        np.testing.assert_array_equal(flat[True][key], flat[False][key])


def _primitives(fn, *args):
    names = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.append((eqn.primitive.name, eqn.params.get("length")))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


def test_options_change_the_program_as_described():
    x = jnp.ones((2, 5, 32))

    def program(**options):
        model = layers.Transformer(32, 4, 2, 64, "gelu", 1e-5, rngs=nnx.Rngs(0), **options)
        graphdef, params = nnx.split(model)
        return _primitives(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x))), params)

    plain = program()
    assert not any(name in ("scan", "checkpoint", "remat", "remat2") for name, _ in plain)
    scanned = program(scan_layers=True)
    assert ("scan", 4) in scanned
    assert sum(name == "dot_general" for name, _ in scanned) < sum(name == "dot_general" for name, _ in plain)
    rematted = program(remat="full")
    assert any(name in ("checkpoint", "remat", "remat2") for name, _ in rematted)


def test_pretrained_towers_take_the_compute_options():
    """A checkpoint's towers build with any options (the model config must equal theirs)."""
    from fjsph_jax import encoders
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.weights.params import module_params
    from fjsph_jax.weights.towers import PretrainedTowers
    from tiny import tiny_config

    vision = registry.vision_config("vit_micro", output_dim=32)
    text = registry.text_config("text_micro", output_dim=32, vocab_size=100)
    towers = PretrainedTowers(
        vision=vision, text=text, logit_scale=2.0, source="test", kind="converted",
        vision_params=module_params(VisionTransformer(vision, rngs=nnx.Rngs(5))),
        text_params=module_params(TextTransformer(text, rngs=nnx.Rngs(6))))
    config = tiny_config(**{"model.feature_dim": 32, "data.context_length": 12, "model.scan_layers": True,
                            "model.remat": "full", "model.attention": "dot_product_attention"})
    towers = encoders.with_compute_options(towers, config)
    model = build.build_model(config, 100, with_encoders=True, seed=0, towers=towers)
    assert model.vision.config.scan_layers and model.text.config.remat == "full"
    got = module_params(model.vision)
    for key, value in towers.vision_params.items():
        np.testing.assert_array_equal(got[key], value)
