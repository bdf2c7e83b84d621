"""The run's metric log: ``<workdir>/metrics.jsonl``, optionally TensorBoard beside it.

``metrics.jsonl`` holds one JSON object per line, each with ``step`` (steps done):

* training records at every ``config.train.log_every_steps``: the step's metrics averaged
  over the interval (``loss``, the loss terms, ``grad_norm``, ...), ``epoch``,
  ``examples_per_sec``, ``step_seconds`` (wall time per step) and ``host_rss_mib``;
* evaluation records every ``config.eval.every_steps`` and at the end (when that is > 0):
  ``eval_i2t_map_all``, ``eval_t2i_map_at_k``, ... on the evaluation queries.

A resumed run first drops the records beyond the checkpoint it restored (and any line a
killed process left half-written), so the file never holds a step twice and stays valid
JSON lines. Only process 0 writes.

With ``config.train.tensorboard = True`` the same scalars also go to TensorBoard event
files under ``<workdir>/tensorboard`` through tensorboardX (no TensorFlow needed;
``pip install -e .[tensorboard]``). A resumed run purges the events beyond its restored
step, as TensorBoard's ``purge_step`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax

from fjsph_jax.configuration import ConfigError


class TensorBoardMissingError(ConfigError):
    """``config.train.tensorboard = True`` without tensorboardX installed."""


def host_rss_mib() -> float:
    """This process's resident memory (VmRSS) in MiB; the peak RSS where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, B on macOS
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def read_records(path: str) -> list[dict]:
    """The JSON objects of a metrics.jsonl (unparsable lines skipped)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _json_value(value):
    """NaN / inf as strings: the file stays strict JSON (``json.loads`` of other tools)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


class MetricsLog:
    """Appends records to ``<workdir>/metrics.jsonl`` (and TensorBoard), process 0 only.

    Args:
      workdir: the run's directory.
      resume_step: the step the run restored (0 for a fresh run): records beyond it are
        dropped from an existing file first.
      tensorboard: also write TensorBoard event files (needs tensorboardX).
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = False):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._enabled = jax.process_index() == 0
        self._eval_steps: set[int] = set()
        self._tb = None
        if tensorboard:
            check_tensorboard()  # every process: the error is the same everywhere
        if not self._enabled:
            return
        self._truncate(resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"),
                purge_step=resume_step + 1 if resume_step > 0 else None,
                # Event files are named by the second they open in: a run resumed within
                # the same second must not overwrite the previous file.
                filename_suffix=f".{time.time_ns()}",
            )

    def _truncate(self, resume_step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.read().splitlines()
        kept, dropped = [], 0
        for line in lines:
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                dropped += 1
                continue
            if step > resume_step:
                dropped += 1
                continue
            kept.append(line)
            if any(k.startswith("eval_") for k in record):
                self._eval_steps.add(step)
        if dropped:
            logging.info("metrics.jsonl: dropped %d records beyond step %d", dropped,
                         resume_step)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        """Appends ``record`` (it must hold ``step``)."""
        if not self._enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(
                        value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def write_eval(self, step: int, values: dict) -> None:
        """An evaluation record at ``step`` (once per step: a rerun does not repeat it)."""
        if step in self._eval_steps:
            return
        self._eval_steps.add(step)
        self.write({"step": step, **values})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def check_tensorboard() -> None:
    """Raises :class:`TensorBoardMissingError` unless tensorboardX imports."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as e:
        raise TensorBoardMissingError(
            "config.train.tensorboard=True writes TensorBoard files with tensorboardX, which "
            "is not installed: pip install -e '.[tensorboard]' (or pip install tensorboardX), "
            "or set --config.train.tensorboard=False"
        ) from e
