"""Preemption: a SIGTERM mid-run saves a checkpoint, exits 0 and prints the command that
resumes; that command ends with the results (parameters, metrics.jsonl) of an
uninterrupted run."""

import json
import os
import re
import shlex
import signal
import sys

import jax
import numpy as np

from fjsph_jax.training import loop
from fjsph_jax.training.checkpointing import Checkpointer
from test_multiprocess import Worker, launch_command, train_records, wait_all
from tiny import TINY_CONFIG_PATH, tiny_config

# The tiny FJSPH run on hand-crafted features (fast to compile), long enough to be
# interrupted: ~1 ms per step, so 400 steps leave the signal plenty of time to land.
OVERRIDES = {
    "train.mode": "frozen_encoder",
    "data.features": "handcrafted",
    "train.max_steps": 400,
    "train.log_every_steps": 3,  # the preemption step is rarely a log step: the checkpoint
    "train.checkpoint_every_steps": 1000,  # carries the open logging window
}


def _flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def _final_params(workdir, step):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2,
                        save_interval_steps=1000)
    assert ckpt.latest_step() == step
    state = ckpt.restore_untyped(step)[0]
    ckpt.close()
    return jax.tree_util.tree_leaves_with_path(state)


def test_sigterm_saves_exits_zero_and_the_printed_command_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    first = Worker(
        launch_command([f"--config={TINY_CONFIG_PATH}", f"--workdir={run}",
                        *_flags(OVERRIDES)]),
        tmp_path / "first", cwd=tmp_path,
    )
    try:
        first.wait_for(lambda: any(r["step"] >= 3 for r in train_records(run)), timeout=180)
        os.kill(first.process.pid, signal.SIGTERM)
    finally:
        wait_all([first], timeout=60)
    assert first.returncode == 0, first.output()
    found = re.search(r"preempted: process 0 saved step (\d+) in .*; resume with:\n  (.+)\n",
                      first.stdout())
    assert found, first.output()
    step, command = int(found.group(1)), shlex.split(found.group(2))
    assert 3 <= step < 400, "the signal did not land mid-run"
    assert command[0] == "python" and f"--workdir={run}" in command
    ckpt = Checkpointer(str(run / "checkpoints"), max_to_keep=2, save_interval_steps=1000)
    assert ckpt.latest_step() == step
    ckpt.close()
    assert not (run / "results.json").exists()

    second = Worker([sys.executable, *command[1:]], tmp_path / "second", cwd=tmp_path)
    wait_all([second], timeout=180)
    assert second.returncode == 0, second.output()
    assert f"from step {step}" in second.stdout()

    # The uninterrupted run, here on one device as the subprocesses.
    reference = tmp_path / "reference"
    expected = loop.train_and_evaluate(tiny_config(**OVERRIDES), str(reference),
                                       devices=jax.devices()[:1])
    resumed = json.loads((run / "results.json").read_text())
    for direction in ("i2t", "t2i"):
        assert resumed[direction]["map_all"] == expected[direction]["map_all"]
    got, want = train_records(run), train_records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(3, 400, 3)) + [400]
    # Bit for bit: the same programs on one device, the same batches and keys, and the
    # logging window that was open at the preemption restored from the checkpoint.
    for a, b in zip(got, want):
        for key in ("loss", "contrastive", "similarity", "quantization", "grad_norm"):
            assert a[key] == b[key], (a["step"], key)
    finals = _final_params(run, 400), _final_params(reference, 400)
    assert len(finals[0]) == len(finals[1]) > 10
    for (path, a), (_, b) in zip(*finals):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
