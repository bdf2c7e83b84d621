"""Faults around a finished run: a resume with another config, a damaged newest checkpoint
(cut short, or overwritten with junk), a workdir that cannot hold a run. Nothing in a
workdir is ever lost (docs/errors.md).

One tiny run (frozen encoder on hand-crafted features: no towers) is trained once, in
process (:func:`train_and_evaluate`, the call behind launch/train.py, whose errors the
command line reports in one line: tests/test_bad_input_*.py drive it); each case works on a
copy of it.
"""
import hashlib
import json
import logging
import os
import shutil

import jax
import pytest

from fjsph_jax import cli
from fjsph_jax.training import workdir as workdir_lib
from fjsph_jax.training.checkpointing import CheckpointMismatchError
from fjsph_jax.training import loop
from tiny import tiny_config

CHEAP = {"train.mode": "frozen_encoder", "data.features": "handcrafted"}


def _config(**overrides):
    return tiny_config(**{**CHEAP, **overrides})


def train_and_evaluate(config, workdir):
    """The library call behind launch/train.py, on one device as the command line runs
    (one device compiles faster than the eight the tests simulate)."""
    return loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])


def _hashes(directory):
    """sha256 of every file under ``directory``, by relative path."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train_and_evaluate(_config(), str(workdir))
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.mark.parametrize("key, old, new", [
    ("bits", 16, 32),  # changes the state's shapes
    ("loss.eta", 0.3, 0.5),  # changes only the trajectory
])
def test_resume_with_another_config_names_the_keys_and_changes_nothing(run_copy, key, old,
                                                                       new):
    """A ResumeMismatchError is a ConfigError: the command line reports it in one line with
    exit status 2 (tests/test_bad_input_values.py drives launch/train.py to such an error)."""
    before = _hashes(run_copy)
    with pytest.raises(workdir_lib.ResumeMismatchError) as error:
        train_and_evaluate(_config(**{key: new}), str(run_copy))
    line = cli.one_line(error.value)
    assert line.startswith("ResumeMismatchError:")
    assert f"{key}: {old} in the run, {new} now" in line
    assert "new --workdir" in line and f"--config.{key}={old}" in line
    assert isinstance(error.value, cli.user_errors())
    assert _hashes(run_copy) == before  # config.json, checkpoints, metrics: byte for byte


def _resumes_from_step_4(run_copy, capfd, caplog):
    """Resumes ``run_copy`` (step 8 damaged): the run ends at step 8 again, one WARNING
    names the skipped step, and stderr stays short (no library traceback)."""
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(_config(), str(run_copy))
    stderr = capfd.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if "is damaged (" in r.getMessage()]
    (warning,) = warnings
    assert "checkpoint step 8" in warning and "resuming from step 4" in warning
    assert "\n" not in warning and len(warning) < 500
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 30, stderr[-3000:]
    assert any(name.startswith("8.corrupt-") for name in os.listdir(run_copy / "checkpoints"))
    with open(run_copy / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # each step once


def _array_files(run_copy, step):
    data_dir = run_copy / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d"
    return [data_dir / name for name in os.listdir(data_dir)]


def test_cut_short_newest_checkpoint_resumes_from_the_one_before(run_copy, capfd, caplog):
    for path in _array_files(run_copy, 8):  # a half-written save: every array file cut short
        with open(path, "r+b") as f:
            f.truncate(10)
    _resumes_from_step_4(run_copy, capfd, caplog)


def test_junk_newest_checkpoint_resumes_quietly_from_the_one_before(run_copy, capfd, caplog):
    for path in _array_files(run_copy, 8):  # same sizes, random bytes
        path.write_bytes(os.urandom(path.stat().st_size))
    _resumes_from_step_4(run_copy, capfd, caplog)


def test_checkpoint_without_its_metadata_is_refused_before_any_array(run_copy):
    os.remove(run_copy / "checkpoints" / "8" / "meta" / "metadata")
    (run_copy / "config.json").unlink()  # only the checkpoints' fingerprint can tell
    with pytest.raises(CheckpointMismatchError) as error:
        train_and_evaluate(_config(**{"loss.eta": 0.5}), str(run_copy))
    line = cli.one_line(error.value)
    assert "step 4" in line and "new --workdir" in line and "strict" not in line
    assert isinstance(error.value, cli.user_errors())


def test_workdir_that_is_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(workdir_lib.WorkdirError,
                       match=f"--workdir={target} exists and is not a directory"):
        train_and_evaluate(_config(), str(target))
    assert target.read_text() == "mine"


def test_workdir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(workdir_lib.WorkdirError, match="cannot be created: .*file is a file"):
        workdir_lib.check_workdir(str(tmp_path / "file" / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_workdir_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(workdir_lib.WorkdirError, match="is not writable"):
        workdir_lib.check_workdir(str(locked / "run"))


def test_a_run_that_fails_before_training_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "new-run"
    with pytest.raises(ValueError, match="missing.npz"):  # a bad value: before the workdir
        train_and_evaluate(_config(**{"data.features": str(tmp_path / "missing.npz")}),
                           str(workdir))
    assert not workdir.exists()
    with pytest.raises(FileNotFoundError, match="docs/datasets.md"):  # after it was made
        train_and_evaluate(_config(**{"data.name": "coco",
                                      "data.manual_dir": f"{tmp_path}/no"}), str(workdir))
    assert not workdir.exists()
