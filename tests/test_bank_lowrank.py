"""FJSPH's bank term from cached low-rank statistics, padded training-set arrays, and the
train state created on the mesh: each against the direct (dense, unpadded, eager) way."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fjsph_jax import parallel
from fjsph_jax import similarity
from fjsph_jax.methods.fjsph import code_bank as codes_lib
from fjsph_jax.methods.fjsph import objectives

N, C, K, B, KS, WEIGHTS = 37, 6, 8, 5, (3, 5), (0.4, 0.6)  # N = 37: not a multiple of 8
IDX = np.array([3, 0, 17, 36, 9], np.int32)


def make_sim(eta, ks, seed=0, num_items=N):
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_items, C)) < 0.35).astype(np.float32)
    labels[0] = 0  # an unlabelled item: a zero row of N_hat
    ids = np.array([rng.integers(0, k, num_items) for k in ks], np.int32)
    return similarity.JointSimilarity(
        label_factors=similarity.normalize_labels(labels),
        cluster_ids=jnp.asarray(ids.reshape(len(ks), num_items)),
        cluster_weights=jnp.asarray(WEIGHTS[: len(ks)], jnp.float32),
        eta=jnp.float32(eta),
        cluster_ks=similarity.ClusterSizes(ks))


def random_codes(seed=1, num_items=N):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.where(rng.random((num_items, K)) < 0.5, 1, -1).astype(np.int8))


def eight_device_mesh():
    return Mesh(np.array(jax.devices()[:8]), ("data",))


def place_padded(sim, codes, mesh):
    """``sim`` and ``codes`` padded to a multiple of the mesh's devices, rows split."""
    rows = parallel.padded_num_rows(sim.num_items, mesh)
    sim = similarity.pad_similarity(sim, rows)
    sim = jax.device_put(sim, sim._replace(
        label_factors=NamedSharding(mesh, P("data")),
        cluster_ids=NamedSharding(mesh, P(None, "data")),
        cluster_weights=NamedSharding(mesh, P()), eta=NamedSharding(mesh, P())))
    codes = parallel.pad_rows(codes, rows, value=1)
    return sim, jax.device_put(codes, NamedSharding(mesh, P("data")))


def low_rank_loss(sim, codes, floor):
    """``h -> bank mse`` from the statistics of ``codes`` (computed once, as cached)."""
    stats = codes_lib.bank_statistics(codes, sim)

    def loss(h):
        target_codes = similarity.apply_target_rows(sim, stats.projections, IDX, floor=floor)
        squares = similarity.target_row_squared_norms(sim, stats.target, IDX, floor=floor)
        return objectives.bank_similarity_mse(h, target_codes, squares, stats.code_gram,
                                              sim.num_valid)

    return loss


def dense_loss(sim, codes, floor):
    """The step's former bank term: S(idx, :) [B, N] and similarity_mse against B."""
    def loss(h):
        rows = similarity.similarity_rows_for_indices(sim, IDX)
        return objectives.similarity_mse(h, codes.astype(jnp.float32), rows, floor=floor)

    return loss


def numpy_target(sim, floor):
    factors = np.asarray(sim.label_factors, np.float64)
    ids = np.asarray(sim.cluster_ids)
    clustered = sum((w * (i[:, None] == i[None, :]) for w, i in zip(WEIGHTS, ids)),
                    np.zeros((len(factors),) * 2))
    eta = float(sim.eta)
    return floor + (1 - floor) * ((1 - eta) * factors @ factors.T + eta * clustered)


CASES = [(0.0, ()), (0.0, KS), (0.3, KS)]  # no clusters, clusters at eta 0, eta 0.3


@pytest.mark.parametrize("floor", [-1.0, 0.0])
@pytest.mark.parametrize("eta, ks", CASES)
@pytest.mark.parametrize("sharded", [False, True])
def test_low_rank_bank_loss_equals_dense_formula(eta, ks, floor, sharded):
    """Values and gradients; sharded: the bank and factors padded 37 -> 40 rows over 8
    devices, against the unpadded single-device dense formula."""
    sim, codes = make_sim(eta, ks), random_codes()
    h = jnp.asarray(np.tanh(np.random.default_rng(2).standard_normal((B, K))), jnp.float32)
    want, want_grad = jax.jit(jax.value_and_grad(dense_loss(sim, codes, floor)))(h)
    if sharded:
        sim, codes = place_padded(sim, codes, eight_device_mesh())
        assert sim.num_items == 40 and sim.num_valid == N
    got, got_grad = jax.jit(jax.value_and_grad(low_rank_loss(sim, codes, floor)))(h)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-5,
                               atol=1e-8)
    # and both against float64 numpy
    target = numpy_target(make_sim(eta, ks), floor)[IDX]
    inner = np.asarray(h, np.float64) @ np.asarray(random_codes(), np.float64).T / K
    np.testing.assert_allclose(float(got), np.mean((inner - target) ** 2), rtol=1e-5)


@pytest.mark.parametrize("floor", [-1.0, 0.0])
def test_rows_of_target_and_squared_norms_equal_dense(floor):
    sim, codes = make_sim(0.3, KS), random_codes()
    target = numpy_target(sim, floor)
    x = np.asarray(codes, np.float64)
    stats = codes_lib.bank_statistics(codes, sim)
    rows = similarity.apply_target_rows(sim, stats.projections, IDX, floor=floor)
    np.testing.assert_allclose(np.asarray(rows), (target @ x)[IDX], rtol=1e-5, atol=1e-4)
    squares = similarity.target_row_squared_norms(sim, stats.target, IDX, floor=floor)
    np.testing.assert_allclose(np.asarray(squares), np.sum(target[IDX] ** 2, axis=1),
                               rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats.code_gram), x.T @ x)


def test_bank_statistics_ignore_padding():
    """Garbage in the padding rows (codes, factors, cluster ids) changes no statistic."""
    sim, codes = make_sim(0.3, KS), random_codes()
    want = codes_lib.bank_statistics(codes, sim)
    padded = similarity.pad_similarity(sim, 40)
    garbage = padded._replace(
        label_factors=padded.label_factors.at[N:].set(5.0),
        cluster_ids=padded.cluster_ids.at[:, N:].set(1))
    got = codes_lib.bank_statistics(parallel.pad_rows(codes, 40, value=-1), garbage)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def _bank(seed, num_items=N, seen_fraction=0.7):
    rng = np.random.default_rng(seed)
    return codes_lib.CodeBank(
        codes=random_codes(seed, num_items),
        image_outputs=jnp.asarray(np.tanh(rng.standard_normal((num_items, K))), jnp.float32),
        text_outputs=jnp.asarray(np.tanh(rng.standard_normal((num_items, K))), jnp.float32),
        seen=jnp.asarray(rng.random(num_items) < seen_fraction))


def _pad_bank(bank, rows, mesh):
    padded = codes_lib.CodeBank(
        codes=parallel.pad_rows(bank.codes, rows, value=1),
        image_outputs=parallel.pad_rows(bank.image_outputs, rows, value=7.0),
        text_outputs=parallel.pad_rows(bank.text_outputs, rows, value=-3.0),
        seen=parallel.pad_rows(bank.seen, rows, value=True))  # even "seen" padding is ignored
    return jax.device_put(padded, NamedSharding(mesh, P("data")))


@pytest.mark.parametrize("floor", [-1.0, 0.0])
def test_padded_code_step_and_objective_equal_unpadded(floor):
    """DCC on the bank padded 37 -> 40 over 8 devices gives the unpadded single-device
    codes on the real rows and keeps the padding rows' codes; J is unchanged."""
    sim, bank = make_sim(0.3, KS), _bank(3)
    mesh = eight_device_mesh()
    psim, _ = place_padded(sim, bank.codes, mesh)
    pbank = _pad_bank(bank, 40, mesh)
    weights = dict(similarity_weight=1.0, quantization_weight=0.5)
    want = codes_lib.discrete_code_step(bank, sim, num_sweeps=2, floor=floor, **weights)
    got = codes_lib.discrete_code_step(pbank, psim, num_sweeps=2, floor=floor, **weights)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got)[:N], np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got)[N:], 1)
    for objective in (codes_lib.code_objective, codes_lib.dense_code_objective):
        np.testing.assert_allclose(
            float(objective(got, pbank, psim, floor=floor, **weights)),
            float(objective(want, bank, sim, floor=floor, **weights)), rtol=1e-5)


# ------------------------------------------------------------- the method on the mesh


def _method(config, devices, workdir):
    from fjsph_jax import inputs
    from fjsph_jax.methods.fjsph.method import FJSPHMethod

    mesh = parallel.make_mesh(devices)
    data = inputs.prepare_training_data(config, workdir, mesh, input_kind="features")
    return FJSPHMethod(config, data, mesh), data


def _run(method, data, num_steps):
    from fjsph_jax.data.batches import EpochBatcher

    state = method.init_state()
    batcher = EpochBatcher(len(data.splits.train), method.config.train.global_batch_size,
                           method.config.seed)
    history = []
    for step in range(num_steps):
        state = method.before_step(state, step)
        pos = batcher.indices(step)
        local = data.load_rows(data.splits.train[pos])
        local["index"] = pos.astype(np.int32)
        state, metrics = method.train_step(state, parallel.global_batch(local, method.mesh),
                                           step)
        history.append(jax.device_get(metrics))
    return state, history


def test_state_is_created_on_the_mesh_bit_identical_to_the_eager_construction(tmp_path):
    """One jit with out_shardings builds the state; it equals the former eager
    construction (build_model, optimizer.init, init_code_bank) bit for bit, and the bank
    (37 rows padded to 40) is split over the 8 devices."""
    from flax import nnx

    from fjsph_jax.methods.fjsph import build
    from tiny import tiny_config

    config = tiny_config(**{"train.mode": "frozen_encoder", "data.num_train": N})
    method, data = _method(config, jax.devices()[:8], str(tmp_path))
    state = method.init_state()
    assert state.bank.codes.shape == (40, config.bits)
    assert len(state.bank.codes.sharding.device_set) == 8
    assert state.bank.codes.sharding.spec == P("data")
    assert state.bank_stats.code_gram.sharding.is_fully_replicated
    model = build.build_model(config, data.vocab_size, with_encoders=False, seed=config.seed,
                              input_dims=data.feature_dims)
    _, params = nnx.split(model)
    key = jax.random.PRNGKey(config.seed)
    eager = {"params": params, "opt_state": method.optimizer.init(params),
             "bank": codes_lib.init_code_bank(N, config.bits, jax.random.fold_in(key, 1)),
             "rng": jax.random.fold_in(key, 2)}
    got = {"params": state.params, "opt_state": state.opt_state,
           "bank": jax.tree.map(lambda x: x[:N], state.bank), "rng": state.rng}
    want_leaves = jax.tree_util.tree_leaves_with_path(eager)
    got_leaves = jax.tree.leaves(got)
    assert len(want_leaves) == len(got_leaves) > 10
    for (path, want), have in zip(want_leaves, got_leaves):
        np.testing.assert_array_equal(np.asarray(have), np.asarray(want),
                                      err_msg=jax.tree_util.keystr(path))
    assert not bool(jnp.any(state.bank.seen[N:]))
    stats = codes_lib.bank_statistics(eager["bank"].codes, make_unpadded(method.sim))
    for a, b in zip(jax.tree.leaves(state.bank_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def make_unpadded(sim):
    """The unpadded similarity of a padded one (host copies of the real rows)."""
    n = sim.num_valid
    return sim._replace(label_factors=jnp.asarray(np.asarray(sim.label_factors)[:n]),
                        cluster_ids=jnp.asarray(np.asarray(sim.cluster_ids)[:, :n]),
                        cluster_weights=jnp.asarray(np.asarray(sim.cluster_weights)),
                        eta=jnp.asarray(np.asarray(sim.eta)), valid_items=None)


def test_padded_training_on_eight_devices_equals_one_device(tmp_path):
    """FJSPHMethod with 60 training rows (bank padded to 64 on 8 devices, unpadded on 1):
    five steps with two code updates (every 2 steps) give the same losses, parameters,
    codes and head outputs; the bank statistics stay those of the codes."""
    from tiny import tiny_config

    config = tiny_config(**{"train.mode": "frozen_encoder", "data.num_train": 60,
                            "codes.update_every_steps": 2})
    runs = []
    for devices in (1, 8):
        method, data = _method(config, jax.devices()[:devices], str(tmp_path / str(devices)))
        runs.append((method, *_run(method, data, 5)))
    (m1, s1, h1), (m8, s8, h8) = runs
    assert s1.bank.codes.shape[0] == 60 and s8.bank.codes.shape[0] == 64
    assert m1.sim.num_items == 60 and m8.sim.num_items == 64 and m8.sim.num_valid == 60
    for a, b in zip(h1, h8):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=2e-6, err_msg=key)
    assert h1[-1]["bank_similarity"] != h1[0]["bank_similarity"]  # the codes did change
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(s1.params)),
                            jax.tree.leaves(jax.device_get(s8.params))):
        name = jax.tree_util.keystr(path)
        if "k_proj']['bias" in name:  # zero gradient up to float noise (test_train.py)
            assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(s8.bank.codes)[:60], np.asarray(s1.bank.codes))
    np.testing.assert_allclose(np.asarray(s8.bank.image_outputs)[:60],
                               np.asarray(s1.bank.image_outputs), atol=1e-6)
    assert not np.any(np.asarray(s8.bank.seen)[60:])
    for state, method in ((s1, m1), (s8, m8)):
        fresh = codes_lib.bank_statistics(state.bank.codes, method.sim)
        for a, b in zip(jax.tree.leaves(state.bank_stats), jax.tree.leaves(fresh)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_pretrained_towers_enter_the_state_created_on_the_mesh(tmp_path):
    """End to end from a (tiny) CLIP checkpoint: the towers' weights enter the jitted
    state creation as arguments; the parameters equal build_model(towers=...) bit for bit."""
    pytest.importorskip("torch")
    from flax import nnx

    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.training import loop
    from fjsph_jax.weights.testing import save_tiny_hf_clip
    from tiny import tiny_config

    checkpoint = str(tmp_path / "clip")
    save_tiny_hf_clip(
        checkpoint, projection_dim=32,
        vision=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64),
        text=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=16))
    config = tiny_config(**{"init.checkpoint": checkpoint})
    method, data = loop.build_method(config, str(tmp_path / "run"),
                                     parallel.make_mesh(jax.devices()[:8]))
    state = method.init_state()
    model = build.build_model(config, data.vocab_size, with_encoders=True, seed=config.seed,
                              towers=method.towers)
    _, params = nnx.split(model)
    want = jax.tree_util.tree_leaves_with_path(params)
    got = jax.tree.leaves(state.params)
    assert len(want) == len(got) > 10
    for (path, a), b in zip(want, got):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a),
                                      err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(float(state.params["logit_scale"][...]),
                               method.towers.logit_scale, rtol=1e-6)
