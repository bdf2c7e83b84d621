"""The CLI: bad config values fail fast with the key named and exit status 2."""
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, tmp_path):
    command = [sys.executable, os.path.join(REPO_ROOT, "launch", "train.py"),
               f"--workdir={tmp_path}", *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240,
                          cwd=str(tmp_path))  # not the repo root: works from anywhere


def test_bad_value_names_key_and_allowed_values(tmp_path):
    done = _launch("--config.model.mask_ratio=1.5", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "config.model.mask_ratio=1.5 must lie in [0.0, 1.0)" in done.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_dataset_and_missing_real_data(tmp_path):
    done = _launch("--config.data.name=imagenet", tmp_path=tmp_path)
    assert done.returncode == 2 and "'synthetic', 'mirflickr', 'nuswide', 'coco'" in done.stderr
    config = os.path.join(REPO_ROOT, "configs", "coco.py")
    done = _launch(f"--config={config}", f"--config.data.manual_dir={tmp_path}/nowhere",
                   "--config.init.from_scratch=True", tmp_path=tmp_path)
    assert done.returncode == 2 and "docs/datasets.md" in done.stderr


def test_real_dataset_config_refuses_random_towers_without_opt_in(tmp_path):
    """configs/mirflickr.py with no checkpoint would train ViT-B/16 from random weights at a
    fine-tuning learning rate: a one-line error that names both ways forward."""
    config = os.path.join(REPO_ROOT, "configs", "mirflickr.py")
    done = _launch(f"--config={config}", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "config.init.checkpoint is empty" in done.stderr
    assert "--config.init.checkpoint=PATH" in done.stderr
    assert "--config.init.from_scratch=True" in done.stderr
    assert "Traceback" not in done.stderr


def test_process_flags_come_together(tmp_path):
    """--coordinator_address / --num_processes / --process_id: all or none, checked before
    anything connects."""
    import pytest

    from fjsph_jax import parallel

    with pytest.raises(ValueError, match="missing: --num_processes, --process_id"):
        parallel.maybe_initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"--process_id=2 must lie in \[0, --num_processes=2\)"):
        parallel.maybe_initialize_distributed("127.0.0.1:1234", 2, 2)
    done = _launch("--coordinator_address=127.0.0.1:1234", "--process_id=0", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "error: ValueError: give --coordinator_address, --num_processes and --process_id " \
           "together (missing: --num_processes)" in done.stderr
    assert "Traceback" not in done.stderr


def test_prepare_data_offers_the_djsrh_protocol(tmp_path):
    """`prepare_data.py --split_protocol=djsrh` builds and records the per-label split."""
    from tiny import write_tiny_mirflickr

    write_tiny_mirflickr(tmp_path)
    command = [sys.executable, os.path.join(REPO_ROOT, "launch", "prepare_data.py"),
               "--dataset=mirflickr", f"--manual_dir={tmp_path / 'src'}",
               f"--data_dir={tmp_path / 'tfds'}", "--split_protocol=djsrh",
               "--num_query=8", "--num_train=16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [l for l in done.stdout.splitlines() if "split (djsrh, seed 0)" in l]
    assert "train 16" in line
    recorded = list((tmp_path / "tfds").rglob("djsrh-q*-t16-seed0.json"))
    assert len(recorded) == 1
