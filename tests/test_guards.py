"""Non-finite guards: a NaN / inf loss or gradient stops the run with the step and the loss
terms named; nothing non-finite is saved, the last finite checkpoint stays the latest, and
metrics.jsonl stays valid JSON lines.

A fake gradient method (registered like tests/test_loop.py's) poisons one chosen step, so
the tests are cheap and exact; the launcher test poisons the real FJSPH loss.
"""

import json
import math
import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fjsph_jax import parallel
from fjsph_jax.methods.base import GradientMethod
from fjsph_jax.training import guards, loop
from fjsph_jax.training.checkpointing import Checkpointer
from test_multiprocess import worker_env
from tiny import LabelCodes, TINY_CONFIG_PATH, registered, tiny_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PoisonState(NamedTuple):
    w: jax.Array
    step: jax.Array


class PoisonedMethod(LabelCodes, GradientMethod):
    """Fits w to the batch's mean feature by SGD; step ``config.poison.step`` (1-based, as
    metrics.jsonl and checkpoints count) gets a NaN loss (``poison.where="loss"``) or an
    infinite gradient with a finite loss (``"grad"``). Codes are the labels (Oracle)."""

    name = "poisoned"
    title = "Poisoned"

    @classmethod
    def validate_config(cls, config, num_devices):
        pass

    @classmethod
    def input_kind(cls, config):
        return "features"

    def __init__(self, config, data, mesh, towers=None):
        super().__init__(config, data, mesh, towers)
        self.steps_per_epoch = len(data.splits.train) // config.train.global_batch_size
        self.total_steps = config.train.max_steps
        poison_step, where = int(config.poison.step), config.poison.where
        rep = parallel.replicated(mesh)

        def step_fn(state, batch):
            done = state.step + 1
            hit = done == poison_step
            target = jnp.mean(batch["image_features"])

            def loss_fn(w):
                square = jnp.sum((w - target) ** 2)
                nan = jnp.where(hit & (where == "loss"), jnp.nan, 0.0)
                return square + nan, {"square": square}

            (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.w)
            grad = jnp.where(hit & (where == "grad"), jnp.inf, grad)
            metrics = {"loss": loss, **terms, "grad_norm": jnp.linalg.norm(grad)}
            return PoisonState(state.w - 0.1 * grad, done), metrics

        self._step = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(rep, rep))

    def init_state(self):
        return parallel.put_replicated(
            PoisonState(np.zeros(3, np.float32), np.int32(0)), self.mesh
        )

    def train_step(self, state, batch, step):
        return self._step(state, batch)


@pytest.fixture
def poisoned():
    yield from registered("poisoned", PoisonedMethod)


def poisoned_config(step: int, where: str = "loss", **overrides):
    """12 steps of the fake method on tiny's data (hand-crafted features, batch 16)."""
    config = tiny_config(**{
        "method": "poisoned", "data.features": "handcrafted", "train.max_steps": 12,
        "train.max_checkpoints_to_keep": 10, **overrides,
    })
    config.poison = ml_collections.ConfigDict({"step": step, "where": where})
    return config


def _records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line parses


def test_nan_loss_stops_before_the_next_save(poisoned, tmp_path):
    """Saves every 2 steps, logs every 5: the NaN of step 7 is caught at step 8's save."""
    config = poisoned_config(7, **{"train.log_every_steps": 5,
                                   "train.checkpoint_every_steps": 2})
    with pytest.raises(guards.NonFiniteError) as caught:
        loop.train_and_evaluate(config, str(tmp_path))
    error = caught.value
    assert error.step == 7 and error.latest_checkpoint == 6
    message = str(error)
    assert "non-finite loss or gradient at step 7" in message
    assert "loss=nan, grad_norm=" in message and "square=" in message
    assert "step 6, is the last finite one" in message and "\n" not in message
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=10, save_interval_steps=2)
    assert ckpt.all_steps() == [2, 4, 6]
    state, meta = ckpt.restore_untyped(6)
    assert np.all(np.isfinite(np.asarray(state["w"]))) and meta["step"] == 6
    ckpt.close()
    assert [r["step"] for r in _records(tmp_path)] == [5]
    assert not (tmp_path / "results.json").exists()


def test_infinite_gradient_with_a_finite_loss_stops_at_the_log(poisoned, tmp_path):
    config = poisoned_config(6, "grad", **{"train.log_every_steps": 2,
                                           "train.checkpoint_every_steps": 4})
    with pytest.raises(guards.NonFiniteError, match=r"at step 6 \(loss=[0-9.e-]+, grad_norm=inf"):
        loop.train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=10, save_interval_steps=4)
    assert ckpt.latest_step() == 4
    ckpt.close()
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in records)


def test_finite_watch_names_the_first_bad_step_and_keeps_windows_exact():
    mesh = parallel.make_mesh()

    def metrics(loss, grad=1.0):
        return parallel.put_replicated(
            {"loss": np.float32(loss), "grad_norm": np.float32(grad)}, mesh)

    watch = guards.FiniteWatch()
    for step, loss in enumerate([1.0, 2.0, 3.5]):
        watch.add(metrics(loss), step)
    saved = watch.to_json()
    assert saved == {"count": 3, "sums": {"loss": 6.5, "grad_norm": 3.0}}
    reopened = guards.FiniteWatch()
    reopened.from_json(json.loads(json.dumps(saved)))
    for watcher in (watch, reopened):
        watcher.add(metrics(0.1), 3)
    assert watch.pull(None) == reopened.pull(None) == pytest.approx(
        {"loss": 6.6 / 4, "grad_norm": 1.0})
    watch.add(metrics(1.0), 4)
    watch.add(metrics(1.0, float("inf")), 5)  # step 6 (1-based)
    watch.add(metrics(float("nan")), 6)
    with pytest.raises(guards.NonFiniteError, match=r"at step 6 \(loss=1, grad_norm=inf\)"):
        watch.check(latest_checkpoint=4)


def test_launcher_exits_with_one_line_on_a_nan_loss(tmp_path):
    """The real FJSPH loss made infinite (contrastive weight inf): exit status 3, one line
    naming the step and the terms, no checkpoint, valid metrics.jsonl."""
    command = [
        sys.executable, os.path.join(REPO_ROOT, "launch", "train.py"),
        f"--config={TINY_CONFIG_PATH}", f"--workdir={tmp_path}",
        "--config.train.mode=frozen_encoder", "--config.data.features=handcrafted",
        "--config.loss.contrastive_weight=inf",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=worker_env(), cwd=str(tmp_path))
    assert done.returncode == 3, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: NonFiniteError: non-finite loss or gradient at step 1 (")
    assert "contrastive=" in errors[0] and "no checkpoint was written" in errors[0]
    assert "Traceback" not in done.stderr
    assert not os.listdir(tmp_path / "checkpoints")
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if (
            tmp_path / "metrics.jsonl").exists() else []:
        json.loads(line)
