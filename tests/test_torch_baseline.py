"""The PyTorch baseline of the train benchmark computes what our FJSPH step computes.

benchmarks/torch_baseline.py: transformers.CLIPModel towers + heads, interaction block and
loss terms written in torch. Checked here on fixed inputs: every loss function against
fjsph_jax.methods.fjsph.objectives / similarity, the weight export against the
transformers importer (round trip), and the whole model's loss terms and gradient-step
inputs against step.loss_terms from the same initial weights (float32, CPU).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import torch_baseline as tb  # noqa: E402
from fjsph_jax import similarity as sim_lib  # noqa: E402
from fjsph_jax.methods.fjsph import code_bank as bank_lib  # noqa: E402
from fjsph_jax.methods.fjsph import objectives  # noqa: E402

ATOL = 2e-5


def _t(x):
    return torch.as_tensor(np.asarray(x))


@pytest.fixture(scope="module")
def similarity_and_stats():
    rng = np.random.RandomState(0)
    labels = (rng.rand(40, 6) < 0.3).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    sim = sim_lib.build_joint_similarity(labels, cluster_ks=(3, 5), eta=0.3, key=jax.random.PRNGKey(0))
    codes = jnp.where(jnp.asarray(rng.rand(40, 16) < 0.5), 1, -1).astype(jnp.int8)
    stats = bank_lib.bank_statistics(codes, sim)
    return sim, codes, stats


def test_loss_functions_match_objectives():
    rng = np.random.RandomState(1)
    h_a, h_b = np.tanh(rng.randn(6, 16)).astype(np.float32), np.tanh(rng.randn(6, 16)).astype(np.float32)
    s = rng.rand(6, 6).astype(np.float32)
    codes = np.where(rng.rand(6, 16) < 0.5, 1.0, -1.0).astype(np.float32)
    img, txt = rng.randn(6, 8).astype(np.float32), rng.randn(6, 8).astype(np.float32)
    for log_scale in (2.0, 5.0):  # 5 > log 100: the clamp
        np.testing.assert_allclose(
            tb.symmetric_infonce(_t(img), _t(txt), torch.tensor(log_scale)).item(),
            float(objectives.symmetric_infonce(img, txt, log_scale)), atol=ATOL)
    for floor in (-1.0, 0.0):
        np.testing.assert_allclose(tb.similarity_mse(_t(h_a), _t(h_b), _t(s), floor=floor).item(),
                                   float(objectives.similarity_mse(h_a, h_b, s, floor=floor)), atol=ATOL)
    np.testing.assert_allclose(tb.similarity_likelihood(_t(h_a), _t(h_b), _t(s), scale=8.0).item(),
                               float(objectives.similarity_likelihood(h_a, h_b, s, scale=8.0)), atol=ATOL)
    np.testing.assert_allclose(tb.quantization_loss(_t(h_a), _t(codes)).item(),
                               float(objectives.quantization_loss(h_a, codes)), atol=ATOL)
    np.testing.assert_allclose(tb.bit_balance_loss(_t(h_a)).item(),
                               float(objectives.bit_balance_loss(h_a)), atol=ATOL)


@pytest.mark.parametrize("floor", [-1.0, 0.0])
def test_bank_term_and_similarity_rows_match_ours(similarity_and_stats, floor):
    sim, codes, stats = similarity_and_stats
    tsim = tb.TorchSimilarity.from_jax(sim, "cpu")
    tstats = tb.TorchBankStatistics.from_jax(stats, "cpu")
    idx = np.array([3, 0, 17, 39, 8, 22], np.int64)
    h = np.tanh(np.random.RandomState(2).randn(6, 16)).astype(np.float32)
    tidx = torch.as_tensor(idx)
    np.testing.assert_allclose(
        tb.pairwise_similarity(tsim, tidx).numpy(),
        np.asarray(sim_lib.similarity_rows_for_indices(sim, idx))[:, idx], atol=1e-6)
    target_codes = tb.apply_target_rows(tsim, tstats, tidx, floor=floor)
    want_codes = sim_lib.apply_target_rows(sim, stats.projections, idx, floor=floor)
    np.testing.assert_allclose(target_codes.numpy(), np.asarray(want_codes), rtol=1e-5, atol=1e-4)
    squares = tb.target_row_squared_norms(tsim, tstats, tidx, floor=floor)
    want_squares = sim_lib.target_row_squared_norms(sim, stats.target, idx, floor=floor)
    np.testing.assert_allclose(squares.numpy(), np.asarray(want_squares), rtol=1e-5, atol=1e-4)
    got = tb.bank_similarity_mse(_t(h), target_codes, squares, tstats.code_gram, tsim.num_valid).item()
    # The reference: the dense [B, N] mean over every bank row.
    dense = objectives.bank_similarity_dense(h, codes, sim_lib.similarity_rows_for_indices(sim, idx),
                                             form="mse", floor=floor)
    np.testing.assert_allclose(got, float(dense), rtol=1e-5, atol=1e-6)


def test_weight_export_inverts_the_transformers_importer():
    from flax import nnx

    from fjsph_jax.models import registry
    from fjsph_jax.models.text import TextTransformer
    from fjsph_jax.models.vit import VisionTransformer
    from fjsph_jax.weights.hf_clip import _ignorable, hf_clip_rules
    from fjsph_jax.weights.params import apply_rules, module_params

    vision = registry.vision_config("vit_micro", act="quick_gelu")
    text = registry.text_config("text_micro", act="quick_gelu")
    vparams = module_params(VisionTransformer(vision, rngs=nnx.Rngs(0)))
    tparams = module_params(TextTransformer(text, rngs=nnx.Rngs(1)))
    state = tb.hf_state_dict_from_towers(vision, text, vparams, tparams, 2.5)
    back, _ = apply_rules(state, hf_clip_rules(vision.layers, text.layers), source="test", ignorable=_ignorable)
    for ours, got in ((vparams, back["vision"]), (tparams, back["text"])):
        assert sorted(ours) == sorted(got)
        for key in ours:
            np.testing.assert_array_equal(ours[key], got[key], err_msg=key)
    # ... and the state dict is exactly a CLIPModel's.
    model = tb.TorchFJSPH(_fjsph_config(vision, text))
    clip_keys = {k for k in model.clip.state_dict() if not k.endswith("position_ids")}
    assert clip_keys == set(state)


def _fjsph_config(vision, text, **kwargs):
    from fjsph_jax.methods.fjsph.model import FJSPHConfig

    return FJSPHConfig(vision=vision, text=text, feature_dim=vision.output_dim, bits=16, hash_hidden_dim=24,
                       interaction="transformer", **kwargs)


@pytest.fixture(scope="module")
def both_models():
    """Our FJSPH (micro towers, eos pooling) and the torch model holding its weights."""
    from fjsph_jax.configuration import apply_overrides

    sys.path.insert(0, os.path.join(REPO, "configs"))
    import default

    from fjsph_jax.methods.fjsph import build

    config = apply_overrides(default.get_config(), {
        "model.vision": "vit_micro", "model.text": "text_micro", "model.feature_dim": 32,
        "model.hash_hidden_dim": 24, "model.mask_ratio": 0.0, "bits": 16, "data.context_length": 12,
        "loss.cluster_ks": (3, 5),
    })
    model = build.build_model(config, 128, with_encoders=True, seed=3)
    torch_model = tb.TorchFJSPH(model.config)
    tb.load_fjsph_params(torch_model, model)
    return config, model, torch_model


def _batch(config, num_items=40, batch=6):
    rng = np.random.RandomState(4)
    lengths = np.array([12, 5, 1, 8, 3, 12])[:batch]
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int32)
    ids = (rng.randint(1, 128, (batch, 12)) * mask).astype(np.int32)
    return {
        "images": rng.randint(0, 256, (batch, 32, 32, 3)).astype(np.uint8),
        "input_ids": ids,
        "attention_mask": mask,
        "index": np.array([3, 0, 17, 39, 8, 22], np.int32)[:batch],
    }


def test_towers_and_heads_match_from_the_same_weights(both_models):
    config, model, torch_model = both_models
    batch = _batch(config)
    from fjsph_jax.data.preprocess import normalize_images

    pixels = normalize_images(jnp.asarray(batch["images"]), config.data.image_mean, config.data.image_std)
    tbatch = tb.to_torch_batch(batch, "cpu")
    with torch.no_grad():
        tpix = tb.normalize_images(tbatch["images"], config.data.image_mean, config.data.image_std)
        np.testing.assert_allclose(tpix.permute(0, 2, 3, 1).numpy(), np.asarray(pixels), atol=1e-6)
        got_img = torch_model.image_features(tpix).numpy()
        got_txt = torch_model.text_features(tbatch["input_ids"], tbatch["attention_mask"]).numpy()
        got_fused = torch_model.fuse(torch.as_tensor(got_img), torch.as_tensor(got_txt)).numpy()
    want_img = np.asarray(model.image_features(pixels))
    want_txt = np.asarray(model.text_features(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))
    np.testing.assert_allclose(got_img, want_img, atol=1e-4)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-4)
    np.testing.assert_allclose(got_fused, np.asarray(model.fuse(want_img, want_txt)), atol=1e-4)


def test_loss_terms_and_gradient_norm_match_our_step(both_models, similarity_and_stats):
    from flax import nnx

    from fjsph_jax.methods.fjsph import step as step_lib

    config, model, torch_model = both_models
    sim, codes, stats = similarity_and_stats
    settings = step_lib.StepSettings.from_config(config)
    batch = _batch(config)
    key = jax.random.PRNGKey(0)
    bank = bank_lib.init_code_bank(40, 16, key)._replace(codes=codes)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    graphdef, params = nnx.split(model)

    def loss_fn(p):
        terms, _, _ = step_lib.loss_terms(nnx.merge(graphdef, p), jbatch, bank, sim, 1.0, settings, key, stats)
        return step_lib.total_loss(terms, 1.0, settings), terms

    (want_loss, want_terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    tbatch = tb.to_torch_batch(batch, "cpu")
    tsim = tb.TorchSimilarity.from_jax(sim, "cpu")
    tstats = tb.TorchBankStatistics.from_jax(stats, "cpu")
    torch_model.zero_grad()
    terms, _, _ = tb.loss_terms(torch_model, tbatch, torch.as_tensor(np.asarray(codes)), tsim, tstats, 1.0, settings)
    loss = tb.total_loss(terms, 1.0, settings)
    loss.backward()
    assert set(terms) == set(want_terms)
    for name in terms:
        np.testing.assert_allclose(terms[name].item(), float(want_terms[name]), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(loss.item(), float(want_loss), rtol=1e-4, atol=1e-5)
    torch_norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in torch_model.parameters() if p.grad is not None]))
    want_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    np.testing.assert_allclose(torch_norm.item(), want_norm, rtol=1e-3)
    # Parameters each side leaves without gradient: none (every parameter takes part).
    assert all(p.grad is not None for p in torch_model.parameters())


def test_trainer_schedule_and_clip_follow_optax(both_models):
    """One TorchTrainer update equals optax's clipped AdamW update for a toy parameter set."""
    import optax

    settings = None
    p0 = np.random.RandomState(5).randn(3, 4).astype(np.float32)
    g = 10 * np.random.RandomState(6).randn(3, 4).astype(np.float32)  # clipped: norm > 1
    b0 = np.random.RandomState(7).randn(4).astype(np.float32)
    gb = np.random.RandomState(8).randn(4).astype(np.float32)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, end_value=1e-4)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=0.05, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    params = {"w": jnp.asarray(p0), "b": jnp.asarray(b0)}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.asarray(g), "b": jnp.asarray(gb)}, state, params)
        params = optax.apply_updates(params, updates)
    del settings

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.as_tensor(p0.copy()))
            self.b = torch.nn.Parameter(torch.as_tensor(b0.copy()))

    toy = Toy()
    groups = [{"params": [toy.w], "kind": "head", "lr": 0.0, "weight_decay": 0.05},
              {"params": [toy.b], "kind": "head", "lr": 0.0, "weight_decay": 0.0}]
    trainer = tb.TorchTrainer.__new__(tb.TorchTrainer)
    trainer.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    trainer.parameters = [toy.w, toy.b]
    trainer.schedules = {"head": lambda t: schedule(t), "encoder": lambda t: schedule(t)}
    trainer.grad_clip_norm = 1.0
    trainer.updates = 0
    for _ in range(3):
        toy.w.grad, toy.b.grad = torch.as_tensor(g.copy()), torch.as_tensor(gb.copy())
        trainer.apply_gradients()
    np.testing.assert_allclose(toy.w.detach().numpy(), np.asarray(params["w"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(toy.b.detach().numpy(), np.asarray(params["b"]), rtol=1e-5, atol=1e-6)
