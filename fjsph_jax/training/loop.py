"""The one training loop of every method: ``train_and_evaluate(config, workdir)``.

    method = methods.get(config.method)(config, data, mesh, towers)
    state  = latest checkpoint in workdir, else method.init_state()

    gradient methods (FJSPH, JDSH), for step in [start, total):
        state <- method.before_step(state, step)            (FJSPH: discrete code update)
        batch <- MeshBatchIterator: rows EpochBatcher(step) of the training split, each host
                 its slice, read by the run's row loader on grain threads
        state, metrics <- method.train_step(state, batch, step)   (jit, donated)
        every log_every steps: JSONL line + progress bar (one device->host sync)
        every checkpoint_every steps (and on preemption): async orbax save

    closed-form methods (JSPSH): state <- method.fit(state); saved once

then the query and database rows are coded by ``method.encode`` and MAP / P@N / PR are
computed for i2t and t2i next to the random-codes chance level (:mod:`fjsph_jax.evaluation`);
``results.json`` and PNG plots are written. The same command in the same workdir resumes
from the latest checkpoint: batches and step keys are pure functions of the step (the data
iterator's state in each checkpoint is ``{"step": s}``), so a resumed run reaches exactly
the state of an uninterrupted one.

Outputs, the same for every method: ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``results.json``, ``pr_curve.png``, ``precision_at_n.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from fjsph_jax import encoders, methods, parallel
from fjsph_jax.configuration import validate_config
from fjsph_jax.data.pipeline import MeshBatchIterator, train_batches
from fjsph_jax.evaluation import protocol
from fjsph_jax.inputs import TrainingData, prepare_training_data
from fjsph_jax.methods.base import ClosedFormMethod, GradientMethod, Method
from fjsph_jax.training.checkpointing import Checkpointer, config_fingerprint

FITTED_STEP = 1  # the checkpoint step under which a closed-form method's fit is saved


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


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def build_method(config, workdir: str, mesh) -> tuple[Method, TrainingData]:
    """Validates ``config``, reads the data and builds the method ``config.method`` names."""
    method_class = methods.get(config.get("method", "fjsph"))
    validate_config(config, parallel.num_data_shards(mesh))
    towers = (
        encoders.load_pretrained_towers(config)  # checkpoint errors before data errors
        if method_class.needs_towers(config)
        else None
    )
    data = prepare_training_data(
        config, workdir, mesh, towers, input_kind=method_class.input_kind(config)
    )
    return method_class(config, data, mesh, towers), data


def train_and_evaluate(
    config,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
    stop_after_steps: int | None = None,
) -> dict | None:
    """Trains ``config.method`` as ``config`` says, checkpointing into ``workdir``, then evaluates.

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
    os.makedirs(workdir, exist_ok=True)
    method, data = build_method(config, workdir, mesh)
    fingerprint = config_fingerprint(config)
    state = method.init_state()
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.get("train", {}).get("max_checkpoints_to_keep", 2),
        save_interval_steps=config.get("train", {}).get("checkpoint_every_steps", 1),
    )
    restored = checkpointer.restore(state, fingerprint=fingerprint)
    _write_config(config, workdir)
    writer = MetricsWriter(workdir)
    started = time.perf_counter()
    if isinstance(method, GradientMethod):
        state = _run_steps(method, state, restored, data, checkpointer, writer, fingerprint,
                           mesh, stop_after_steps)
        if state is None:
            return None
    elif isinstance(method, ClosedFormMethod):
        state = _fit(method, state, restored, checkpointer, writer, fingerprint)
    else:
        raise TypeError(f"{type(method).__name__} is neither a GradientMethod nor a "
                        "ClosedFormMethod")
    train_seconds = time.perf_counter() - started

    results = evaluate_method(method, state, data)
    results["train_seconds"] = train_seconds
    if jax.process_index() == 0:
        protocol.write_results(workdir, results)
        print(protocol.format_table(results), flush=True)
    return results


def _fit(method: ClosedFormMethod, state, restored, checkpointer, writer, fingerprint):
    if restored is not None:
        logging.info("using the fitted %s state saved in the workdir", method.title)
        checkpointer.close()
        return restored[0]
    if jax.process_index() == 0:
        print(f"{method.describe()}: fitting on {len(method.data.splits.train)} training rows",
              flush=True)
    start = time.perf_counter()
    state, summary = method.fit(state)
    writer.write({"step": FITTED_STEP, "fit_seconds": time.perf_counter() - start, **summary})
    checkpointer.save(FITTED_STEP, state, {"step": FITTED_STEP, "config_fingerprint": fingerprint},
                      force=True)
    checkpointer.close()
    return state


def _run_steps(method: GradientMethod, state, restored, data, checkpointer, writer,
               fingerprint, mesh, stop_after_steps):
    """The step loop of a gradient method; None when stopped before the last step."""
    config = method.config
    total_steps = method.total_steps
    start_step = 0
    if restored is not None:
        state, meta = restored
        start_step = _resumed_data_position(meta, int(jax.device_get(state.step)))

    batches = MeshBatchIterator(
        train_batches(
            data.load_rows,
            data.splits.train,
            global_batch_size=config.train.global_batch_size,
            seed=config.seed,
            num_steps=total_steps,
        ),
        mesh,
        start_step=start_step,
        read_threads=config.data.get("read_threads", 2),
    )
    progress = _progress(total_steps, start_step)
    end_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    running, count, t0 = None, 0, time.perf_counter()
    if jax.process_index() == 0:
        print(
            f"{method.describe()} on {config.data.name} ({data.splits.sizes()}): "
            f"{total_steps} steps ({method.steps_per_epoch} per epoch) from step {start_step} "
            f"on {parallel.num_data_shards(mesh)} device(s)",
            flush=True,
        )

    try:
        for step in range(start_step, end_step):
            state = method.before_step(state, step)
            state, metrics = method.train_step(state, next(batches), step)
            running = metrics if running is None else jax.tree.map(jnp.add, running, metrics)
            count += 1

            done = step + 1
            if done % config.train.log_every_steps == 0 or done == end_step:
                values = {k: float(v) / count for k, v in jax.device_get(running).items()}
                elapsed = time.perf_counter() - t0
                record = {
                    "step": done,
                    "epoch": done / method.steps_per_epoch,
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
    return state


def evaluate_method(method: Method, state, data: TrainingData) -> dict:
    """MAP@all / MAP@K / P@N / PR for i2t and t2i, plus the random-codes chance level.

    The keys are the same for every method (``method``, ``bits``, ``code_format``,
    ``code_dim``, ``map_convention``, ``top_k``, ``split``, ``split_sizes``, ``i2t``, ``t2i``,
    ``random_codes``).
    """
    config = method.config
    splits = data.splits
    query = method.encode(state, splits.query, role="query")
    database = method.encode(state, splits.database, role="database")
    q_labels, db_labels = data.labels[splits.query], data.labels[splits.database]
    convention = protocol.map_convention(config.eval, method.map_convention)
    results = {
        "method": method.name,
        "method_title": method.title,
        "bits": method.bits,
        "code_format": method.code_format,
        "code_dim": method.code_dim,
        "map_convention": convention,
        "top_k": config.eval.top_k,
        "dataset": config.data.name,
        "features": config.data.get("features", ""),
        "split": data.evaluation_split,
        "split_sizes": splits.sizes(),
    }
    results.update(
        protocol.evaluate_codes(
            query, database, q_labels, db_labels, config.eval,
            code_format=method.code_format, convention=convention,
        )
    )
    results["random_codes"] = protocol.random_codes_baseline(
        len(splits.query),
        len(splits.database),
        method.bits,
        q_labels,
        db_labels,
        config.eval,
        seed=config.seed,
        code_format=method.code_format,
        code_dim=method.code_dim,
        convention=convention,
    )
    return results

