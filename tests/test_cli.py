"""fjsph_jax/cli.py: which errors are the user's mistake (one line, exit status 2) and which
are bugs (traceback, exit status 1), decided by the error's type and where it was raised."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fjsph_jax import cli
from fjsph_jax.configuration import ConfigError
from fjsph_jax.models import layers

HERE = (os.path.dirname(os.path.realpath(__file__)) + os.sep,)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caught(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001
        return error
    raise AssertionError("no error raised")


def _one_line_check():
    raise ValueError("a check of ours")


def _multi_line_check(value):
    if value < 0:
        raise ValueError(
            f"value={value} must be >= 0; "
            "pass a non-negative one"
        )


def _numpy_c_error():
    return np.zeros(3).reshape(2, 2)  # ValueError from C: the innermost frame is this line


def _numpy_python_error():
    return np.linspace(0.0, 1.0, -1)  # ValueError raised inside numpy's Python code


def test_a_raise_statement_in_own_code_is_a_check_and_anything_else_is_not():
    assert cli.raised_by_own_check(_caught(_one_line_check), HERE)
    assert cli.raised_by_own_check(_caught(lambda: _multi_line_check(-1)), HERE)
    assert not cli.raised_by_own_check(_caught(_numpy_c_error), HERE)
    assert not cli.raised_by_own_check(_caught(_numpy_python_error), HERE)
    # the same raise, in a file outside the directories given, is not ours
    assert not cli.raised_by_own_check(_caught(_one_line_check), ("/nonexistent/",))
    assert not cli.raised_by_own_check(ValueError("never raised"), HERE)


def test_is_user_error_by_type_and_by_origin():
    # the package's own checks (a raise in fjsph_jax/) are user mistakes by default
    error = _caught(lambda: layers.activation("relu6"))
    assert isinstance(error, ValueError) and cli.is_user_error(error)
    assert cli.is_user_error(ConfigError("model.bits=0 must be positive"))  # by type, wherever
    assert cli.is_user_error(FileNotFoundError("no such file"))
    # a ValueError from inside a library, reached from any code, is a bug
    assert not cli.is_user_error(_caught(_numpy_python_error))
    assert not cli.is_user_error(RuntimeError("boom")) and not cli.is_user_error(KeyError("k"))
    assert all(issubclass(kind, BaseException) for kind in cli.user_errors())


SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from fjsph_jax import cli

    def main(argv):
        if os.environ["MODE"] == "check":
            raise ValueError("--size=-1 must be >= 1; pass a positive size")
        np.linspace(0.0, 1.0, -1)

    cli.run(main)
""")


@pytest.mark.parametrize("mode", ["check", "bug"])
def test_run_prints_one_line_for_a_check_and_the_traceback_for_a_bug(tmp_path, mode):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT.format(repo=REPO))
    env = dict(os.environ, MODE=mode)
    env.pop(cli.TRACEBACK_ENV, None)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    if mode == "check":
        assert done.returncode == cli.EXIT_BAD_INPUT, done.stderr
        assert done.stderr.strip() == "error: ValueError: --size=-1 must be >= 1; pass a positive size"
    else:
        assert done.returncode == 1, done.stderr
        assert "Traceback" in done.stderr and "linspace" in done.stderr
        assert "error: ValueError" not in done.stderr


def test_traceback_flag_shows_the_traceback_of_a_check(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT.format(repo=REPO))
    done = subprocess.run([sys.executable, str(script), "--traceback"], env=dict(os.environ, MODE="check"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "--size=-1" in done.stderr
