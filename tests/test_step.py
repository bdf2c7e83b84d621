"""Loss assembly of the train step: which terms count when, and the settings from config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax.methods.fjsph import build
from fjsph_jax.methods.fjsph import code_bank as codes_lib
from fjsph_jax import similarity as similarity_lib
from fjsph_jax.methods.fjsph.step import StepSettings, loss_terms, total_loss
from tiny import tiny_config


@pytest.fixture(scope="module")
def setup():
    config = tiny_config(**{"train.mode": "frozen_encoder"})
    model = build.build_model(config, vocab_size=10, with_encoders=False, seed=0)
    rng = np.random.default_rng(0)
    labels = (rng.random((24, 5)) < 0.4).astype(np.uint8)
    labels[labels.sum(1) == 0, 1] = 1
    sim = similarity_lib.build_joint_similarity(labels, cluster_ks=(3,), eta=0.3,
                                                key=jax.random.PRNGKey(0))
    bank = codes_lib.init_code_bank(24, config.bits, jax.random.PRNGKey(1))
    batch = {"image_features": rng.standard_normal((8, 32)).astype(np.float32),
             "text_features": rng.standard_normal((8, 32)).astype(np.float32),
             "index": np.array([0, 5, 9, 2, 17, 23, 11, 4], np.int32)}
    return config, model, sim, bank, batch


def test_terms_are_finite_and_outputs_bounded(setup):
    config, model, sim, bank, batch = setup
    settings = StepSettings.from_config(config)
    terms, u, v = loss_terms(model, batch, bank, sim, 1.0, settings, None)
    assert set(terms) == {"contrastive", "similarity", "bank_similarity", "quantization",
                          "balance", "fused"}
    assert all(np.isfinite(float(t)) for t in terms.values())
    assert u.shape == v.shape == (8, config.bits) and float(jnp.max(jnp.abs(u))) < 1


def test_bank_terms_only_count_once_the_bank_is_active(setup):
    config, model, sim, bank, batch = setup
    settings = StepSettings.from_config(config)
    terms, _, _ = loss_terms(model, batch, bank, sim, 0.0, settings, None)
    inactive = float(total_loss(terms, 0.0, settings))
    active = float(total_loss(terms, 1.0, settings))
    expected = (settings.bank_similarity_weight * terms["bank_similarity"]
                + settings.quantization_weight * terms["quantization"])
    np.testing.assert_allclose(active - inactive, float(expected), rtol=1e-5)


def test_similarity_form_and_floor_come_from_config(setup):
    config, model, sim, bank, batch = setup
    mse = StepSettings.from_config(config)
    likelihood = StepSettings.from_config(tiny_config(**{"loss.similarity_form": "likelihood"}))
    assert mse.similarity_floor == config.loss.similarity_floor
    a = jnp.ones((2, 4))
    s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    assert float(mse.similarity_loss(a, a, s)) != float(likelihood.similarity_loss(a, a, s))


def test_frozen_contrastive_term_trains_the_projections(setup):
    """In frozen mode the features are constants; the contrastive term must act on something
    trained: its gradient reaches the projections that feed the hash heads."""
    from flax import nnx

    config, model, sim, bank, batch = setup
    settings = StepSettings.from_config(config)
    graphdef, params = nnx.split(model)

    def contrastive(params):
        terms, _, _ = loss_terms(nnx.merge(graphdef, params), batch, bank, sim, 0.0, settings,
                                 None)
        return terms["contrastive"]

    grads = jax.grad(contrastive)(params)
    norm = lambda tree: float(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))  # noqa: E731
    assert norm(grads["image_proj"]) > 1e-8 and norm(grads["text_proj"]) > 1e-8
    assert norm(grads["image_hash"]) == 0.0  # the heads read the embeddings, not the reverse
