"""What stops a run early, and how every process stops at the same step.

* :class:`PreemptionWatch`: a SIGTERM to any process (a preemption notice, ``scancel``,
  ``kill``) makes every process save a checkpoint at one agreed step and stop
  (:class:`Preempted`). Under ``jax.distributed`` this is JAX's preemption service: its
  notifier catches SIGTERM, the coordination service picks the step (the largest step any
  process has reached, plus one) and ``reached_preemption_sync_point(step)`` turns True on
  every process at that step, with no per-step collective. A single process without the
  distributed runtime has no such service (``reached_preemption_sync_point`` is always
  False there), so a Python SIGTERM handler sets a flag the loop reads each step; one
  process needs no agreement.
* :class:`FiniteWatch`: the loss and the gradient norm of every step are checked on the
  device, inside the (jitted) running sums of the logged metrics; the host reads the
  verdict at the logging interval and before every checkpoint save, where it already
  pulls values from the device. A non-finite step raises :class:`NonFiniteError` naming
  the first bad step and its metrics; nothing after the last finite step is saved. The
  verdict comes from replicated arrays every process holds, so all processes stop
  together at the same check.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Preempted(Exception):
    """The run saved a checkpoint at ``step`` and stopped on a preemption notice."""

    def __init__(self, step: int, workdir: str = ""):
        super().__init__(f"preempted: saved step {step}" + (f" in {workdir}" if workdir else ""))
        self.step = step
        self.workdir = workdir


class NonFiniteError(RuntimeError):
    """The loss or the gradient of a training step is NaN or infinite."""

    def __init__(self, step: int, values: dict, latest_checkpoint: int | None):
        self.step = step
        self.values = dict(values)
        self.latest_checkpoint = latest_checkpoint
        order = ["loss", "grad_norm"] + sorted(k for k in values if k not in ("loss",
                                                                              "grad_norm"))
        terms = ", ".join(f"{k}={_fmt(values[k])}" for k in order if k in values)
        kept = (f"the latest checkpoint, step {latest_checkpoint}, is the last finite one"
                if latest_checkpoint is not None else "no checkpoint was written")
        super().__init__(
            f"non-finite loss or gradient at step {step} ({terms}); training stopped, "
            f"{kept}. Lower config.train.learning_rate or check the data and loss weights"
        )


def _fmt(value: float) -> str:
    return repr(value) if not math.isfinite(value) else f"{value:.6g}"


class PreemptionWatch:
    """``reached(step)``: whether every process should save at ``step`` and stop.

    Call it at every step with the same step numbers on every process (JAX's sync point
    protocol counts them). Use as a context manager, or call :meth:`close`: the SIGTERM
    handler of the single-process path is restored there.
    """

    def __init__(self):
        from jax._src import distributed

        self._sync_manager = distributed.global_state.preemption_sync_manager
        self._signalled = threading.Event()
        self._previous = None
        if self._sync_manager is None:
            if distributed.global_state.client is not None:
                logging.warning(
                    "jax.distributed runs without its preemption service "
                    "(jax_enable_preemption_service=False): a SIGTERM stops this process "
                    "without a checkpoint"
                )
            elif threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    @property
    def uses_jax_service(self) -> bool:
        return self._sync_manager is not None

    def _on_sigterm(self, signum, frame) -> None:
        del frame
        if self._signalled.is_set():  # a second SIGTERM: stop now, without a checkpoint
            signal.signal(signum, self._previous or signal.SIG_DFL)
            self._previous = None
            os.kill(os.getpid(), signum)
            return
        self._signalled.set()
        logging.warning("SIGTERM: saving a checkpoint after the current step, then stopping "
                        "(a second SIGTERM stops at once)")

    def reached(self, step: int) -> bool:
        if self._sync_manager is not None:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self._signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_finite_step(metrics: dict):
    ok = jnp.isfinite(metrics["loss"])
    if "grad_norm" in metrics:
        ok = ok & jnp.isfinite(metrics["grad_norm"])
    return ok


@jax.jit
def _start(metrics: dict, step):
    bad = ~_is_finite_step(metrics)
    return {
        "sums": metrics,
        "first_bad": jnp.where(bad, step, -1).astype(jnp.int32),
        "bad_metrics": metrics,
    }


@jax.jit
def _add(window: dict, metrics: dict, step):
    fresh_bad = (window["first_bad"] < 0) & ~_is_finite_step(metrics)
    return {
        "sums": jax.tree.map(jnp.add, window["sums"], metrics),
        "first_bad": jnp.where(fresh_bad, step, window["first_bad"]).astype(jnp.int32),
        "bad_metrics": jax.tree.map(
            lambda old, new: jnp.where(fresh_bad, new, old), window["bad_metrics"], metrics
        ),
    }


class FiniteWatch:
    """Running sums of a step's metrics over a logging window, with the finiteness check.

    ``add(metrics, step)`` is one small jitted call per step (it replaces a per-metric
    ``tree.map(add)``), kept on the device. :meth:`pull` reads the window (the only
    device->host sync), raising :class:`NonFiniteError` when a step of the window had a
    non-finite loss or gradient norm; :meth:`check` reads only the verdict.

    The window (sums and step count) is JSON (:meth:`to_json`, :meth:`from_json`): a
    checkpoint carries it, so a resumed run logs exactly the averages an uninterrupted run
    logs (float32 sums survive the round trip through JSON doubles exactly, and float
    addition is commutative, so ``saved + m`` equals the uninterrupted ``sums + m``).
    """

    def __init__(self):
        self._window: dict | None = None
        self._saved: dict | None = None  # a reopened window, placed at the next add
        self.count = 0

    def add(self, metrics: dict, step: int) -> None:
        """Accumulates the metrics of 0-based step ``step`` (reported as ``step + 1``)."""
        done = np.int32(step + 1)
        if self._window is None and self._saved is not None:
            self._window = self._reopen(self._saved, metrics)
            self._saved = None
            if self._window is None:
                self.count = 0
        if self._window is None:
            self._window = _start(metrics, done)
        else:
            self._window = _add(self._window, metrics, done)
        self.count += 1

    def check(self, latest_checkpoint: int | None) -> None:
        """Raises :class:`NonFiniteError` if a step of the window was not finite."""
        if self._window is None:
            return
        first_bad = int(jax.device_get(self._window["first_bad"]))
        if first_bad >= 0:
            self._raise(first_bad, latest_checkpoint)

    def pull(self, latest_checkpoint: int | None) -> dict[str, float]:
        """The window's mean metrics (checked first); starts a new window."""
        if self._window is None:
            return {}
        window = jax.device_get(self._window)
        if int(window["first_bad"]) >= 0:
            self._raise(int(window["first_bad"]), latest_checkpoint, window)
        means = {k: float(v) / self.count for k, v in window["sums"].items()}
        self._window, self.count = None, 0
        return means

    def _raise(self, first_bad: int, latest_checkpoint, window=None) -> None:
        if window is None:
            window = jax.device_get(self._window)
        values = {k: float(v) for k, v in window["bad_metrics"].items()}
        raise NonFiniteError(first_bad, values, latest_checkpoint)

    def to_json(self) -> dict[str, Any]:
        """``{"count": n, "sums": {...}}`` of the open window (call :meth:`check` first)."""
        if self._window is None:
            return dict(self._saved) if self._saved else {"count": 0, "sums": {}}
        sums = jax.device_get(self._window["sums"])
        return {"count": self.count, "sums": {k: float(v) for k, v in sums.items()}}

    def from_json(self, saved: dict | None) -> None:
        """Reopens a window :meth:`to_json` returned (a checkpoint's ``metrics_window``)."""
        self._window, self._saved, self.count = None, None, 0
        if saved and saved.get("count"):
            self._saved = {"count": int(saved["count"]), "sums": dict(saved["sums"])}
            self.count = int(saved["count"])

    @staticmethod
    def _reopen(saved: dict, metrics: dict) -> dict | None:
        if set(saved["sums"]) != set(metrics):
            logging.warning("the checkpoint's metrics window has other keys than this run's "
                            "step; its partial averages are dropped")
            return None
        sums = {
            k: jax.device_put(np.asarray(saved["sums"][k], dtype=v.dtype), v.sharding)
            for k, v in metrics.items()
        }
        first_bad = jax.device_put(np.int32(-1), metrics["loss"].sharding)
        return {"sums": sums, "first_bad": first_bad, "bad_metrics": sums}
