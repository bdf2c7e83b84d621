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


def _terms_and_grads(model, batch, bank, sim, settings, bank_stats=None):
    from flax import nnx

    graphdef, params = nnx.split(model)

    def loss(params):
        terms, _, _ = loss_terms(nnx.merge(graphdef, params), batch, bank, sim, 1.0, settings,
                                 None, bank_stats)
        return total_loss(terms, 1.0, settings), terms

    (value, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return jax.device_get(terms), jax.device_get(grads)


@pytest.mark.parametrize("floor", [-1.0, 0.0])
def test_low_rank_bank_terms_equal_the_dense_step(setup, floor):
    """The mse step from the cached bank statistics equals the former step (S(idx, :)
    [B, N] and the whole bank): every term and the gradient of the total loss."""
    import dataclasses

    config, model, sim, bank, batch = setup
    settings = dataclasses.replace(StepSettings.from_config(config), similarity_floor=floor)
    dense = dataclasses.replace(settings, dense_bank_terms=True)
    stats = codes_lib.bank_statistics(bank.codes, sim)
    want_terms, want_grads = _terms_and_grads(model, batch, bank, sim, dense)
    for cached in (stats, None):  # None: the statistics computed inside the step
        got_terms, got_grads = _terms_and_grads(model, batch, bank, sim, settings, cached)
        for key in want_terms:
            np.testing.assert_allclose(got_terms[key], want_terms[key], rtol=2e-6, err_msg=key)
        for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_likelihood_bank_term_ignores_padding(setup):
    """The likelihood form keeps the [B, N] path; on a padded bank and similarity
    (24 -> 32 rows, garbage codes in the padding) it equals the unpadded one."""
    from fjsph_jax import parallel

    config, model, sim, bank, batch = setup
    settings = StepSettings.from_config(tiny_config(
        **{"train.mode": "frozen_encoder", "loss.similarity_form": "likelihood"}))
    want, _, _ = loss_terms(model, batch, bank, sim, 1.0, settings, None)
    padded_sim = similarity_lib.pad_similarity(sim, 32)
    padded_bank = jax.tree.map(lambda x: parallel.pad_rows(x, 32), bank)
    padded_bank = padded_bank._replace(codes=padded_bank.codes.at[24:].set(-1))
    got, _, _ = loss_terms(model, batch, padded_bank, padded_sim, 1.0, settings, None)
    for key in want:
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6, err_msg=key)


def test_mse_step_builds_no_batch_by_bank_array(setup):
    """The compiled mse loss holds no [B, N] array (B = 8, N = 24); the dense reference
    path does."""
    import dataclasses

    config, model, sim, bank, batch = setup
    settings = StepSettings.from_config(config)
    stats = codes_lib.bank_statistics(bank.codes, sim)
    hlo = {}
    for name, chosen in (("lowrank", settings),
                         ("dense", dataclasses.replace(settings, dense_bank_terms=True))):
        def loss(batch, bank, sim, stats, chosen=chosen):
            terms, _, _ = loss_terms(model, batch, bank, sim, 1.0, chosen, None, stats)
            return total_loss(terms, 1.0, chosen)

        hlo[name] = jax.jit(jax.grad(loss, argnums=0, allow_int=True)).lower(
            {k: v for k, v in batch.items()}, bank, sim, stats).compile().as_text()
    assert "[8,24]" not in hlo["lowrank"] and "[24,8]" not in hlo["lowrank"]
    assert "[8,24]" in hlo["dense"]
