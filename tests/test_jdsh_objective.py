"""JDSH's pure functions against values computed by hand and by an independent numpy code."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fjsph_jax.methods import jdsh
from fjsph_jax.methods.jdsh import objective

# The authors' MIRFlickr constants (config/JDSH_MIRFlickr.json), config.jdsh names.
MIR = {
    "image_weight": 0.5, "text_weight": 0.1, "high_order_weight": 0.4, "scale": 1.4,
    "intra_weight": 0.1, "left_loc": -0.49, "left_scale": 0.019, "left_width": 2.0,
    "right_loc": -0.49, "right_scale": 0.088, "right_width": 4.0, "min_value": -0.52,
    "max_value": 0.68, "left_gain": 0.1, "right_gain": 0.2,
}


def _numpy_target(image, text, p):
    """float64 numpy: the spec's formulas written out independently (loops for DSDW)."""
    def n(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    s_i = 2 * n(image) @ n(image).T - 1
    s_t = 2 * n(text) @ n(text).T - 1
    high = n(s_i) @ n(s_t).T
    s = p["image_weight"] * s_i + p["text_weight"] * s_t + p["high_order_weight"] * (
        high + high.T) / 2
    left = p["left_loc"] - p["left_width"] * p["left_scale"]
    right = p["right_loc"] + p["right_width"] * p["right_scale"]
    out = s.copy()
    for idx in np.ndindex(out.shape):
        if out[idx] < left:
            out[idx] = (1 + p["left_gain"] * math.exp(-(out[idx] - p["min_value"]))) * out[idx]
        if out[idx] > right:
            out[idx] = (1 + p["right_gain"] * math.exp(out[idx] - p["max_value"])) * out[idx]
    return p["scale"] * out


def _numpy_loss(ci, ct, s, intra):
    def n(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    bi, bt = n(ci), n(ct)

    def mse(a):
        return np.mean((a - s) ** 2)

    return (intra * (mse(bi @ bi.T) + mse(bt @ bt.T)) + mse(bi @ bt.T) + mse(bt @ bi.T)
            - np.mean(np.sum(bi * bt, axis=1)))


def test_joint_similarity_of_a_3x2_batch_by_hand():
    # Normalised, F_I rows are e1, e1, e2 and T rows e1, e2, e2, so
    # S_I = [[1,1,-1],[1,1,-1],[-1,-1,1]], S_T = [[1,-1,-1],[-1,1,1],[-1,1,1]],
    # every row has norm sqrt(3): S_high = <S_I_i, S_T_j> / 3 = [[1,-1,-1],[1,-1,-1],[-1,1,1]] / 3
    # and (S_high + S_high^T) / 2 = [[1,0,-1],[0,-1,0],[-1,0,1]] / 3.
    image = np.array([[2.0, 0.0], [3.0, 0.0], [0.0, 0.5]], np.float32)
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 4.0]], np.float32)
    got = np.asarray(objective.joint_similarity(image, text, MIR))
    # 0.5 S_I + 0.1 S_T + 0.4 sym(S_high)
    want = np.array([
        [0.5 + 0.1 + 0.4 / 3, 0.5 - 0.1 + 0.0, -0.5 - 0.1 - 0.4 / 3],
        [0.5 - 0.1 + 0.0, 0.5 + 0.1 - 0.4 / 3, -0.5 + 0.1 + 0.0],
        [-0.5 - 0.1 - 0.4 / 3, -0.5 + 0.1 + 0.0, 0.5 + 0.1 + 0.4 / 3],
    ])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # DSDW with the MIRFlickr constants: left = -0.528, right = -0.138. -11/15 < left;
    # the rest (11/15, 0.4, 7/15) are > right; -0.4 lies between and stays.
    s = jdsh.similarity_target(image, text, MIR)
    low = -11 / 15
    low_new = (1 + 0.1 * math.exp(-(low + 0.52))) * low
    assert low_new < low - 0.08  # pushed further down
    expect = np.array(want)
    for (i, j), value in np.ndenumerate(want):
        if value < -0.528:
            expect[i, j] = (1 + 0.1 * math.exp(-(value + 0.52))) * value
        elif value > -0.138:
            expect[i, j] = (1 + 0.2 * math.exp(value - 0.68)) * value
    assert expect[1, 2] == pytest.approx(-0.4)
    assert expect[0, 2] == pytest.approx(low_new)
    np.testing.assert_allclose(np.asarray(s), 1.4 * expect, atol=1e-6)


def test_zero_rows_are_normalised_by_eps_not_nan():
    image = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
    text = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    params = dict(MIR, image_weight=1.0, text_weight=0.0, high_order_weight=0.0)
    s = np.asarray(objective.joint_similarity(image, text, params))
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s[0], [-1.0, -1.0, -1.0], atol=1e-7)  # n(0) = 0: 2*0 - 1
    np.testing.assert_allclose(s[1, 2], 2 / math.sqrt(2) - 1, atol=1e-6)


def test_similarity_target_matches_numpy_and_takes_configdict_and_dict():
    rng = np.random.default_rng(0)
    image = np.maximum(rng.normal(size=(7, 5)), 0).astype(np.float32)
    text = (rng.random((7, 9)) < 0.4).astype(np.float32)
    want = _numpy_target(image.astype(np.float64), text.astype(np.float64), MIR)
    for params in (MIR, ml_collections.ConfigDict(MIR)):
        got = np.asarray(jdsh.similarity_target(image, text, params))
        assert got.shape == (7, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_target_has_no_gradient():
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.random((4, 3)), jnp.float32)
    text = jnp.asarray(rng.random((4, 6)), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(jdsh.similarity_target(x, text, MIR)))(image)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


# ----------------------------------------------------------------------------------- DSDW

# Dyadic constants (exact in float32): left = -0.25 - 2 * 0.125 = -0.5,
# right = 0.0 + 4 * 0.0625 = 0.25.
DYADIC = dict(MIR, left_loc=-0.25, left_width=2.0, left_scale=0.125, right_loc=0.0,
              right_width=4.0, right_scale=0.0625, min_value=-0.75, max_value=0.5,
              left_gain=0.5, right_gain=0.25)


def test_dsdw_branches_and_strict_inequalities():
    s = jnp.asarray([[-0.75, -0.5, -0.375], [0.0, 0.25, 0.375]], jnp.float32)
    got = np.asarray(objective.dsdw(s, DYADIC))
    want = np.array([
        [(1 + 0.5 * math.exp(-(-0.75 + 0.75))) * -0.75,  # < left: 1.5 * -0.75
         -0.5,  # == left: strict, unchanged
         -0.375],  # between: unchanged
        [0.0,
         0.25,  # == right: strict, unchanged
         (1 + 0.25 * math.exp(0.375 - 0.5)) * 0.375],  # > right
    ])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 0] == pytest.approx(-1.125)
    _, low, high = objective.dsdw_with_masks(s, DYADIC)
    assert np.asarray(low).tolist() == [[True, False, False], [False, False, False]]
    assert np.asarray(high).tolist() == [[False, False, False], [False, False, True]]


def test_dsdw_right_branch_reads_the_left_branch_result():
    # Thresholds crossed on purpose (left = 0.5 > right = 0.26) so that one entry can take
    # both branches: 0.25 < left -> 0.25 * (1 + 0.1 e^0) = 0.275, which is > right, so the
    # right branch then applies to 0.275. Right-before-left, or a right mask taken from the
    # original matrix (0.25 > 0.26 is false), would both give 0.275.
    params = dict(MIR, left_loc=0.5, left_width=0.0, left_scale=0.0, right_loc=0.26,
                  right_width=0.0, right_scale=0.0, min_value=0.25, max_value=0.5,
                  left_gain=0.1, right_gain=0.2)
    got = float(objective.dsdw(jnp.asarray([[0.25]], jnp.float32), params)[0, 0])
    after_left = 0.25 * 1.1
    want = (1 + 0.2 * math.exp(after_left - 0.5)) * after_left
    assert got == pytest.approx(want, rel=1e-6)
    assert abs(got - after_left) > 0.04


def test_dsdw_none_skips_the_reweighting():
    rng = np.random.default_rng(2)
    image, text = rng.random((6, 4)).astype(np.float32), rng.random((6, 5)).astype(np.float32)
    plain = np.asarray(objective.joint_similarity(image, text, MIR))
    got = np.asarray(jdsh.similarity_target(image, text, dict(MIR, dsdw="none")))
    np.testing.assert_allclose(got, 1.4 * plain, rtol=1e-6)
    with pytest.raises(ValueError, match="config.jdsh.dsdw='gauss'"):
        jdsh.similarity_target(image, text, dict(MIR, dsdw="gauss"))
    with pytest.raises(KeyError, match="config.jdsh.scale"):
        jdsh.similarity_target(image, text, {k: v for k, v in MIR.items() if k != "scale"})


# ----------------------------------------------------------------------------------- loss


def test_loss_of_a_2x2_batch_by_hand():
    # B_I = [[1,1],[1,-1]]/sqrt2, B_T = [[1,0],[0,-1]]: B_I B_I^T = B_T B_T^T = I,
    # B_I B_T^T = a [[1,-1],[1,1]], a = 1/sqrt2, B_T B_I^T its transpose; S = [[1,.5],[.5,1]].
    # intra = 2 * MSE(I, S) = 2 * (0.25 + 0.25) / 4 = 0.25
    # inter = 2 * ((a-1)^2 * 2 + (a+.5)^2 + (a-.5)^2) / 4 = 2.25 - 2a
    # agreement = (a + a) / 2 = a       ->  loss = 0.1 * 0.25 + 2.25 - 3a
    code_i = jnp.asarray([[0.5, 0.5], [0.5, -0.5]])
    code_t = jnp.asarray([[2.0, 0.0], [0.0, -3.0]])
    s = jnp.asarray([[1.0, 0.5], [0.5, 1.0]])
    a = 1 / math.sqrt(2)
    got = float(jdsh.loss(code_i, code_t, s, MIR))
    assert got == pytest.approx(0.025 + 2.25 - 3 * a, abs=1e-6)
    terms = objective.loss_terms(code_i, code_t, s)
    assert float(terms["intra"]) == pytest.approx(0.25, abs=1e-6)
    assert float(terms["inter"]) == pytest.approx(2.25 - 2 * a, abs=1e-6)
    assert float(terms["agreement"]) == pytest.approx(a, abs=1e-6)
    assert float(jdsh.loss(code_i, code_t, s, dict(MIR, intra_weight=1.0))) == pytest.approx(
        0.25 + 2.25 - 3 * a, abs=1e-6)


def test_loss_matches_numpy_on_random_codes():
    rng = np.random.default_rng(3)
    ci = np.tanh(rng.normal(size=(9, 16))).astype(np.float32)
    ct = np.tanh(rng.normal(size=(9, 16))).astype(np.float32)
    s = rng.uniform(-1, 1, (9, 9)).astype(np.float32)
    got = float(jdsh.loss(ci, ct, s, ml_collections.ConfigDict(MIR)))
    assert got == pytest.approx(_numpy_loss(ci.astype(np.float64), ct.astype(np.float64),
                                            s.astype(np.float64), 0.1), abs=1e-5)


# ----------------------------------------------------------------------- fitted constants


def test_half_sample_mode():
    assert objective.half_sample_mode([1.0, 2.0, 2.1, 2.2, 9.0]) == pytest.approx(2.1)
    assert objective.half_sample_mode([0.0, 1.0, 1.5]) == pytest.approx(1.25)
    rng = np.random.default_rng(4)
    sample = np.concatenate([rng.normal(0.3, 0.01, 5000), rng.uniform(-1, 1, 5000)])
    assert objective.half_sample_mode(sample) == pytest.approx(0.3, abs=0.005)


def _two_piece(rng, n, p_left, tail, loc=-0.49, b=0.019, sigma=0.088):
    """S~-like sample: a Laplace left flank (scale b) and a Gaussian right flank (sigma)
    meeting at the mode ``loc`` (the authors' MIRFlickr numbers), ``p_left`` of the peak's
    mass on the left, plus ``tail * n`` related pairs spread over [0.2, 0.9]."""
    left = loc - rng.exponential(b, int(n * p_left))
    right = loc + np.abs(rng.normal(0, sigma, n - left.size))
    related = rng.uniform(0.2, 0.9, int(n * tail))
    return np.concatenate([left, right, related])


@pytest.mark.parametrize("tail", [0.05, 0.4])
def test_fit_recovers_a_laplace_left_and_gaussian_right_flank(tail):
    # The model the fit assumes: each flank half of a symmetric law centred on the mode.
    # The related pairs' tail, light or heavy, must not drag the scales along.
    rng = np.random.default_rng(5)
    values = _two_piece(rng, 200_000, 0.5, tail)
    fitted = jdsh.fit_dsdw(values)
    assert fitted["left_loc"] == fitted["right_loc"] == pytest.approx(-0.49, abs=0.002)
    assert fitted["left_scale"] == pytest.approx(0.019, rel=0.05)
    assert fitted["right_scale"] == pytest.approx(0.088, rel=0.05)
    assert fitted["min_value"] == pytest.approx(values.min())
    assert fitted["max_value"] == pytest.approx(values.max())
    # As many values as the method's default fit (50 batches of 32: 49,600 pairs).
    small = jdsh.fit_dsdw(rng.choice(values, 49_600, replace=False))
    assert small["left_loc"] == pytest.approx(-0.49, abs=0.003)
    assert small["left_scale"] == pytest.approx(0.019, rel=0.1)
    assert small["right_scale"] == pytest.approx(0.088, rel=0.1)
    # The median of each flank, what a whole-flank fit reads, is off with a heavy tail.
    if tail == 0.4:
        above = values[values > -0.49] + 0.49
        assert np.median(above) / objective.HALF_NORMAL_MEDIAN > 2 * 0.088


def test_fit_of_a_peak_continuous_at_the_mode():
    # The flat Gaussian top holds as much density at the mode as the steep Laplace side:
    # the mode comes back within one left scale, the scales within 20%.
    rng = np.random.default_rng(6)
    p_cont = 0.019 / (0.019 + 0.088 * math.sqrt(math.pi / 2))
    fitted = jdsh.fit_dsdw(_two_piece(rng, 200_000, p_cont, 0.05))
    assert fitted["left_loc"] == pytest.approx(-0.49, abs=0.019)
    assert fitted["left_scale"] == pytest.approx(0.019, rel=0.2)
    assert fitted["right_scale"] == pytest.approx(0.088, rel=0.2)


def test_flank_scale_on_exact_flanks_and_its_fallback():
    rng = np.random.default_rng(7)
    assert objective.flank_scale(rng.exponential(0.3, 100_000), "laplace") == pytest.approx(
        0.3, rel=0.03)
    assert objective.flank_scale(np.abs(rng.normal(0, 0.2, 100_000)), "gauss") == pytest.approx(
        0.2, rel=0.03)
    # no point between t and 2t (ratio 1): the median-based estimate comes back
    lumps = np.array([1.0] * 50 + [10.0] * 50)
    assert objective.flank_scale(lumps, "gauss") == pytest.approx(
        np.median(lumps) / objective.HALF_NORMAL_MEDIAN)
    with pytest.raises(ValueError, match="kind="):
        objective.flank_scale(lumps, "cauchy")


def test_with_fitted_replaces_only_the_fitted_constants():
    fitted = {"left_loc": -0.3, "left_scale": 0.02, "right_loc": -0.3, "right_scale": 0.1,
              "min_value": -0.9, "max_value": 0.9}
    merged = objective.with_fitted(ml_collections.ConfigDict(dict(MIR, dsdw="fitted")), fitted)
    assert {k: merged[k] for k in fitted} == fitted
    assert merged["left_gain"] == 0.1 and merged["left_width"] == 2.0
    assert merged["dsdw"] == "fitted"
    assert objective.with_fitted(MIR, None)["left_loc"] == -0.49


def test_off_diagonal_and_fit_errors():
    m = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    got = objective.off_diagonal(m)
    assert got.size == 12 and 0 not in got and 4 not in got and 17 not in got.tolist()[:6]
    with pytest.raises(ValueError, match="at least 16"):
        jdsh.fit_dsdw(np.zeros(3))


def test_from_authors_maps_the_json_names():
    author = {"alpha": 0.4, "beta": 0.3, "lamb": 0.3, "mu": 1.4, "INTRA": 0.1,
              "LOC_LEFT": -0.62, "SCALE_LEFT": 0.0128, "ALPHA": 2, "LOC_RIGHT": -0.62,
              "SCALE_RIGHT": 0.086, "BETA": 4, "MIN": -0.64, "MAX": 0.75, "L1": 0.2, "L2": 0.2}
    got = objective.from_authors(author)
    assert got["image_weight"] == 0.4 and got["left_width"] == 2.0 and got["min_value"] == -0.64
