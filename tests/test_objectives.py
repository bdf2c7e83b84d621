"""Tests for fjsph_jax.methods.fjsph.objectives: every loss against a plain numpy computation."""
import math

import jax
import numpy as np
import pytest

from fjsph_jax.methods.fjsph import objectives

RNG = np.random.default_rng(0)
A, B, K, D = 5, 4, 8, 6
H_A = np.tanh(RNG.standard_normal((A, K))).astype(np.float32)
H_B = np.tanh(RNG.standard_normal((B, K))).astype(np.float32)
S_AB = RNG.random((A, B)).astype(np.float32)


def numpy_logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))


def numpy_clip_loss(image, text, log_scale, max_log_scale=math.log(100.0)):
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = np.exp(min(log_scale, max_log_scale)) * image @ text.T
    rows = np.arange(len(image))
    image_to_text = np.mean(numpy_logsumexp(logits, 1) - logits[rows, rows])
    text_to_image = np.mean(numpy_logsumexp(logits, 0) - logits[rows, rows])
    return (image_to_text + text_to_image) / 2


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 10.0])
def test_symmetric_infonce_equals_numpy_clip_loss(log_scale):
    image = RNG.standard_normal((B, D))
    text = 0.5 * image + RNG.standard_normal((B, D))
    got = jax.jit(objectives.symmetric_infonce)(image, text, log_scale)
    # log_scale = 10 exceeds the clamp: the loss uses log(100).
    np.testing.assert_allclose(float(got), numpy_clip_loss(image, text, log_scale),
                               rtol=1e-5)


def test_symmetric_infonce_asymmetric_case_and_shapes():
    # Two pairs, hand computed: I = [[1,0],[0,1]], T = [[1,0],[1,0]], scale 1.
    image = np.array([[2.0, 0.0], [0.0, 3.0]])
    text = np.array([[1.0, 0.0], [5.0, 0.0]])
    # logits = [[1, 1], [0, 0]]; rows: log(2e)-1, log 2; columns: log(1+e)-1, log(1+e)-0
    image_to_text = (math.log(2 * math.e) - 1 + math.log(2)) / 2
    text_to_image = (math.log(1 + math.e) - 1 + math.log(1 + math.e)) / 2
    got = jax.jit(objectives.symmetric_infonce)(image, text, 0.0)
    np.testing.assert_allclose(float(got), (image_to_text + text_to_image) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="same batch size"):
        objectives.symmetric_infonce(image, text[:1], 0.0)


def test_similarity_mse_equals_numpy():
    expected = np.mean((H_A @ H_B.T / K - (2 * S_AB - 1)) ** 2)
    np.testing.assert_allclose(float(objectives.similarity_mse(H_A, H_B, S_AB)), expected,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="s_ab must have shape"):
        objectives.similarity_mse(H_A, H_B, S_AB.T)
    orthogonal = np.mean((H_A @ H_B.T / K - S_AB) ** 2)  # floor 0: target S itself
    np.testing.assert_allclose(
        float(objectives.similarity_mse(H_A, H_B, S_AB, floor=0.0)), orthogonal, rtol=1e-6
    )


def test_similarity_likelihood_equals_numpy():
    theta = 3.0 * H_A @ H_B.T / K
    expected = np.mean(np.log1p(np.exp(theta)) - S_AB * theta)
    got = objectives.similarity_likelihood(H_A, H_B, S_AB, scale=3.0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_similarity_likelihood_stable_for_large_logits():
    h = np.array([[1.0] * K, [-1.0] * K], np.float32)
    s = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # theta = +-1e4: the perfectly fitted pairs cost ~0, the others ~1e4 each.
    loss, grad = jax.value_and_grad(objectives.similarity_likelihood)(h, h, s, scale=1e4)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(loss), 0.0, atol=1e-3)
    flipped = objectives.similarity_likelihood(h, h, 1.0 - s, scale=1e4)
    np.testing.assert_allclose(float(flipped), 1e4, rtol=1e-6)


def test_quantization_loss_equals_numpy():
    codes = np.where(H_A >= 0, 1, -1).astype(np.int8)
    expected = np.mean((H_A - codes) ** 2)
    np.testing.assert_allclose(float(objectives.quantization_loss(H_A, codes)), expected,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        objectives.quantization_loss(H_A, codes[:, :3])


def test_bit_balance_loss_equals_numpy():
    expected = np.mean(H_A.mean(axis=0) ** 2)
    np.testing.assert_allclose(float(objectives.bit_balance_loss(H_A)), expected, rtol=1e-6)
    balanced = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert float(objectives.bit_balance_loss(balanced)) == 0.0


def test_bank_similarity_dense_forms_and_padding_columns():
    """The dense bank term is similarity_mse / similarity_likelihood; columns marked
    invalid (padding rows of a bank) take no part, whatever they hold."""
    codes = np.where(RNG.random((B, K)) < 0.5, 1, -1).astype(np.int8)
    for form, plain in (("mse", lambda: objectives.similarity_mse(H_A, codes, S_AB, floor=0.0)),
                        ("likelihood", lambda: objectives.similarity_likelihood(
                            H_A, codes, S_AB, scale=3.0))):
        got = objectives.bank_similarity_dense(H_A, codes, S_AB, form=form, floor=0.0,
                                               scale=3.0)
        np.testing.assert_allclose(float(got), float(plain()), rtol=1e-6)
        padded = objectives.bank_similarity_dense(
            H_A, np.concatenate([codes, -codes[:2]]), np.pad(S_AB, ((0, 0), (0, 2)), constant_values=0.7),
            form=form, floor=0.0, scale=3.0, valid_n=np.arange(B + 2) < B)
        np.testing.assert_allclose(float(padded), float(plain()), rtol=1e-6)
    with pytest.raises(ValueError, match="form must be"):
        objectives.bank_similarity_dense(H_A, codes, S_AB, form="hinge")


def test_bank_similarity_mse_is_the_expanded_square():
    """mean (h.b/K - T)^2 = [h^T (B^T B) h / K^2 - 2/K h.(T B) + sum T^2] / (A N)."""
    codes = np.where(RNG.random((B, K)) < 0.5, 1.0, -1.0)
    target = 2 * S_AB - 1
    got = objectives.bank_similarity_mse(H_A, target @ codes, np.sum(target**2, axis=1),
                                         codes.T @ codes, B)
    np.testing.assert_allclose(float(got), float(objectives.similarity_mse(H_A, codes, S_AB)),
                               rtol=1e-5)
