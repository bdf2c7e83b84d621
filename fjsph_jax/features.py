"""Frozen-encoder mode: tower features computed once per dataset and cached.

FLIP serves as a fixed feature extractor: every item's image and text feature
(``[N, D]`` float32 each, the towers' projected outputs without masking) is computed
once, saved to ``<workdir>/features-<fingerprint>.npz`` and reused by later runs
and by evaluation. Only the interaction block and the hash heads then train, which
is fast even on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from fjsph_jax import parallel
from fjsph_jax.data.preprocess import normalize_images


def features_fingerprint(config, num_items: int) -> str:
    """Hash of what determines the features: towers, data, seed, initial checkpoint."""
    keys = {
        "model": {k: config.model[k] for k in ("vision", "text", "feature_dim", "dtype")},
        "data": {
            k: v for k, v in config.data.to_dict().items() if k not in ("loader", "read_threads")
        },
        "seed": config.seed,
        "checkpoint": config.init.checkpoint,
        "num_items": num_items,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_features(
    encoder_model, source, *, num_items: int | None = None, image_mean, image_std,
    batch_size: int, mesh
) -> dict[str, np.ndarray]:
    """``{'image_features': [N, D], 'text_features': [N, D]}`` of rows ``0..N-1`` of ``source``.

    ``source`` is a mapping of arrays or a row loader (:mod:`fjsph_jax.data.loaders`) giving
    ``images`` uint8 [B, H, W, 3], ``input_ids`` and ``attention_mask`` [B, L]; ``num_items``
    (N) is required for a loader. Batches are padded to one size and split over the mesh.
    """
    if isinstance(source, Mapping):
        source = {k: source[k] for k in ("images", "input_ids", "attention_mask")}
        num_items = len(source["images"]) if num_items is None else num_items
    if num_items is None:
        raise ValueError("compute_features needs num_items when the source is a row loader")
    graphdef, params = nnx.split(encoder_model)
    params = parallel.put_replicated(params, mesh)

    @jax.jit
    def encode(params, batch):
        model = nnx.merge(graphdef, params)
        pixels = normalize_images(batch["images"], image_mean, image_std)
        return (
            model.image_features(pixels),
            model.text_features(batch["input_ids"], batch["attention_mask"]),
        )

    images, texts = parallel.map_batches(
        lambda batch: encode(params, batch),
        source,
        np.arange(num_items),
        batch_size=batch_size,
        mesh=mesh,
    )
    return {
        "image_features": images.astype(np.float32),
        "text_features": texts.astype(np.float32),
    }


def cached_features(path: str, compute) -> dict[str, np.ndarray]:
    """Loads ``path`` if present (and readable), else calls ``compute()`` and saves it."""
    if os.path.exists(path):
        try:
            with np.load(path) as data:
                logging.info("using cached tower features %s", path)
                return {k: data[k] for k in ("image_features", "text_features")}
        except (OSError, ValueError, KeyError) as e:
            logging.warning("feature cache %s is unreadable (%s): recomputing it", path, e)
    features = compute()
    if jax.process_index() == 0:
        tmp = path + ".tmp.npz"
        np.savez(tmp, **features)
        os.replace(tmp, path)
    return features
