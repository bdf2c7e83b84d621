"""Image preprocessing that runs on device inside the jitted step.

Images travel host -> device as uint8 ``[B, H, W, 3]`` (4x less than float32) and are
normalised there: ``x = (pixels / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images_bhwc, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
    """uint8 ``[B, H, W, 3]`` -> ``dtype`` ``[B, H, W, 3]``, ``(x / 255 - mean) / std``."""
    x = images_bhwc.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
