"""fjsph_jax/training/workdir.py: removed_on_failure cleans up only what this process
created (check_workdir and check_resume are exercised in tests/test_faults_resume.py)."""

import pytest

from fjsph_jax.training import workdir as workdir_lib


def test_a_workdir_this_run_created_is_removed_when_the_run_fails(tmp_path):
    run = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="before training"):
        with workdir_lib.removed_on_failure(str(run)):
            assert run.is_dir()
            (run / "features.npz").write_bytes(b"partial")
            raise RuntimeError("failed before training")
    assert not run.exists()


def test_an_existing_workdir_is_never_removed_and_success_keeps_a_new_one(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        with workdir_lib.removed_on_failure(str(existing)):
            raise ValueError("bad value")
    assert (existing / "config.json").read_text() == "{}"
    fresh = tmp_path / "fresh"
    with workdir_lib.removed_on_failure(str(fresh)):
        pass
    assert fresh.is_dir()


def test_every_process_removes_the_directory_it_created(tmp_path, monkeypatch):
    # on a shared file system process 1 may be the one that creates the directory
    monkeypatch.setattr("jax.process_index", lambda: 1)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with workdir_lib.removed_on_failure(str(run)):
            raise KeyboardInterrupt
    assert not run.exists()
