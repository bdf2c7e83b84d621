"""FJSPH train-step time against the number of training rows N (issue 11).

    python benchmarks/step_vs_n.py                     # N = 20,000 and 200,000, both paths
    python benchmarks/step_vs_n.py --num_train=20000,200000 --batch=128 --steps=20

The step in ``frozen_encoder`` mode on random feature vectors (so that no tower hides
the bank term), configs/default.py otherwise (64 bits, feature_dim 256, interaction block,
mse form, floor 0, eta 0.3, cluster_ks (24, 48, 96)), random multi-hot labels over 24
classes. For each N it times, after compilation, the jitted, donated step with an
active bank on the same batch:

* ``dense``: the bank and in-batch similarity terms from ``S(idx, :)`` [B, N] and the
  whole bank (``StepSettings.dense_bank_terms``, the step before issue 11; the
  contrastive loss as the plain [B, B] formula): O(B N) per step;
* ``lowrank``: the bank term from the cached statistics in ``TrainState.bank_stats``
  and the contrastive loss under ``shard_map`` (the step now): independent of N.

Prints one JSON line per (N, path): median and min step milliseconds over ``--steps``
steps, and the bank_similarity value (equal for both paths, to float32 rounding).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "configs"))

from absl import app, flags  # noqa: E402

_NUM_TRAIN = flags.DEFINE_list("num_train", ["20000", "200000"], "training rows N")
_BATCH = flags.DEFINE_integer("batch", 128, "global batch size (same for every N)")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per (N, path)")
_PATHS = flags.DEFINE_list("paths", ["dense", "lowrank"], "dense | lowrank")
_FEATURE_DIM = flags.DEFINE_integer("input_dim", 512, "dimension of the random features")
_CLASSES = flags.DEFINE_integer("classes", 24, "label classes")
_KMEANS_ITERS = flags.DEFINE_integer("kmeans_iters", 10, "k-means iterations (set-up only)")


def _config(num_train: int, batch: int):
    import default

    config = default.get_config()
    config.train.mode = "frozen_encoder"
    config.data.features = "handcrafted"  # feature vectors, no towers
    config.data.num_train = num_train
    config.train.global_batch_size = batch
    config.loss.kmeans_iters = _KMEANS_ITERS.value
    return config


def measure(num_train: int, path: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fjsph_jax import parallel
    from fjsph_jax import similarity as similarity_lib
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.methods.fjsph import method as fjsph_method
    from fjsph_jax.methods.fjsph.step import StepSettings, make_train_step

    batch_size, dim = _BATCH.value, _FEATURE_DIM.value
    config = _config(num_train, batch_size)
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    labels = (rng.random((num_train, _CLASSES.value)) < 0.15).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    sim = similarity_lib.build_joint_similarity(
        labels, cluster_ks=tuple(config.loss.cluster_ks), eta=config.loss.eta,
        key=jax.random.PRNGKey(7), kmeans_iters=config.loss.kmeans_iters)
    sim = fjsph_method.pad_similarity_for(sim, mesh)
    model = build.build_model(config, 10, with_encoders=False, seed=0, input_dims=(dim, dim))
    graphdef, params = nnx.split(model)
    optimizer = build.build_optimizer(config, params, 1000)
    state = fjsph_method.init_train_state(config, model, optimizer, num_train, mesh, sim)
    settings = StepSettings.from_config(config, mesh=None if path == "dense" else mesh)
    if path == "dense":
        import dataclasses

        settings = dataclasses.replace(settings, dense_bank_terms=True)
    step_fn = make_train_step(graphdef, optimizer, settings,
                              fjsph_method.state_shardings(state, mesh),
                              parallel.replicated(mesh))
    index = rng.choice(num_train, batch_size, replace=False).astype(np.int32)
    batch = parallel.global_batch({
        "image_features": rng.standard_normal((batch_size, dim)).astype(np.float32),
        "text_features": rng.standard_normal((batch_size, dim)).astype(np.float32),
        "index": index,
    }, mesh)
    active = jnp.float32(1.0)
    start = time.perf_counter()
    state, metrics = step_fn(state, batch, sim, active)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch, sim, active)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {
        "num_train": num_train, "path": path, "batch": batch_size,
        "bits": config.bits, "devices": len(jax.devices()),
        "step_ms_median": round(1e3 * statistics.median(times), 2),
        "step_ms_min": round(1e3 * min(times), 2),
        "first_call_s": round(compile_s, 2),
        "bank_similarity": float(metrics["bank_similarity"]),
    }


def main(argv):
    del argv
    for num_train in (int(n) for n in _NUM_TRAIN.value):
        for path in _PATHS.value:
            if path not in ("dense", "lowrank"):
                raise app.UsageError(f"--paths: dense | lowrank, got {path!r}")
            print(json.dumps(measure(num_train, path)), flush=True)


if __name__ == "__main__":
    app.run(main)
