"""Mistakes in flags and config files: one line naming the flag or file and the fix, exit
status 2, no traceback; ``--traceback`` (or $FJSPH_TRACEBACK) shows it on request."""
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO_ROOT, "configs", "tiny.py")


def _launch(tool, *args, cwd, traceback_env=False):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("FJSPH_TRACEBACK", None)
    if traceback_env:
        env["FJSPH_TRACEBACK"] = "1"
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", tool), *args],
                          capture_output=True, text=True, env=env, timeout=240, cwd=str(cwd))


def _one_line(done):
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture
def bad_configs(tmp_path):
    (tmp_path / "syntax.py").write_text("def get_config(:\n    pass\n")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    (("--config=nope.py",), "--config=nope.py: no such config file"),
    (("--config=syntax.py",), "--config=syntax.py: the config file does not parse (line 1"),
    ((f"--config={TINY}", "--config.train.warmpu_steps=3"),
     "--config.train.warmpu_steps: the config has no key 'warmpu_steps' there; did you mean "
     "'warmup_steps'?"),
    ((f"--config={TINY}", "--config.jspsh.mu=3"),
     "--config.jspsh.mu: the config has no 'jspsh' section; config.jspsh.* keys belong to "
     "method 'jspsh'"),
    ((f"--config={TINY}", "--config.bits=abc"), "flag --config.bits=abc: invalid literal"),
    ((f"--config={TINY}", "--no_such_flag=1"), "Unknown command line flag 'no_such_flag'"),
])
def test_flag_and_config_file_mistakes(bad_configs, args, expected):
    line = _one_line(_launch("train.py", *args, "--workdir=run", cwd=bad_configs))
    assert line.startswith("error: UsageError: ") and expected in line
    assert not (bad_configs / "run").exists()


def test_traceback_on_request(bad_configs):
    args = (f"--config={TINY}", "--config.train.warmpu_steps=3", "--workdir=run")
    for done in (_launch("train.py", *args, "--traceback", cwd=bad_configs),
                 _launch("train.py", *args, cwd=bad_configs, traceback_env=True)):
        assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr


@pytest.mark.parametrize("tool, args, expected", [
    ("encode.py", ("--workdir=nowhere",), "nowhere"),
    ("search.py", ("--index=nowhere", "--text=a dog"), "nowhere"),
    ("prepare_data.py", (), "--dataset"),
])
def test_other_tools_report_mistakes_in_one_line(tmp_path, tool, args, expected):
    assert expected in _one_line(_launch(tool, *args, cwd=tmp_path))
