"""Tests for fjsph_jax.methods.fjsph.code_bank: the code bank and its discrete code step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fjsph_jax.methods.fjsph import code_bank as codes_lib
from fjsph_jax import similarity

N, C, K, KS = 40, 6, 8, (3, 5)
WEIGHTS = (0.4, 0.6)


def make_similarity(eta, seed=0):
    """A JointSimilarity from random labels and random cluster ids (no k-means needed)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((N, C)) < 0.35).astype(np.float32)
    labels[0] = 0
    ids = np.stack([rng.integers(0, k, N) for k in KS]).astype(np.int32)
    return similarity.JointSimilarity(
        label_factors=similarity.normalize_labels(labels), cluster_ids=jnp.asarray(ids),
        cluster_weights=jnp.asarray(WEIGHTS, jnp.float32), eta=jnp.float32(eta),
        cluster_ks=similarity.ClusterSizes(KS))


def numpy_target(sim, floor=-1.0):
    """Dense T = floor + (1 - floor) S [N, N] (default 2S - 1) in float64 from the definition."""
    factors = np.asarray(sim.label_factors, np.float64)
    eta = float(sim.eta)
    clustered = sum(w * (ids[:, None] == ids[None, :])
                    for w, ids in zip(WEIGHTS, np.asarray(sim.cluster_ids)))
    return floor + (1 - floor) * ((1 - eta) * factors @ factors.T + eta * clustered)


def numpy_objective(b, f, g, target, alpha, gamma, seen=None):
    """alpha / (n K) (||K T_s - B F_s^T||^2 + ...) + gamma (||B - F_s||^2 + ...), with the
    unseen rows' F, G zeroed and their target columns dropped (n = seen rows)."""
    bits = b.shape[1]
    seen = np.ones(len(f), bool) if seen is None else np.asarray(seen, bool)
    f, g = f * seen[:, None], g * seen[:, None]
    target = target[:, seen]
    similarity_term = (np.sum((bits * target - b @ f[seen].T) ** 2)
                       + np.sum((bits * target - b @ g[seen].T) ** 2))
    return (alpha / (seen.sum() * bits) * similarity_term
            + gamma * (np.sum((b - f) ** 2) + np.sum((b - g) ** 2)))


def numpy_dcc(b, f, g, target, alpha, gamma, num_sweeps, seen=None):
    """Plain coordinate descent on the dense objective: for each bit column k, each entry
    takes the value (+1 on ties) with the lower dense objective, the rest fixed.

    Within a column the objective is separable over rows, so this equals the column-wise
    DCC update of the library.
    """
    b = np.array(b, np.float64)
    f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
    for _ in range(num_sweeps):
        for k in range(b.shape[1]):
            for i in range(b.shape[0]):
                values = {}
                for candidate in (1.0, -1.0):
                    b[i, k] = candidate
                    values[candidate] = numpy_objective(b, f, g, target, alpha, gamma, seen)
                b[i, k] = 1.0 if values[1.0] <= values[-1.0] else -1.0
    return b.astype(np.int8)


def random_bank(seed=1):
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random((N, K)) < 0.5, 1, -1).astype(np.int8)
    f = np.tanh(rng.standard_normal((N, K))).astype(np.float32)
    g = np.tanh(rng.standard_normal((N, K))).astype(np.float32)
    return codes_lib.CodeBank(jnp.asarray(codes), jnp.asarray(f), jnp.asarray(g))


def test_init_bank_has_seen_nothing_and_updates_mark_rows_seen():
    bank = codes_lib.init_code_bank(N, K, jax.random.key(0))
    assert bank.seen.dtype == jnp.bool_ and not bool(jnp.any(bank.seen))
    new = codes_lib.update_outputs(bank, np.array([3, 7]), np.zeros((2, K), np.float32),
                                   np.zeros((2, K), np.float32))
    assert np.flatnonzero(np.asarray(new.seen)).tolist() == [3, 7]


def test_unseen_rows_are_left_out_of_the_code_step():
    """Rows the heads never wrote hold no outputs: the step equals dense DCC on the seen
    rows' F, G (their target columns dropped), and no unseen row shapes another's code."""
    sim, bank = make_similarity(0.3), random_bank(seed=5)
    seen = np.zeros(N, bool)
    seen[: N // 2] = True
    bank = bank._replace(seen=jnp.asarray(seen))
    alpha, gamma = 2.0, 0.5
    got = codes_lib.discrete_code_step(bank, sim, similarity_weight=alpha,
                                       quantization_weight=gamma, num_sweeps=2)
    expected = numpy_dcc(bank.codes, bank.image_outputs, bank.text_outputs, numpy_target(sim),
                         alpha, gamma, num_sweeps=2, seen=seen)
    np.testing.assert_array_equal(np.asarray(got), expected)
    # Garbage in the unseen rows' F, G changes nothing.
    noisy = bank._replace(image_outputs=bank.image_outputs.at[N // 2:].set(100.0))
    again = codes_lib.discrete_code_step(noisy, sim, similarity_weight=alpha,
                                         quantization_weight=gamma, num_sweeps=2)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(got))
    # Without the similarity term, unseen rows keep their codes.
    kept = codes_lib.discrete_code_step(bank, sim, similarity_weight=0.0,
                                        quantization_weight=gamma, num_sweeps=1)
    np.testing.assert_array_equal(np.asarray(kept)[N // 2:], np.asarray(bank.codes)[N // 2:])


def test_both_weights_matter_after_normalisation():
    """alpha / (n K) puts the two terms on one scale: neither weight is swamped, so moving
    gamma from small to large moves the codes from the similarity optimum to sign(F + G)."""
    sim, bank = make_similarity(0.3), random_bank(seed=6)
    sign_sum = np.where(np.asarray(bank.image_outputs + bank.text_outputs) >= 0, 1, -1)
    agreement = []
    for gamma in (0.01, 1.0, 100.0):
        codes = codes_lib.discrete_code_step(bank, sim, similarity_weight=1.0,
                                             quantization_weight=gamma, num_sweeps=3)
        agreement.append(float(np.mean(np.asarray(codes) == sign_sum)))
    assert agreement[0] <= agreement[1] <= agreement[2] == 1.0
    assert agreement[0] < 0.9


def assert_pm_one_int8(codes):
    codes = np.asarray(codes)
    assert codes.dtype == np.int8
    assert set(np.unique(codes).tolist()) <= {-1, 1}


def test_init_code_bank():
    bank = codes_lib.init_code_bank(N, K, jax.random.key(0))
    assert_pm_one_int8(bank.codes)
    assert bank.codes.shape == (N, K) and 0.3 < float(jnp.mean(bank.codes > 0)) < 0.7
    for outputs in (bank.image_outputs, bank.text_outputs):
        assert outputs.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(outputs), np.asarray(bank.codes, np.float32))
    with pytest.raises(ValueError, match="bits must be"):
        codes_lib.init_code_bank(N, 0, jax.random.key(0))


def test_update_outputs_scatters_rows():
    bank = random_bank()
    idx = np.array([5, 0, 39])
    image = np.full((3, K), 0.25, np.float32)
    text = np.arange(3 * K, dtype=np.float32).reshape(3, K)
    new = jax.jit(codes_lib.update_outputs)(bank, idx, image, text)
    expected_f, expected_g = np.array(bank.image_outputs), np.array(bank.text_outputs)
    expected_f[idx], expected_g[idx] = image, text
    np.testing.assert_array_equal(np.asarray(new.image_outputs), expected_f)
    np.testing.assert_array_equal(np.asarray(new.text_outputs), expected_g)
    np.testing.assert_array_equal(np.asarray(new.codes), np.asarray(bank.codes))
    with pytest.raises(ValueError, match="text_out_bk must have shape"):
        codes_lib.update_outputs(bank, idx, image, text[:, :3])


@pytest.mark.parametrize("eta,floor", [(0.3, -1.0), (1.0, -1.0), (0.3, 0.0)])
def test_discrete_code_step_equals_numpy_dcc(eta, floor):
    sim, bank = make_similarity(eta), random_bank()
    alpha, gamma = 1.0, 0.5
    got = codes_lib.discrete_code_step(bank, sim, similarity_weight=alpha,
                                       quantization_weight=gamma, num_sweeps=3, floor=floor)
    assert_pm_one_int8(got)
    expected = numpy_dcc(bank.codes, bank.image_outputs, bank.text_outputs,
                         numpy_target(sim, floor), alpha, gamma, num_sweeps=3)
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.any(expected != np.asarray(bank.codes))  # the step did something


def test_objective_monotone_and_fast_equals_dense():
    sim, bank = make_similarity(0.3), random_bank(seed=2)
    alpha, gamma = 1.0, 0.5
    weights = dict(similarity_weight=alpha, quantization_weight=gamma)
    target = numpy_target(sim)
    f, g = np.asarray(bank.image_outputs, np.float64), np.asarray(bank.text_outputs, np.float64)
    constant = 2 * alpha * K / N * np.sum(target**2) + gamma * (2 * N * K + np.sum(f**2)
                                                                 + np.sum(g**2))
    objective = codes_lib.code_objective
    values = []
    for _ in range(4):
        full = float(objective(bank.codes, bank, sim, **weights))
        reduced = float(objective(bank.codes, bank, sim, include_constant=False, **weights))
        dense = float(codes_lib.dense_code_objective(bank.codes, bank, sim, **weights))
        reference = numpy_objective(np.asarray(bank.codes, np.float64), f, g, target,
                                    alpha, gamma)
        np.testing.assert_allclose(full, reference, rtol=1e-5)
        np.testing.assert_allclose(dense, reference, rtol=1e-5)
        np.testing.assert_allclose(reduced + constant, reference, rtol=1e-5)
        values.append(reduced)
        new_codes = codes_lib.discrete_code_step(bank, sim, num_sweeps=1, **weights)
        assert_pm_one_int8(new_codes)
        bank = bank._replace(codes=new_codes)
    assert all(later <= earlier + 1e-6 * abs(earlier)
               for earlier, later in zip(values, values[1:]))
    assert values[-1] < values[0]
    # (F, G) given as a pair gives the same objective as the bank.
    pair = objective(bank.codes, (bank.image_outputs, bank.text_outputs), sim, **weights)
    np.testing.assert_allclose(float(pair), float(objective(bank.codes, bank, sim, **weights)),
                               rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.7, 0.0])
def test_zero_similarity_weight_gives_sign_of_sum(gamma):
    bank = random_bank(seed=3)
    f = np.array(bank.image_outputs)
    g = np.array(bank.text_outputs)
    g[:5] = -f[:5]              # F + G == 0 exactly -> +1
    f[5:8], g[5:8] = -0.0, 0.0  # signed zeros -> +1
    f[8:10], g[8:10] = -1e-30, 0.0  # tiny negative -> -1
    bank = codes_lib.CodeBank(bank.codes, jnp.asarray(f), jnp.asarray(g))
    got = codes_lib.discrete_code_step(bank, make_similarity(0.3), similarity_weight=0.0,
                                       quantization_weight=gamma, num_sweeps=1)
    expected = np.where(f + g >= 0, 1, -1).astype(np.int8)
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.all(np.asarray(got)[:8] == 1) and np.all(np.asarray(got)[8:10] == -1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(similarity_weight=1.0, quantization_weight=0.5, num_sweeps=0), "num_sweeps"),
    (dict(similarity_weight=-1.0, quantization_weight=0.5), "similarity_weight"),
    (dict(similarity_weight=1.0, quantization_weight=-0.5), "quantization_weight"),
])
def test_discrete_code_step_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        codes_lib.discrete_code_step(random_bank(), make_similarity(0.3), **kwargs)


def test_discrete_code_step_sharded_equals_unsharded():
    sim, bank = make_similarity(0.3), random_bank(seed=4)
    weights = dict(similarity_weight=1.0, quantization_weight=0.5, num_sweeps=1)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = NamedSharding(mesh, P("data"))
    sharded_bank = jax.device_put(bank, rows)
    sharded_sim = sim._replace(
        label_factors=jax.device_put(sim.label_factors, rows),
        cluster_ids=jax.device_put(sim.cluster_ids, NamedSharding(mesh, P(None, "data"))))
    sharded = codes_lib.discrete_code_step(sharded_bank, sharded_sim, **weights)
    assert len(sharded.sharding.device_set) == 8
    unsharded = codes_lib.discrete_code_step(bank, sim, **weights)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(unsharded))


def test_padded_init_keeps_the_unpadded_rows():
    key = jax.random.key(0)
    bank = codes_lib.init_code_bank(N, K, key)
    padded = codes_lib.init_code_bank(N, K, key, num_rows=N + 5)
    for a, b in zip(padded, bank):
        assert a.shape[0] == N + 5
        np.testing.assert_array_equal(np.asarray(a)[:N], np.asarray(b))
    np.testing.assert_array_equal(np.asarray(padded.codes)[N:], 1)
    assert not np.any(np.asarray(padded.seen)[N:])
    with pytest.raises(ValueError, match="num_rows must be"):
        codes_lib.init_code_bank(N, K, key, num_rows=N - 1)
