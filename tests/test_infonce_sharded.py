"""The global-batch InfoNCE under shard_map (each device its rows of the [B, B] logits)
equals objectives.symmetric_infonce: values and gradients, on 1 and 8 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fjsph_jax.methods.fjsph import objectives

BATCH, DIM = 16, 6


def embeddings(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    text = (0.6 * image + rng.standard_normal((BATCH, DIM))).astype(np.float32)
    return jnp.asarray(image), jnp.asarray(text)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 10.0])  # 10: above the clamp
def test_sharded_infonce_equals_dense(devices, log_scale):
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    image, text = embeddings()
    rows = NamedSharding(mesh, P("data"))
    image_s, text_s = jax.device_put(image, rows), jax.device_put(text, rows)
    scale = jnp.float32(log_scale)

    def sharded(image, text, scale):
        return objectives.symmetric_infonce_sharded(image, text, scale, mesh=mesh)

    grad_args = (0, 1, 2)
    want, want_grads = jax.jit(jax.value_and_grad(objectives.symmetric_infonce,
                                                  argnums=grad_args))(image, text, scale)
    got, got_grads = jax.jit(jax.value_and_grad(sharded, argnums=grad_args))(
        image_s, text_s, scale)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for got_grad, want_grad in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=2e-5,
                                   atol=1e-7)
    if log_scale > math.log(100.0):
        assert float(got_grads[2]) == 0.0  # clamped: no gradient to the temperature
    else:
        assert abs(float(got_grads[2])) > 1e-6


def test_sharded_infonce_keeps_logits_local():
    """No device materialises the [B, B] logits: the compiled program's largest f32
    array has B/d rows of B columns (all-gathered embeddings aside, [B, D])."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    image, text = embeddings(1)
    rows = NamedSharding(mesh, P("data"))
    compiled = jax.jit(lambda i, t: objectives.symmetric_infonce_sharded(
        i, t, 2.0, mesh=mesh)).lower(jax.device_put(image, rows),
                                     jax.device_put(text, rows)).compile()
    hlo = compiled.as_text()
    assert f"f32[{BATCH // 8},{BATCH}]" in hlo
    assert f"f32[{BATCH},{BATCH}]" not in hlo


def test_sharded_infonce_rejects_a_batch_that_does_not_split():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    image, text = embeddings()
    with pytest.raises(ValueError, match="does not split over the 8 devices"):
        objectives.symmetric_infonce_sharded(image[:12], text[:12], 1.0, mesh=mesh)
