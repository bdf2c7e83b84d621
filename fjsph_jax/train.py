"""FJSPH training and evaluation: ``train_and_evaluate(config, workdir)``.

The loop (everything heavy is jitted; the host only loads batches, ahead, on threads):

    for step in [start, total):
        if step > 0 and step % update_every == 0:  B <- DCC step on (F, G)   (jit, on device)
        batch <- MeshBatchIterator: rows EpochBatcher(step) of the training split, each host
                 its slice, read by the run's row loader (memory or streamed) on grain threads
        state, metrics <- train_step(state, batch, S factors, bank_active)  (jit, donated)
        every log_every steps: JSONL line + progress bar (one device->host sync)
        every checkpoint_every steps (and on preemption): async orbax save

then the query and database splits are encoded, MAP / P@N / PR computed for i2t and
t2i next to the random-codes chance level, and ``results.json`` plus PNG plots are
written. A run restarted with the same workdir resumes from its latest checkpoint;
because batches and step keys are pure functions of the step (the iterator state saved in
each checkpoint is ``{"step": s}``) it reaches exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from fjsph_jax import build, evaluate, parallel
from fjsph_jax import codes as codes_lib
from fjsph_jax import similarity as similarity_lib
from fjsph_jax.checkpointing import Checkpointer, config_fingerprint
from fjsph_jax.configuration import validate_config
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.data.pipeline import MeshBatchIterator, train_batches
from fjsph_jax.inputs import TrainingData, prepare_training_data
from fjsph_jax.step import StepSettings, TrainState, code_update, make_train_step


class MetricsWriter:
    """Appends one JSON object per logging interval to ``<workdir>/metrics.jsonl``."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if self._enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _progress(total: int, initial: int):
    if jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _state_shardings(state: TrainState, mesh, num_train: int):
    rep = parallel.replicated(mesh)
    rows = parallel.rows_sharding(mesh, num_train)
    return TrainState(
        params=jax.tree.map(lambda _: rep, state.params),
        opt_state=jax.tree.map(lambda _: rep, state.opt_state),
        bank=jax.tree.map(lambda _: rows, state.bank),
        step=rep,
        rng=rep,
    )


def _similarity_shardings(sim: similarity_lib.JointSimilarity, mesh):
    rows = parallel.rows_sharding(mesh, sim.num_items)
    cols = NamedSharding(mesh, P(None, *rows.spec))
    rep = parallel.replicated(mesh)
    return sim._replace(label_factors=rows, cluster_ids=cols, cluster_weights=rep, eta=rep)


def init_train_state(config, model, optimizer, num_train: int, mesh) -> TrainState:
    """Fresh state on the mesh: params/opt replicated, bank rows split over ``data``."""
    _, params = nnx.split(model)
    key = jax.random.PRNGKey(config.seed)
    bank = codes_lib.init_code_bank(num_train, config.bits, jax.random.fold_in(key, 1))
    state = TrainState(
        params=params,
        opt_state=optimizer.init(params),
        bank=bank,
        step=jnp.asarray(0, jnp.int32),
        rng=jax.random.fold_in(key, 2),
    )
    return jax.device_put(state, _state_shardings(state, mesh, num_train))


def _resumed_data_position(meta: dict, step: int) -> int:
    """The step the data iterator resumes at, from a checkpoint's ``meta``.

    Checkpoints store the iterator state ``{"step": s}`` (older ones the bare step). It must
    equal the state's step: batches are a pure function of the step, so a mismatch means
    the checkpoint's parts were not written together.
    """
    position = meta.get("data_position", step)
    position = int(position["step"] if isinstance(position, dict) else position)
    if position != step:
        raise ValueError(
            f"checkpoint at step {step} records data position {position}: its state and its "
            "data iterator disagree; delete the checkpoint directory's latest step to resume "
            "from the one before"
        )
    return position


def _code_update_every(config, steps_per_epoch: int) -> int:
    """Steps between discrete code updates: ``config.codes.update_every_steps``, or when
    that is <= 0, ``steps_per_epoch // config.codes.updates_per_epoch`` (at least 1)."""
    every = config.codes.update_every_steps
    if every > 0:
        return every
    return max(1, steps_per_epoch // config.codes.get("updates_per_epoch", 1))


def train_and_evaluate(
    config,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
    stop_after_steps: int | None = None,
) -> dict | None:
    """Trains FJSPH as ``config`` says, checkpointing into ``workdir``, then evaluates.

    Args:
      config: experiment ConfigDict (configs/default.py documents every key).
      workdir: output directory (checkpoints, metrics.jsonl, results.json, plots).
      devices: devices of the mesh (default: all).
      stop_after_steps: stop (after checkpointing) once this many steps are done, as
        a preemption would; returns None then. For tests and staged runs.

    Returns:
      The results dict written to ``results.json`` (None when stopped early).
    """
    mesh = parallel.make_mesh(devices)
    validate_config(config, parallel.num_data_shards(mesh))
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    towers = build.load_pretrained_towers(config)  # checkpoint errors before data errors
    data = prepare_training_data(config, workdir, mesh, towers)
    splits, vocab_size = data.splits, data.vocab_size
    num_train = len(splits.train)
    end_to_end = config.train.mode == "end_to_end"
    model = build.build_model(
        config, vocab_size, with_encoders=end_to_end, seed=config.seed, towers=towers
    )
    graphdef, params = nnx.split(model)

    batcher = EpochBatcher(num_train, config.train.global_batch_size, config.seed)
    total_steps = (
        config.train.max_steps
        if config.train.max_steps > 0
        else config.train.num_epochs * batcher.steps_per_epoch
    )
    update_every = _code_update_every(config, batcher.steps_per_epoch)
    optimizer = build.build_optimizer(config, params, total_steps)
    settings = StepSettings.from_config(config)

    sim = similarity_lib.build_joint_similarity(
        data.labels[splits.train],
        cluster_ks=tuple(config.loss.cluster_ks),
        cluster_weights=tuple(config.loss.cluster_weights) or None,
        eta=config.loss.eta,
        key=jax.random.PRNGKey(config.seed + 7),
        kmeans_iters=config.loss.kmeans_iters,
    )
    sim = jax.device_put(sim, _similarity_shardings(sim, mesh))

    state = init_train_state(config, model, optimizer, num_train, mesh)
    shardings = _state_shardings(state, mesh, num_train)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.max_checkpoints_to_keep,
        save_interval_steps=config.train.checkpoint_every_steps,
    )
    fingerprint = config_fingerprint(config)
    restored = checkpointer.restore(state, fingerprint=fingerprint)
    start_step = 0
    if restored is not None:
        state, meta = restored
        start_step = _resumed_data_position(meta, int(jax.device_get(state.step)))

    rep = parallel.replicated(mesh)
    step_fn = make_train_step(graphdef, optimizer, settings, shardings, rep)
    update_fn = jax.jit(
        lambda bank, sim: code_update(
            bank,
            sim,
            similarity_weight=config.codes.similarity_weight,
            quantization_weight=config.codes.quantization_weight,
            num_sweeps=config.codes.num_sweeps,
            floor=config.loss.similarity_floor,
        ),
        donate_argnums=(0,),
        out_shardings=shardings.bank,
    )

    batches = MeshBatchIterator(
        train_batches(
            data.load_rows,
            splits.train,
            global_batch_size=config.train.global_batch_size,
            seed=config.seed,
            num_steps=total_steps,
        ),
        mesh,
        start_step=start_step,
        read_threads=config.data.get("read_threads", 2),
    )
    writer = MetricsWriter(workdir)
    progress = _progress(total_steps, start_step)
    end_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    running, count, t0 = None, 0, time.perf_counter()
    if jax.process_index() == 0:
        print(
            f"FJSPH on {config.data.name} ({splits.sizes()}), {config.bits} bits, "
            f"{config.train.mode}: {total_steps} steps ({batcher.steps_per_epoch} per epoch) "
            f"from step {start_step} on {parallel.num_data_shards(mesh)} device(s)",
            flush=True,
        )

    try:
        for step in range(start_step, end_step):
            if step > 0 and step % update_every == 0:
                state = state._replace(bank=update_fn(state.bank, sim))
            bank_active = jnp.float32(step >= update_every)
            state, metrics = step_fn(state, next(batches), sim, bank_active)
            running = metrics if running is None else jax.tree.map(jnp.add, running, metrics)
            count += 1

            done = step + 1
            if done % config.train.log_every_steps == 0 or done == end_step:
                values = {k: float(v) / count for k, v in jax.device_get(running).items()}
                elapsed = time.perf_counter() - t0
                record = {
                    "step": done,
                    "epoch": done / batcher.steps_per_epoch,
                    **values,
                    "examples_per_sec": count * config.train.global_batch_size / elapsed,
                }
                writer.write(record)
                if progress is not None:
                    progress.update(done - progress.n)
                    progress.set_postfix(
                        loss=f"{values['loss']:.4f}", ex_s=f"{record['examples_per_sec']:.0f}"
                    )
                running, count, t0 = None, 0, time.perf_counter()

            meta = {
                "step": done,
                "data_position": batches.get_state(),
                "config_fingerprint": fingerprint,
            }
            if checkpointer.reached_preemption(done):
                checkpointer.save(done, state, meta, force=True)
                checkpointer.close()
                logging.warning("preemption signal: saved step %d and stopping", done)
                return None
            checkpointer.save(done, state, meta, force=(done == end_step))
    finally:
        batches.close()

    if progress is not None:
        progress.close()
    checkpointer.close()
    if end_step < total_steps:
        return None

    results = evaluate_model(config, graphdef, state.params, data, mesh)
    if jax.process_index() == 0:
        evaluate.write_results(workdir, results)
        print(evaluate.format_table(results), flush=True)
    return results


def evaluate_model(config, graphdef, params, data: TrainingData, mesh) -> dict:
    """MAP@all / MAP@K / P@N / PR for i2t and t2i, plus the random-codes chance level."""
    encode_fn = evaluate.make_encode_fn(graphdef, StepSettings.from_config(config))
    splits = data.splits
    query, db = (
        evaluate.encode_rows(
            encode_fn, params, data.load_rows, rows, batch_size=config.eval.batch_size, mesh=mesh
        )
        for rows in (splits.query, splits.database)
    )
    q_labels, db_labels = data.labels[splits.query], data.labels[splits.database]
    results = {
        "bits": config.bits,
        "top_k": config.eval.top_k,
        "dataset": config.data.name,
        "split_sizes": splits.sizes(),
    }
    results.update(
        evaluate.evaluate_codes(
            {"image": query[0], "text": query[1]},
            {"image": db[0], "text": db[1]},
            q_labels,
            db_labels,
            config.eval,
        )
    )
    results["random_codes"] = evaluate.random_codes_baseline(
        len(splits.query),
        len(splits.database),
        config.bits,
        q_labels,
        db_labels,
        config.eval,
        seed=config.seed,
    )
    return results
