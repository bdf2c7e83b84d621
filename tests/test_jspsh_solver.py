"""Tests for fjsph_jax.methods.jspsh.solver: the pieces against dense / numpy formulas,
and a small end-to-end fit whose retrieval MAP beats chance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fjsph_jax.methods.jspsh import solver
from fjsph_jax.similarity import ClusterSizes

N, C, KDIM, BITS = 96, 6, 24, 3
KS = (4, 7)


def random_problem(seed, n=N, kdim=KDIM, bits=BITS):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, C)) < 0.35).astype(np.float64)
    labels[np.arange(n), rng.integers(0, C, n)] = 1
    nl = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    ids = np.stack([rng.integers(0, k, n) for k in KS]).astype(np.int32)
    codes = np.zeros((n, kdim))
    for i in range(n):
        codes[i, rng.choice(kdim, bits, replace=False)] = 1
    return labels, nl, ids, codes


def dense_similarity(nl, ids, alpha):
    """S = NL NL^T + alpha sum_j w_j C_j C_j^T, dense (tests only)."""
    total = sum(KS)
    clustered = sum((k / total) * (i[:, None] == i[None, :]) for k, i in zip(KS, ids))
    return nl @ nl.T + alpha * clustered


def polar_np(z):
    u, _, vt = np.linalg.svd(z, full_matrices=False)
    return u @ vt


def test_normalize_rows_matches_normalizefea_and_follows_dtype():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-9, 0.0]])
    out = np.asarray(solver.normalize_rows(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[2], [1e-9 / 1e-7, 0.0], rtol=1e-5)  # floor 1e-14 on |x|^2
    with jax.enable_x64(True):
        assert solver.normalize_rows(x).dtype == jnp.float64
        assert solver.top_r_codes(jnp.asarray(x), 1).dtype == jnp.float64


def test_top_r_codes_exact_count_and_stable_tie_order():
    scores = jnp.array([[1.0, 3.0, 3.0, 1.0, 3.0, 0.0],
                        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
                        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    codes = np.asarray(solver.top_r_codes(scores, 2))
    # Ties go to the lower column (first r of a stable descending sort).
    np.testing.assert_array_equal(codes, [[0, 1, 1, 0, 0, 0],
                                          [1, 1, 0, 0, 0, 0],
                                          [0, 0, 0, 0, 1, 1]])
    rng = np.random.default_rng(0)
    many = rng.integers(0, 3, size=(50, 40)).astype(np.float32)  # heavy ties
    for r in (1, 5, 40):
        got = np.asarray(solver.top_r_codes(many, r))
        assert set(np.unique(got)) <= {0.0, 1.0} and np.all(got.sum(1) == r)
        order = np.argsort(-many, axis=1, kind="stable")[:, :r]
        expected = np.zeros_like(many)
        np.put_along_axis(expected, order, 1.0, axis=1)
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="r must be in"):
        solver.top_r_codes(many, 41)


def test_similarity_product_equals_dense_formula():
    _, nl, ids, codes = random_problem(1)
    x = np.random.default_rng(2).normal(size=(N, KDIM))
    with jax.enable_x64(True):
        got = jax.jit(solver.similarity_product, static_argnums=3)(
            jnp.asarray(x), jnp.asarray(nl), jnp.asarray(ids), KS, 0.7)
        np.testing.assert_allclose(np.asarray(got), dense_similarity(nl, ids, 0.7) @ x,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("polar", ["gram", "qr"])
def test_h_step_full_rank_is_scaled_polar_factor(polar):
    _, nl, ids, codes = random_problem(3)
    assert np.linalg.matrix_rank(codes) == KDIM
    params = solver.JSPSHParams(polar=polar)
    noise = np.random.default_rng(4).normal(size=codes.shape)
    with jax.enable_x64(True):
        h, rank = solver.h_step(jnp.asarray(codes), jnp.asarray(nl), jnp.asarray(ids),
                                jnp.asarray(noise), bits=BITS, cluster_ks=KS, params=params)
    h = np.asarray(h)
    scale = N * BITS / KDIM
    assert int(rank) == KDIM
    np.testing.assert_allclose(h.T @ h, scale * np.eye(KDIM), atol=1e-9 * scale)
    z = params.omega * codes + BITS * dense_similarity(nl, ids, params.alpha) @ codes
    lam, v = np.linalg.eigh(z.T @ z)
    np.testing.assert_allclose(h, np.sqrt(scale) * z @ (v / np.sqrt(lam)) @ v.T, atol=1e-8)
    np.testing.assert_allclose(h, np.sqrt(scale) * polar_np(z), atol=1e-8)


@pytest.mark.parametrize("polar", ["gram", "qr"])
def test_h_step_rank_deficient_pads_the_null_space(polar):
    _, nl, ids, codes = random_problem(5)
    codes[:, 0] = 0.0                 # an empty column
    codes[:, 2] = codes[:, 1]         # a repeated column
    null = np.zeros((KDIM, 2))
    null[0, 0] = 1.0
    null[1, 1], null[2, 1] = 1 / np.sqrt(2), -1 / np.sqrt(2)
    keep = np.linalg.svd(np.eye(KDIM) - null @ null.T)[0][:, :KDIM - 2]   # row space of B
    params = solver.JSPSHParams(polar=polar)
    noise = np.random.default_rng(6).normal(size=codes.shape)
    with jax.enable_x64(True):
        h, rank = solver.h_step(jnp.asarray(codes), jnp.asarray(nl), jnp.asarray(ids),
                                jnp.asarray(noise), bits=BITS, cluster_ks=KS, params=params)
    h = np.asarray(h) / np.sqrt(N * BITS / KDIM)
    assert int(rank) == KDIM - 2
    z = params.omega * codes + BITS * dense_similarity(nl, ids, params.alpha) @ codes
    # Kept part: the polar factor of Z on the row space of B; dropped part: polar(G V_) V_^T,
    # the same for any basis of the null space (rotate it to check).
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    null_rotated = null @ rotation
    expected = (polar_np(z @ keep) @ keep.T
                + polar_np(noise @ null_rotated) @ null_rotated.T)
    np.testing.assert_allclose(h, expected, atol=1e-8)
    np.testing.assert_allclose((h @ null).T @ (h @ null), np.eye(2), atol=1e-10)


def test_b_step_and_learn_codes_rows_have_exactly_r_ones():
    _, nl, ids, _ = random_problem(7)
    params = solver.JSPSHParams(iterations=3)
    h0 = solver.initial_h(jax.random.key(0), num_items=N, kdim=KDIM, bits=BITS)
    scale = N * BITS / KDIM
    np.testing.assert_allclose(np.asarray(h0.T @ h0), scale * np.eye(KDIM), atol=1e-4 * scale)
    codes, h, ranks = solver.learn_codes(jnp.asarray(nl, jnp.float32), jnp.asarray(ids), h0,
                                         jax.random.key(1), bits=BITS, cluster_ks=KS,
                                         params=params)
    codes = np.asarray(codes)
    assert codes.shape == (N, KDIM) and codes.dtype == np.float32
    assert set(np.unique(codes)) == {0.0, 1.0} and np.all(codes.sum(1) == BITS)
    assert ranks.shape == (3,) and np.all((np.asarray(ranks) >= 1) & (np.asarray(ranks) <= KDIM))
    # The last B is the B step of the last H (theta omitted: a constant per row).
    again = solver.b_step(h, jnp.asarray(nl, jnp.float32), jnp.asarray(ids), bits=BITS,
                          cluster_ks=KS, params=params)
    np.testing.assert_array_equal(np.asarray(again), codes)
    scores = (params.omega * np.asarray(h, np.float64)
              + BITS * dense_similarity(nl, ids, params.alpha) @ np.asarray(h, np.float64))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :BITS]
    assert np.all(np.take_along_axis(codes, top, axis=1) == 1)


def test_learn_hash_functions_solves_the_normal_equations():
    rng = np.random.default_rng(8)
    _, nl, _, codes = random_problem(9)
    x = rng.normal(size=(N, 10)); x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.normal(size=(N, 7)); y /= np.linalg.norm(y, axis=1, keepdims=True)
    sel = rng.permutation(N)[:30]
    yw0 = rng.random((7, KDIM))
    params = solver.JSPSHParams(iterations=2, mu=3.0, beta=0.01, lam=1e-3)
    with jax.enable_x64(True):
        wx, wy = solver.learn_hash_functions(jnp.asarray(x), jnp.asarray(y), jnp.asarray(nl),
                                             jnp.asarray(codes), jnp.asarray(sel),
                                             jnp.asarray(yw0), bits=BITS, params=params)
    bs = codes[sel]
    m = (1 + params.mu) * np.eye(KDIM) + params.beta * bs.T @ bs
    ref_y = yw0
    anchor_term = nl[sel].T @ bs * params.beta * BITS
    for _ in range(params.iterations):
        rhs = x.T @ codes + params.mu * x.T @ y @ ref_y + (x.T @ nl) @ anchor_term
        ref_x = np.linalg.solve(m.T, np.linalg.solve(x.T @ x + params.lam * np.eye(10), rhs).T).T
        rhs = y.T @ codes + params.mu * y.T @ x @ ref_x + (y.T @ nl) @ anchor_term
        ref_y = np.linalg.solve(m.T, np.linalg.solve(y.T @ y + params.lam * np.eye(7), rhs).T).T
    np.testing.assert_allclose(np.asarray(wx), ref_x, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(wy), ref_y, rtol=1e-8, atol=1e-10)


def numpy_map(query_codes, db_codes, query_labels, db_labels):
    """MAP@all: rank by inner product descending (stable: ties by database index),
    relevant = at least one shared label."""
    order = np.argsort(-(query_codes @ db_codes.T), axis=1, kind="stable")
    aps = []
    for i, ranking in enumerate(order):
        relevant = (db_labels[ranking] @ query_labels[i]) > 0
        if not relevant.any():
            aps.append(0.0)
            continue
        precision = np.cumsum(relevant) / np.arange(1, len(ranking) + 1)
        aps.append(float(np.sum(precision * relevant) / relevant.sum()))
    return float(np.mean(aps))


def clustered_data(seed, n_train=600, n_query=100, classes=8, d_image=32, d_text=24):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, classes, n_train + n_query)
    labels = np.eye(classes)[cls]
    image = rng.normal(size=(classes, d_image))[cls] + 0.8 * rng.normal(size=(len(cls), d_image))
    text = rng.normal(size=(classes, d_text))[cls] + 0.8 * rng.normal(size=(len(cls), d_text))
    split = lambda a: (a[:n_train], a[n_train:])  # noqa: E731
    return split(image), split(text), split(labels)


def test_fit_and_encode_retrieve_far_above_chance():
    (x_tr, x_te), (y_tr, y_te), (l_tr, l_te) = clustered_data(0)
    bits = 8
    params = solver.JSPSHParams(anchors=200, cluster_ks=(4, 8, 16), iterations=3)
    with pytest.warns(UserWarning, match=r"capped to \(4, 8, 8\)"):
        state = solver.fit(x_tr.astype(np.float32), y_tr.astype(np.float32), l_tr, bits=bits,
                           params=params, key=jax.random.key(0))
    kdim = solver.code_dim(bits, params.sparsity)
    b = np.asarray(state.B)
    assert b.shape == (600, kdim) and np.all(b.sum(1) == bits)
    assert state.image_W.shape == (32, kdim) and state.text_W.shape == (24, kdim)
    assert state.h_ranks.shape == (3,)
    qi = np.asarray(solver.encode(x_te.astype(np.float32), state.image_W, bits))
    qt = np.asarray(solver.encode(y_te.astype(np.float32), state.text_W, bits))
    assert np.all(qi.sum(1) == bits) and np.all(qt.sum(1) == bits)
    rng = np.random.default_rng(1)
    random_db = np.asarray(solver.top_r_codes(rng.random((600, kdim)), bits))
    random_q = np.asarray(solver.top_r_codes(rng.random((100, kdim)), bits))
    chance = numpy_map(random_q, random_db, l_te, l_tr)
    i2t, t2i = numpy_map(qi, b, l_te, l_tr), numpy_map(qt, b, l_te, l_tr)
    assert chance < 0.25
    assert i2t > 0.8 and t2i > 0.8, (i2t, t2i, chance)


def test_fit_with_explicit_init_is_deterministic_and_uses_it():
    (x_tr, _), (y_tr, _), (l_tr, _) = clustered_data(1, n_train=300)
    bits, params = 4, solver.JSPSHParams(anchors=50, iterations=2, cluster_ks=(3, 5))
    kdim = solver.code_dim(bits, params.sparsity)
    rng = np.random.default_rng(2)
    init = solver.JSPSHInit(
        H0=np.asarray(solver.initial_h(jax.random.key(3), num_items=300, kdim=kdim, bits=bits)),
        anchor_ids=rng.permutation(300)[:50], text_W0=rng.random((24, kdim)),
        clusters=solver.LabelClusters(np.stack([l_tr.argmax(1) % 3, l_tr.argmax(1) % 5]),
                                      ClusterSizes((3, 5))),
        pad_noise=rng.normal(size=(2, 300, kdim)))
    first = solver.fit(x_tr, y_tr, l_tr, bits=bits, params=params, key=jax.random.key(0), init=init)
    other_key = solver.fit(x_tr, y_tr, l_tr, bits=bits, params=params, key=jax.random.key(9),
                           init=init)
    for a, b in zip(first, other_key):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kdim_not_below_n_and_bad_shapes_raise():
    (x_tr, _), (y_tr, _), (l_tr, _) = clustered_data(0, n_train=100)
    with pytest.raises(ValueError, match=r"kdim = bits / sparsity = 8 / 0.05 = 160 must be < "
                                         r"the number of training rows n = 100"):
        solver.fit(x_tr, y_tr, l_tr, bits=8, params=solver.JSPSHParams(anchors=50),
                   key=jax.random.key(0))
    with pytest.raises(ValueError, match="anchors = 1000"):
        solver.fit(x_tr, y_tr, l_tr, bits=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="not an integer"):
        solver.code_dim(3, 0.07)
    with pytest.raises(ValueError, match="init.H0"):
        solver.fit(x_tr, y_tr, l_tr, bits=2, params=solver.JSPSHParams(anchors=50),
                   key=jax.random.key(0), init=solver.JSPSHInit(H0=np.zeros((100, 3))))


def test_cap_cluster_ks_and_cluster_labels():
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 1]])
    assert solver.cap_cluster_ks(labels, (2, 3)) == ((2, 3), None)
    ks, note = solver.cap_cluster_ks(labels, (2, 5, 9))
    assert ks == (2, 3, 3) and "3 distinct rows" in note
    with pytest.warns(UserWarning, match="capped"):
        clusters = solver.cluster_labels(labels, (2, 5), jax.random.key(0))
    assert tuple(clusters.ks) == (2, 3) and clusters.ids.shape == (2, 5)
    ids = np.asarray(clusters.ids[1])
    assert ids[0] == ids[1] and ids[2] == ids[4] and len({ids[0], ids[2], ids[3]}) == 3
    assert clusters.weights == (0.4, 0.6)
    with pytest.raises(ValueError, match="all zero"):
        solver.cluster_labels(np.array([[1, 0], [0, 0]]), (1,), jax.random.key(0))


# ------------------------------------------------------------ rank_rule="authors"


def authors_h_np(z, noise):
    """train_JSPSH.m lines 34-39 in numpy (float64), with the padding written as
    polar(G V_drop) V_drop^T (their orth(randn) * orth(VV(:, ~index))' in distribution)."""
    _, lmd, vt = np.linalg.svd(z.T @ z)
    vv = vt.T
    index = lmd > 1e-6
    v, v_ = vv[:, index], vv[:, ~index]
    out = z @ (v / np.sqrt(lmd[index])) @ v.T
    if v_.shape[1]:
        out = out + polar_np(noise @ v_) @ v_.T
    return out, int(index.sum())


def h_step_np(codes, nl, ids, noise, params):
    with jax.enable_x64(True):
        h, rank = solver.h_step(jnp.asarray(codes), jnp.asarray(nl), jnp.asarray(ids),
                                jnp.asarray(noise), bits=BITS, cluster_ks=KS, params=params)
    return np.asarray(h) / np.sqrt(N * BITS / KDIM), int(rank)


def test_rank_rule_authors_full_rank_agrees_with_row_space():
    _, nl, ids, codes = random_problem(3)
    noise = np.random.default_rng(4).normal(size=codes.shape)
    ours, rank = h_step_np(codes, nl, ids, noise, solver.JSPSHParams())
    theirs, rank_a = h_step_np(codes, nl, ids, noise, solver.JSPSHParams(rank_rule="authors"))
    assert rank == rank_a == KDIM
    np.testing.assert_allclose(theirs, ours, atol=1e-8)


def test_rank_rule_authors_is_their_formula_and_agrees_when_null_is_below_1e6():
    # Small scale: Z^T Z has lam_max ~1e5, its round-off ~1e-11 < 1e-6, so their rule
    # drops exactly the null directions of B and the two rules give the same H.
    _, nl, ids, codes = random_problem(5)
    codes[:, 0] = 0.0
    codes[:, 2] = codes[:, 1]
    params = solver.JSPSHParams(rank_rule="authors")
    noise = np.random.default_rng(6).normal(size=codes.shape)
    theirs, rank_a = h_step_np(codes, nl, ids, noise, params)
    z = params.omega * codes + BITS * dense_similarity(nl, ids, params.alpha) @ codes
    expected, expected_rank = authors_h_np(z, noise)
    assert rank_a == expected_rank == KDIM - 2
    np.testing.assert_allclose(theirs, expected, atol=1e-8)
    ours, rank = h_step_np(codes, nl, ids, noise, solver.JSPSHParams())
    assert rank == KDIM - 2
    np.testing.assert_allclose(theirs, ours, atol=1e-8)


def test_rank_rule_authors_keeps_round_off_directions_unnormalised():
    # Large scale (omega = 1e6: lam_max of Z^T Z ~1e14, like their 64-bit runs): round-off
    # eigenvalues of exact null directions exceed the absolute 1e-6, so their rule keeps
    # them (no padding there) as columns of norm << 1, where the row-space rule pads every
    # null direction with a unit-norm random direction.
    _, nl, ids, codes = random_problem(5)
    codes[:, 0] = 0.0
    codes[:, 2] = codes[:, 1]
    null = np.zeros((KDIM, 2))
    null[0, 0] = 1.0
    null[1, 1], null[2, 1] = 1 / np.sqrt(2), -1 / np.sqrt(2)
    noise = np.random.default_rng(6).normal(size=codes.shape)
    theirs, rank_a = h_step_np(codes, nl, ids, noise,
                               solver.JSPSHParams(omega=1e6, rank_rule="authors"))
    ours, rank = h_step_np(codes, nl, ids, noise, solver.JSPSHParams(omega=1e6))
    assert rank == KDIM - 2 and rank_a > rank
    np.testing.assert_allclose(np.linalg.svd(ours @ null, compute_uv=False), 1.0, atol=1e-10)
    # Of H's two null-space directions, those kept by their rule (rank_a - rank of them:
    # which ones pass 1e-6 is round-off) are ~0 instead of unit; the rest are padded.
    sv = np.linalg.svd(theirs @ null, compute_uv=False)
    assert np.sum(sv < 1e-3) == rank_a - rank and np.all((sv < 1e-3) | (np.abs(sv - 1) < 1e-6))
    # On the row space of B both are the polar factor of Z.
    keep = np.linalg.svd(np.eye(KDIM) - null @ null.T)[0][:, :KDIM - 2]
    np.testing.assert_allclose(theirs @ keep, ours @ keep, atol=1e-6)


def test_rank_rule_authors_runs_in_float64_for_float32_inputs_and_is_checked():
    _, nl, ids, codes = random_problem(5)
    codes[:, 0] = 0.0
    noise = np.random.default_rng(6).normal(size=codes.shape)
    params = solver.JSPSHParams(rank_rule="authors")
    with jax.enable_x64(True):
        h32, rank32 = solver.h_step(jnp.asarray(codes, jnp.float32),
                                    jnp.asarray(nl, jnp.float32), jnp.asarray(ids),
                                    jnp.asarray(noise, jnp.float32), bits=BITS,
                                    cluster_ks=KS, params=params)
    assert h32.dtype == jnp.float32
    h64, rank64 = h_step_np(codes.astype(np.float32).astype(np.float64),
                            nl.astype(np.float32).astype(np.float64), ids,
                            noise.astype(np.float32).astype(np.float64), params)
    assert int(rank32) == rank64 == KDIM - 1
    np.testing.assert_allclose(np.asarray(h32) / np.sqrt(N * BITS / KDIM), h64, atol=1e-6)
    (x_tr, _), (y_tr, _), (l_tr, _) = clustered_data(0, n_train=100)
    with pytest.raises(ValueError, match="rank_rule must be one of"):
        solver.fit(x_tr, y_tr, l_tr, bits=2, key=jax.random.key(0),
                   params=solver.JSPSHParams(anchors=50, rank_rule="exact"))
