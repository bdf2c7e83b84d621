"""Grain pipeline examples/s next to train-step examples/s for the same config, in one run.

    python benchmarks/pipeline_vs_step.py --config=configs/mirflickr.py \
      --config.data.manual_dir=../shared/data/mirflickr25k-mini --config.data.split_protocol=small \
      --config.model.vision=vit_tiny --config.model.text=text_tiny --config.data.image_size=32 \
      --config.data.context_length=24 --config.model.feature_dim=64 \
      --config.model.hash_hidden_dim=256 --config.model.dtype=float32 \
      --config.loss.cluster_ks='(8,16)' --config.train.global_batch_size=32

Prints one JSON line: the pipeline alone, the jitted step alone on one batch, and the
two together (the real loop), in examples/s.
"""

import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(REPO_ROOT, "configs", "mirflickr.py"), lock_config=False
)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps")
_THREADS = flags.DEFINE_integer("read_threads", 2, "")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "")


def main(argv):
    from fjsph_jax import build, parallel, similarity as similarity_lib
    from fjsph_jax.train import init_train_state, _state_shardings, _similarity_shardings
    from fjsph_jax.step import StepSettings, make_train_step
    from fjsph_jax.data.sources import build_from_config
    from fjsph_jax.data.splits import config_splits
    from fjsph_jax.data.inmemory import example_captions, select_caption
    from fjsph_jax.data.tokenizer import WordTokenizer
    from fjsph_jax.data import pipeline

    config = _CONFIG.value
    mesh = parallel.make_mesh()
    built = build_from_config(config.data)
    splits = config_splits(config.data, len(built))
    src = built.data_source()
    texts = [
        select_caption(example_captions(src[int(r)]), "first", seed=0, row=int(r))
        for r in splits.train
    ]
    labels = np.stack([np.asarray(src[int(r)]["labels"]) for r in splits.train])
    tokenizer = WordTokenizer.from_texts(texts)
    B = config.train.global_batch_size
    encoder = pipeline.ExampleEncoder(
        src, tokenizer, config.data.image_size, config.data.context_length
    )
    ds = pipeline.train_batches(
        encoder, splits.train, global_batch_size=B, seed=config.seed, num_steps=10**6
    )
    it = pipeline.MeshBatchIterator(ds, mesh, read_threads=_THREADS.value, prefetch=2)
    t0 = time.perf_counter()
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
    model = build.build_model(config, tokenizer.vocab_size, with_encoders=True, seed=config.seed)
    graphdef, params = nnx.split(model)
    optimizer = build.build_optimizer(config, params, 1000)
    settings = StepSettings.from_config(config)
    sim = similarity_lib.build_joint_similarity(
        labels,
        cluster_ks=tuple(config.loss.cluster_ks),
        cluster_weights=None,
        eta=config.loss.eta,
        key=jax.random.PRNGKey(7),
        kmeans_iters=config.loss.kmeans_iters,
    )
    sim = jax.device_put(sim, _similarity_shardings(sim, mesh))
    state = init_train_state(config, model, optimizer, len(splits.train), mesh)
    shardings = _state_shardings(state, mesh, len(splits.train))
    step_fn = make_train_step(graphdef, optimizer, settings, shardings, parallel.replicated(mesh))
    batch = next(it)
    batch.pop("labels")
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
        b = next(it)
        b.pop("labels")
        state, m = step_fn(state, b, sim, jnp.float32(0))
    jax.block_until_ready(m)
    loop_rate = _STEPS.value * B / (time.perf_counter() - t)
    result.update(
        train_step_examples_per_s=round(step_rate, 1),
        loop_with_pipeline_examples_per_s=round(loop_rate, 1),
    )
    print(json.dumps(result), flush=True)
    it.close()


if __name__ == "__main__":
    app.run(main)
