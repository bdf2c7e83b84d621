"""Grain pipeline examples/s next to train-step examples/s for the same config, in one run.

    python benchmarks/pipeline_vs_step.py --config=configs/mirflickr.py \
      --config.data.manual_dir=../shared/data/mirflickr25k-mini --config.data.split_protocol=small \
      --config.model.vision=vit_tiny --config.model.text=text_tiny --config.data.image_size=32 \
      --config.data.context_length=24 --config.model.feature_dim=64 \
      --config.model.hash_hidden_dim=256 --config.model.dtype=float32 \
      --config.loss.cluster_ks='(8,16)' --config.train.global_batch_size=32

Prints one JSON line: the pipeline alone (the streamed loader training uses,
``config.data.loader=stream``), the jitted step alone on one batch, the two together (the
real loop), in examples/s, and the ratio pipeline / step.
"""

import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(REPO_ROOT, "configs", "mirflickr.py"), lock_config=False
)
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_THREADS = flags.DEFINE_integer("read_threads", 2, "")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "")


def main(argv):
    import tempfile

    from fjsph_jax import parallel
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax import similarity as similarity_lib
    from fjsph_jax.data import pipeline
    from fjsph_jax.inputs import prepare_training_data
    from fjsph_jax.methods.fjsph.step import StepSettings, make_train_step
    from fjsph_jax.methods.fjsph.method import (
        init_train_state,
        similarity_shardings as _similarity_shardings,
        state_shardings as _state_shardings,
    )

    config = _CONFIG.value
    config.data.loader = "stream"  # what launch/train.py reads real datasets with
    mesh = parallel.make_mesh()
    data = prepare_training_data(config, tempfile.mkdtemp(prefix="pipeline_vs_step-"), mesh)
    B = config.train.global_batch_size
    ds = pipeline.train_batches(
        data.load_rows, data.splits.train, global_batch_size=B, seed=config.seed,
        num_steps=10**6,
    )
    it = pipeline.MeshBatchIterator(ds, mesh, read_threads=_THREADS.value, prefetch=2)
    pipe = pipeline.measure_examples_per_second(it, _STEPS.value, B)
    result = {
        "devices": len(jax.devices()),
        "image_size": config.data.image_size,
        "batch": B,
        "vision": config.model.vision,
        "read_threads": _THREADS.value,
        "pipeline_examples_per_s": round(pipe, 1),
    }
    print(json.dumps(result), flush=True)
    if _SKIP_TRAIN.value:
        return
    model = build.build_model(config, data.vocab_size, with_encoders=True, seed=config.seed)
    graphdef, params = nnx.split(model)
    optimizer = build.build_optimizer(config, params, 1000)
    settings = StepSettings.from_config(config)
    sim = similarity_lib.build_joint_similarity(
        data.labels[data.splits.train],
        cluster_ks=tuple(config.loss.cluster_ks),
        cluster_weights=None,
        eta=config.loss.eta,
        key=jax.random.PRNGKey(7),
        kmeans_iters=config.loss.kmeans_iters,
    )
    sim = jax.device_put(sim, _similarity_shardings(sim, mesh))
    num_train = len(data.splits.train)
    state = init_train_state(config, model, optimizer, num_train, mesh)
    shardings = _state_shardings(state, mesh, num_train)
    step_fn = make_train_step(graphdef, optimizer, settings, shardings, parallel.replicated(mesh))
    batch = next(it)
    state, m = step_fn(state, batch, sim, jnp.float32(0))
    jax.block_until_ready(m)  # compile
    t = time.perf_counter()
    for _ in range(_STEPS.value):
        state, m = step_fn(state, batch, sim, jnp.float32(0))
    jax.block_until_ready(m)
    step_rate = _STEPS.value * B / (time.perf_counter() - t)
    # Both at once: the real loop, pipeline feeding the step.
    t = time.perf_counter()
    for _ in range(_STEPS.value):
        state, m = step_fn(state, next(it), sim, jnp.float32(0))
    jax.block_until_ready(m)
    loop_rate = _STEPS.value * B / (time.perf_counter() - t)
    result.update(
        train_step_examples_per_s=round(step_rate, 1),
        loop_with_pipeline_examples_per_s=round(loop_rate, 1),
        pipeline_over_step=round(pipe / step_rate, 2),
    )
    print(json.dumps(result), flush=True)
    it.close()


if __name__ == "__main__":
    app.run(main)
