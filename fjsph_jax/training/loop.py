"""The one training loop of every method: ``train_and_evaluate(config, workdir)``.

    method = methods.get(config.method)(config, data, mesh, towers)
    state  = newest checkpoint in workdir that restores, else method.init_state()

    gradient methods (FJSPH, JDSH), for step in [start, total):
        state <- method.before_step(state, step)            (FJSPH: discrete code update)
        batch <- MeshBatchIterator: rows EpochBatcher(step) of the training split, each host
                 its slice, read by the run's row loader on grain threads
        state, metrics <- method.train_step(state, batch, step)   (jit, donated)
        running sums of the metrics + finiteness of loss / grad_norm, on device
        every log_every steps: JSONL line (+ TensorBoard) + progress bar (one device->host sync)
        every eval.every_steps steps (if > 0): evaluation -> eval_* record
        every checkpoint_every steps, at the end, and on preemption (SIGTERM): check the
        steps so far were finite, then an async orbax save by every process

    closed-form methods (JSPSH): state <- method.fit(state); saved once

then the query and database rows are coded by ``method.encode`` and MAP / P@N / PR are
computed for i2t and t2i next to the random-codes chance level (:mod:`fjsph_jax.evaluation`);
``results.json`` and PNG plots are written. The same command in the same workdir resumes
from the latest checkpoint: batches and step keys are pure functions of the step (the data
iterator's state in each checkpoint is ``{"step": s}``), so a resumed run reaches exactly
the state of an uninterrupted one; the checkpoint also carries the open logging window,
so metrics.jsonl gets the same averages too.

Stops: :class:`~fjsph_jax.training.guards.Preempted` after a SIGTERM (every process saved
the same step), :class:`~fjsph_jax.training.guards.NonFiniteError` when a step's loss or
gradient is not finite (nothing after the last finite step is saved), see
:mod:`fjsph_jax.training.guards`.

Outputs, the same for every method: ``config.json``, ``metrics.jsonl`` (and
``tensorboard/`` with ``config.train.tensorboard``), ``checkpoints/``, ``results.json``,
``pr_curve.png``, ``precision_at_n.png``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import jax

from fjsph_jax import encoders, methods, parallel
from fjsph_jax.configuration import validate_config
from fjsph_jax.data.pipeline import MeshBatchIterator, train_batches
from fjsph_jax.evaluation import protocol
from fjsph_jax.inputs import TrainingData, prepare_training_data
from fjsph_jax.methods.base import ClosedFormMethod, GradientMethod, Method
from fjsph_jax.training import guards, logs
from fjsph_jax.training import workdir as workdir_lib
from fjsph_jax.training.checkpointing import Checkpointer, config_fingerprint

FITTED_STEP = 1  # the checkpoint step under which a closed-form method's fit is saved


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


def build_method(config, workdir: str, mesh, *, validate: bool = True
                 ) -> tuple[Method, TrainingData]:
    """Validates ``config`` (unless the caller just did), reads the data and builds the
    method ``config.method`` names."""
    method_class = methods.get(config.get("method", "fjsph"))
    if validate:
        validate_config(config, parallel.num_batch_shards(mesh))
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

    Every process of a multi-process run calls it with the same arguments.

    Args:
      config: experiment ConfigDict (configs/default.py documents every key).
      workdir: output directory (checkpoints, metrics.jsonl, results.json, plots).
      devices: devices of the mesh (default: all).
      stop_after_steps: stop (after checkpointing) once this many steps are done, as
        a preemption would; returns None then. For tests and staged runs.

    Returns:
      The results dict written to ``results.json`` (None when stopped early).

    Raises:
      guards.Preempted: a SIGTERM reached a process; every process saved the same step.
      guards.NonFiniteError: a step's loss or gradient was NaN / inf; the latest
        checkpoint is the last one before it.
    """
    with guards.PreemptionWatch() as preemption:  # from here on a SIGTERM saves and stops
        mesh = parallel.make_mesh(devices, fsdp=config.get("train", {}).get("fsdp", 1))
        # Before anything is written: the config, the workdir, and a run already in it.
        validate_config(config, parallel.num_batch_shards(mesh))
        workdir_lib.check_workdir(workdir)
        workdir_lib.check_resume(config, workdir)
        with workdir_lib.removed_on_failure(workdir):  # a run that never starts leaves none
            method, data = build_method(config, workdir, mesh, validate=False)
            fingerprint = config_fingerprint(config)
            state = method.init_state()
            checkpointer = Checkpointer(
                os.path.join(workdir, "checkpoints"),
                max_to_keep=config.get("train", {}).get("max_checkpoints_to_keep", 2),
                save_interval_steps=config.get("train", {}).get("checkpoint_every_steps", 1),
            )
            restored = checkpointer.restore(state, fingerprint=fingerprint)
        _write_config(config, workdir)
        log = logs.MetricsLog(
            workdir,
            resume_step=int(restored[1].get("step", 0)) if restored is not None else 0,
            tensorboard=config.get("train", {}).get("tensorboard", False),
        )
        try:
            started = time.perf_counter()
            if isinstance(method, GradientMethod):
                state = _run_steps(method, state, restored, data, checkpointer, log,
                                   fingerprint, mesh, stop_after_steps, preemption)
                if state is None:
                    return None
            elif isinstance(method, ClosedFormMethod):
                state = _fit(method, state, restored, checkpointer, log, fingerprint)
            else:
                raise TypeError(f"{type(method).__name__} is neither a GradientMethod nor a "
                                "ClosedFormMethod")
            train_seconds = time.perf_counter() - started

            results = evaluate_method(method, state, data)
            results["train_seconds"] = train_seconds
            if config.get("eval", {}).get("every_steps", 0) > 0:
                final_step = (method.total_steps if isinstance(method, GradientMethod)
                              else FITTED_STEP)
                log.write_eval(final_step, eval_scalars(results))
        finally:
            log.close()
    if jax.process_index() == 0:
        protocol.write_results(workdir, results)
        print(protocol.format_table(results), flush=True)
    return results


def _fit(method: ClosedFormMethod, state, restored, checkpointer, log, fingerprint):
    if restored is not None:
        logging.info("using the fitted %s state saved in the workdir", method.title)
        checkpointer.close()
        return restored[0]
    if jax.process_index() == 0:
        print(f"{method.describe()}: fitting on {len(method.data.splits.train)} training rows",
              flush=True)
    start = time.perf_counter()
    state, summary = method.fit(state)
    log.write({"step": FITTED_STEP, "fit_seconds": time.perf_counter() - start, **summary})
    checkpointer.save(FITTED_STEP, state, {"step": FITTED_STEP, "config_fingerprint": fingerprint},
                      force=True)
    checkpointer.close()
    return state


def _run_steps(method: GradientMethod, state, restored, data, checkpointer, log,
               fingerprint, mesh, stop_after_steps, preemption):
    """The step loop of a gradient method; None when stopped before the last step."""
    config = method.config
    total_steps = method.total_steps
    log_every = config.train.log_every_steps
    eval_every = config.get("eval", {}).get("every_steps", 0)
    checkpoint_every = config.train.get("checkpoint_every_steps", 1)
    watch = guards.FiniteWatch()
    start_step = 0
    if restored is not None:
        state, meta = restored
        start_step = _resumed_data_position(meta, int(jax.device_get(state.step)))
        watch.from_json(meta.get("metrics_window"))

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
    timed_steps, t0, excluded = 0, time.perf_counter(), 0.0
    if jax.process_index() == 0:
        print(
            f"{method.describe()} on {config.data.name} ({data.splits.sizes()}): "
            f"{total_steps} steps ({method.steps_per_epoch} per epoch) from step {start_step} "
            f"on {parallel.num_batch_shards(mesh)} device(s)"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""),
            flush=True,
        )

    try:
        for step in range(start_step, end_step):
            state = method.before_step(state, step)
            state, metrics = method.train_step(state, next(batches), step)
            watch.add(metrics, step)
            timed_steps += 1
            done = step + 1

            if done % log_every == 0 or done == total_steps:
                values = watch.pull(checkpointer.latest_step())  # NonFiniteError if not finite
                elapsed = max(time.perf_counter() - t0 - excluded, 1e-9)
                record = {
                    "step": done,
                    "epoch": done / method.steps_per_epoch,
                    **values,
                    "examples_per_sec": timed_steps * config.train.global_batch_size / elapsed,
                    "step_seconds": elapsed / timed_steps,
                    "host_rss_mib": logs.host_rss_mib(),
                }
                log.write(record)
                if progress is not None:
                    progress.update(done - progress.n)
                    progress.set_postfix(
                        loss=f"{values['loss']:.4f}", ex_s=f"{record['examples_per_sec']:.0f}"
                    )
                timed_steps, t0, excluded = 0, time.perf_counter(), 0.0

            if eval_every and done % eval_every == 0 and done < total_steps:
                eval_start = time.perf_counter()
                watch.check(checkpointer.latest_step())
                log.write_eval(done, eval_scalars(evaluate_method(method, state, data,
                                                                  baseline=False)))
                excluded += time.perf_counter() - eval_start

            preempted = preemption.reached(done)
            if preempted or done == end_step or done % checkpoint_every == 0:
                watch.check(checkpointer.latest_step())  # nothing non-finite is ever saved
                meta = {
                    "step": done,
                    "data_position": batches.get_state(),
                    "config_fingerprint": fingerprint,
                    "metrics_window": watch.to_json(),
                }
                checkpointer.save(done, state, meta, force=True)
            if preempted:
                checkpointer.close()
                logging.warning("preemption notice: saved step %d and stopping", done)
                raise guards.Preempted(done)
    except guards.NonFiniteError as e:
        checkpointer.close()  # the finite saves still in flight land; nothing else is written
        raise guards.NonFiniteError(e.step, e.values, checkpointer.latest_step()) from None
    finally:
        batches.close()
        if progress is not None:
            progress.close()

    checkpointer.close()
    if end_step < total_steps:
        return None
    return state


EVAL_SCALARS = ("map_all", "map_at_k")


def eval_scalars(results: dict) -> dict[str, float]:
    """``eval_<direction>_<metric>`` scalars of an :func:`evaluate_method` result, and
    ``eval_<direction>_p_at_<n>`` for each precision cut-off."""
    out = {}
    for direction in ("i2t", "t2i"):
        block = results[direction]
        for key in EVAL_SCALARS:
            out[f"eval_{direction}_{key}"] = float(block[key])
        precision = block.get("precision_at_n") or {}
        for n, value in zip(precision.get("ns", ()), precision.get("values", ())):
            out[f"eval_{direction}_p_at_{n}"] = float(value)
    return out


def evaluate_method(method: Method, state, data: TrainingData, *, baseline: bool = True) -> dict:
    """MAP@all / MAP@K / P@N / PR for i2t and t2i, plus the random-codes chance level.

    The keys are the same for every method (``method``, ``bits``, ``code_format``,
    ``code_dim``, ``map_convention``, ``top_k``, ``split``, ``split_sizes``, ``i2t``, ``t2i``,
    ``random_codes``; the last one only with ``baseline``). Every process calls it (the
    codes are computed on the mesh and all-gathered); every process gets the results.
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
    if not baseline:
        return results
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

