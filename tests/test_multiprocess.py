"""Several processes: the tiny run as 2 processes x 4 CPU devices on localhost equals the
same run as 1 process x 8 devices (loss curve, final parameters, MAP), each process reading
only its slice of every global batch.

The workers are ``launch/train.py`` subprocesses (``--coordinator_address=127.0.0.1:PORT
--num_processes=2 --process_id=i``, gloo collectives), each in its own process group,
killed as a group when a sibling fails or the wall-clock limit passes: the suite never
hangs on a stuck collective. The helpers here are shared with tests/test_preemption.py.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fjsph_jax import parallel
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.training import loop
from fjsph_jax.training.checkpointing import Checkpointer
from tiny import TINY_CONFIG_PATH, tiny_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO_ROOT, "launch", "train.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(num_devices: int = 1, *, multiprocess: bool = False, **extra) -> dict:
    """The test session's environment (its XLA flags) for a CPU worker of ``num_devices``
    devices. A single-process worker shares the session's compilation cache (every
    program: the runs of a test compile the same ones). Workers of a multi-process run
    get none: with jax 0.10.2 on CPU, a warm persistent cache made the two processes
    execute differently compiled steps whose collectives never met (a deadlock)."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(num_devices),
        PYTHONPATH=os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **extra,
    )
    cache = jax.config.jax_compilation_cache_dir
    if multiprocess:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    elif cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def launch_command(args) -> list[str]:
    return [sys.executable, LAUNCH, *args]


class Worker:
    """A subprocess in its own process group, its output in ``<prefix>.out`` / ``.err``."""

    def __init__(self, command, prefix, *, cwd, env=None):
        self.prefix = str(prefix)
        with open(self.prefix + ".out", "w") as out, open(self.prefix + ".err", "w") as err:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=err, cwd=str(cwd), env=env or worker_env(),
                start_new_session=True,
            )

    @property
    def returncode(self):
        return self.process.poll()

    def stdout(self) -> str:
        with open(self.prefix + ".out") as f:
            return f.read()

    def output(self, tail: int = 4000) -> str:
        with open(self.prefix + ".err") as f:
            err = f.read()
        return f"--- {self.prefix} stdout:\n{self.stdout()[-tail:]}\n--- stderr:\n{err[-tail:]}"

    def wait_for(self, predicate, *, timeout: float) -> None:
        """Polls ``predicate()`` until true; fails if the worker exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.returncode is not None:
                pytest.fail(f"worker exited ({self.returncode}) before it was due to\n"
                            + self.output())
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"worker did not get there in {timeout} s\n" + self.output())
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def wait_all(workers, *, timeout: float) -> None:
    """Waits for every worker; when one fails, or at the deadline, kills the rest's groups."""
    deadline = time.monotonic() + timeout
    try:
        while any(w.returncode is None for w in workers):
            if any(w.returncode not in (None, 0) for w in workers):
                break  # a failed worker leaves its siblings blocked in a collective
            if time.monotonic() > deadline:
                pytest.fail(f"workers still running after {timeout} s\n"
                            + "\n".join(w.output() for w in workers))
            time.sleep(0.1)
    finally:
        for w in workers:
            w.kill()


def train_records(workdir) -> list[dict]:
    """metrics.jsonl's training records (every line must parse)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f.read().splitlines()]
    return [r for r in records if "loss" in r]


# A worker that records which training rows it loads, then runs launch/train.py as is.
ROW_TRACER = """
import atexit, json, os, runpy, sys
from fjsph_jax.data import pipeline
read = []
original = pipeline._StepBatch.__call__
def traced(self, step):
    read.append([int(step), [int(p) for p in self.positions(step)]])
    return original(self, step)
pipeline._StepBatch.__call__ = traced
atexit.register(lambda: json.dump(read, open(os.environ["FJSPH_ROWS_LOG"], "w")))
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# The tiny FJSPH run on hand-crafted features (fast to compile): 16 steps, logs every 2;
# 60 training rows, so the code bank is padded to a multiple of the device count (64 rows
# on 8 devices, 60 on 4). tests/test_checkpoint_topology.py trains the same on 8 devices
# first, so the reference run here finds its programs in the session's compilation cache.
TOTAL_STEPS = 16
NUM_TRAIN = 60
OVERRIDES = {
    "train.mode": "frozen_encoder",
    "data.features": "handcrafted",
    "data.num_train": NUM_TRAIN,
    "train.max_steps": TOTAL_STEPS,
    "train.log_every_steps": 2,
    "train.checkpoint_every_steps": 8,
    "eval.batch_size": 256,  # one batch (one all-gather) per evaluation set
}
PREEMPTED = re.compile(r"preempted: process (\d) saved step (\d+) in .*; resume with:\n  (.+)\n")


def test_host_slices_split_each_global_batch(monkeypatch):
    batch = EpochBatcher(NUM_TRAIN, 16, seed=0).indices(5)
    parts = []
    for index in range(4):
        monkeypatch.setattr(jax, "process_count", lambda: 4)
        monkeypatch.setattr(jax, "process_index", lambda i=index: i)
        parts.append(batch[parallel.host_slice(16)])
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    assert {len(p) for p in parts} == {4}


def test_two_processes_of_four_devices_train_as_one_of_eight(tmp_path):
    """2 x 4 devices, interrupted by a SIGTERM to process 1 and resumed by the commands
    the processes print, equals an uninterrupted 1 x 8 run."""
    run = tmp_path / "run"
    args = [f"--config={TINY_CONFIG_PATH}", f"--workdir={run}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
            f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]

    def start(stage, commands):
        return [
            Worker([sys.executable, "-c", ROW_TRACER, *command], tmp_path / f"{stage}{i}",
                   cwd=tmp_path,
                   env=worker_env(4, multiprocess=True,
                                  FJSPH_ROWS_LOG=str(tmp_path / f"rows-{stage}{i}.json")))
            for i, command in enumerate(commands)
        ]

    # 1. Both processes train; SIGTERM to process 1 once the first record is out.
    workers = start("first", [[LAUNCH, *args, f"--process_id={i}"] for i in range(2)])
    try:
        workers[0].wait_for(lambda: bool(train_records(run)), timeout=240)
        os.kill(workers[1].process.pid, signal.SIGTERM)
    finally:
        wait_all(workers, timeout=90)
    commands = []
    for i, w in enumerate(workers):
        assert w.returncode == 0, w.output()
        found = PREEMPTED.search(w.stdout())
        assert found and int(found.group(1)) == i, w.output()
        commands.append((int(found.group(2)), shlex.split(found.group(3))))
    step = commands[0][0]
    assert commands[1][0] == step, "the processes saved different steps"
    assert 2 <= step < TOTAL_STEPS, "the preemption did not land mid-run"
    assert "on 8 device(s) in 2 processes" in workers[0].stdout()

    # 2. The printed commands resume (with the row tracer in front, as before).
    workers = start("second", [command[1:] for _, command in commands])
    wait_all(workers, timeout=240)
    for w in workers:
        assert w.returncode == 0, w.output()
    assert f"from step {step} on 8 device(s)" in workers[0].stdout()
    assert "MAP on the test queries" in workers[0].stdout()
    assert "MAP on the test queries" not in workers[1].stdout()  # process 0 reports
    assert (run / "checkpoints" / str(TOTAL_STEPS) / "state" / "ocdbt.process_1").is_dir()

    # Each process loaded exactly its half of every global batch (read-ahead may load a
    # step past the preemption twice).
    batcher = EpochBatcher(NUM_TRAIN, 16, seed=0)
    for i in range(2):
        steps = set()
        for stage in ("first", "second"):
            for s, rows in json.loads((tmp_path / f"rows-{stage}{i}.json").read_text()):
                assert rows == batcher.indices(s)[8 * i: 8 * (i + 1)].tolist(), (stage, s)
                steps.add(s)
        assert steps == set(range(TOTAL_STEPS))

    # 3. The same run in this process on 8 devices.
    reference = tmp_path / "reference"
    expected = loop.train_and_evaluate(tiny_config(**OVERRIDES), str(reference))
    got, want = train_records(run), train_records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(
        range(2, TOTAL_STEPS + 1, 2))
    for a, b in zip(got, want):
        for key in ("loss", "contrastive", "similarity", "bank_similarity", "quantization",
                    "balance", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=5e-5, abs=5e-6), (a["step"], key)
    ckpt = Checkpointer(str(reference / "checkpoints"), max_to_keep=2, save_interval_steps=8)
    want_state = ckpt.restore_untyped(TOTAL_STEPS)[0]
    ckpt.close()
    ckpt = Checkpointer(str(run / "checkpoints"), max_to_keep=2, save_interval_steps=8)
    got_state = ckpt.restore_untyped(TOTAL_STEPS, like=want_state)[0]  # by 2 processes
    ckpt.close()
    finals = [jax.tree_util.tree_leaves_with_path(s) for s in (got_state, want_state)]
    assert len(finals[0]) == len(finals[1]) > 10
    for (path, a), (_, b) in zip(*finals):
        name = jax.tree_util.keystr(path)
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if "k_proj']['bias" in name:
            # Softmax ignores the key bias: its gradient is float noise that Adam's
            # g / sqrt(v) turns into tiny random steps (as in test_train.py).
            assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    results = json.loads((run / "results.json").read_text())
    for direction in ("i2t", "t2i"):
        assert results[direction]["map_all"] == pytest.approx(
            expected[direction]["map_all"], abs=1e-6)
