"""What every command-line tool (launch/*.py) shares: how a mistake is reported.

A user mistake (a config key, a file, a workdir, a flag) ends the tool with one line on
stderr, ``error: <Kind>: <what is wrong, which file or key, the fix>``, and exit status 2
(:data:`EXIT_BAD_INPUT`). A real bug keeps its Python traceback (exit status 1). ``--traceback``
(or the environment variable ``FJSPH_TRACEBACK=1``) shows the traceback of a user mistake too.

    from fjsph_jax import cli
    ...
    if __name__ == "__main__":
        cli.run(main)

:func:`run` wraps absl's ``app.run``: it parses the flags itself (so a config file that is
missing or does not import, an override of a key the config does not have, and a flag value
of the wrong type are reported in one line) and reports what :func:`is_user_error` calls a
user mistake from ``main`` in one line.

What counts as a user mistake (:func:`is_user_error`): the error types that only describe
bad input (:func:`user_errors`: ConfigError, the feature-file, image, UTF-8 and checkpoint
errors, missing files and runs, flag errors), and a plain ``ValueError`` only when one of
this repository's own checks raised it (the innermost frame of its traceback is a ``raise``
statement in ``fjsph_jax/``, ``launch/``, ``configs/`` or ``benchmarks/``). A
``ValueError`` from inside JAX, NumPy or another library (a shape mismatch, say) is a bug
in this code, however it was reached: it keeps its traceback and exit status 1.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags

EXIT_BAD_INPUT = 2
TRACEBACK_ENV = "FJSPH_TRACEBACK"

_TRACEBACK = flags.DEFINE_bool(
    "traceback",
    False,
    "Show the Python traceback of a user mistake (bad config, file, workdir) instead of the "
    f"one-line message; also ${TRACEBACK_ENV}=1. Real bugs always show theirs.",
)


class UsageError(ValueError):
    """A wrong flag or flag combination; the message names the flag and the fix."""


_RAISE = re.compile(r"(?:^|[:;]\s*)raise\b")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that only ever describe bad input: always reported in one line.

    :class:`~fjsph_jax.configuration.ConfigError` (and the workdir errors built on it),
    the feature-file, image and UTF-8 errors of the data readers, the weight importers'
    ``CheckpointError``, :class:`UsageError`; ``FileNotFoundError`` the missing datasets,
    runs and files. A plain ``ValueError`` is one only if :func:`raised_by_own_check`.
    """
    from fjsph_jax.configuration import ConfigError
    from fjsph_jax.data.feature_files import FeatureFileError
    from fjsph_jax.data.files import NotUtf8Error
    from fjsph_jax.data.images import UnreadableImageError
    from fjsph_jax.training.checkpointing import (CheckpointMismatchError,
                                                  CheckpointRestoreError)
    from fjsph_jax.weights.errors import CheckpointError

    return (ConfigError, FeatureFileError, NotUtf8Error, UnreadableImageError, CheckpointError,
            UsageError, FileNotFoundError, NotADirectoryError, PermissionError,
            CheckpointMismatchError, CheckpointRestoreError, app.UsageError, flags.Error)


def own_code() -> tuple[str, ...]:
    """Directories of this repository's code, each ending in a separator: the package (where
    it is installed), ``launch/``, ``configs/`` and ``benchmarks/`` beside it, and the
    directory of the running script (``launch/`` of a checkout when the package was
    installed elsewhere)."""
    package = os.path.dirname(os.path.realpath(__file__))
    roots = {package, *(os.path.join(os.path.dirname(package), name)
                        for name in ("launch", "configs", "benchmarks"))}
    if sys.argv and sys.argv[0]:
        roots.add(os.path.dirname(os.path.realpath(sys.argv[0])))
    return tuple(sorted(root + os.sep for root in roots))


def raised_by_own_check(error: BaseException, own_code_dirs: Sequence[str] | None = None) -> bool:
    """Whether the innermost frame of ``error``'s traceback is a ``raise`` statement in a
    file under one of ``own_code_dirs`` (default :func:`own_code`): a check this
    repository wrote, as opposed to an error from inside a library (or from a C function
    such as NumPy's reshape, whose innermost Python frame is the caller's line, not a
    ``raise``)."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    path = os.path.realpath(frame.tb_frame.f_code.co_filename)
    if not path.startswith(tuple(own_code() if own_code_dirs is None else own_code_dirs)):
        return False
    line = linecache.getline(path, frame.tb_lineno).split("#", 1)[0].strip()
    return bool(_RAISE.search(line))


def is_user_error(error: BaseException) -> bool:
    """A mistake in the user's input (one line, exit status 2) rather than a bug (the
    traceback, exit status 1): see the module docstring."""
    if isinstance(error, user_errors()):
        return True
    return isinstance(error, ValueError) and raised_by_own_check(error)


def show_tracebacks(argv: Sequence[str] | None = None) -> bool:
    """Whether ``--traceback`` (also before the flags are parsed) or $FJSPH_TRACEBACK asks
    for tracebacks."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if flags.FLAGS.is_parsed():
        return _TRACEBACK.value
    return any(arg in ("--traceback", "--traceback=true", "--traceback=True")
               for arg in (argv or sys.argv))


def one_line(error: BaseException | str) -> str:
    """``error`` as ``Kind: message`` on one line (newlines folded to spaces)."""
    if isinstance(error, str):
        return " ".join(error.split())
    message = " ".join(str(error).split())
    if isinstance(error, KeyError) and message[:1] in "'\"":  # KeyError quotes its message
        message = message[1:-1] if message[-1:] == message[:1] else message
    return f"{type(error).__name__}: {message}"


def fail(error: BaseException | str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Prints ``error: <one line>`` to stderr and exits with ``status``."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(status)


def _config_flag_names() -> list[str]:
    from ml_collections.config_flags import config_flags

    return [name for name, flag in flags.FLAGS._flags().items()
            if isinstance(flag, config_flags._ConfigFlag) and name == flag.name]


def _override_arg(argv: Sequence[str], flag: str, key: str) -> str | None:
    """The ``--<flag>.a.b=v`` argument whose path holds ``key``."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith(f"--{flag}.") and key in name[len(flag) + 3:].split("."):
            return name
    return None


def _method_names() -> tuple[str, ...]:
    from fjsph_jax import methods

    return tuple(methods.names())


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str:
    """A one-line message, naming the flag or file and the fix, for an error raised while
    absl parsed ``argv`` (config files load then, and their ``--config.a.b`` overrides
    apply)."""
    if isinstance(error, flags.Error):
        return f"{one_line(str(error))} (see --helpfull)"
    text = " ".join(str(error).split())
    for flag in _config_flag_names():
        path = next((arg.split("=", 1)[1] for arg in reversed(argv)
                     if arg.startswith(f"--{flag}=")), None)
        if isinstance(error, SyntaxError) and path:
            return (f"--{flag}={path}: the config file does not parse (line {error.lineno}: "
                    f"{error.msg}); fix it or pass another file")
        if isinstance(error, (KeyError, AttributeError)):
            key = re.search(r"'\\?'?([A-Za-z0-9_]+)", text)
            key = key.group(1) if key else ""
            arg = _override_arg(argv, flag, key)
            if arg is not None and key in _method_names():
                return (f"{arg}: the config has no {key!r} section; config.{key}.* keys "
                        f"belong to method {key!r} (start from its config, e.g. "
                        f"--{flag}=configs/{key}*.py) and have no effect on this config's method")
            if arg is not None:
                hint = re.search(r'Did you mean \\?"?([A-Za-z0-9_]+)', text)
                fix = (f"did you mean {hint.group(1)!r}?" if hint else
                       "check the spelling, or add the key to the config file")
                return (f"{arg}: the config has no key {key!r} there; {fix} (every key of a "
                        "config is listed in its file)")
        if isinstance(error, OSError) and path and not os.path.isfile(path.split(":")[0]):
            return (f"--{flag}={path}: no such config file (relative to {os.getcwd()}); pass "
                    "the path of a get_config() module, e.g. configs/tiny.py")
        if isinstance(error, OSError) and "config file" in text.lower():
            return (f"--{flag}={path}: the config file cannot be read ({text}); pass the path "
                    "of a get_config() module, e.g. configs/tiny.py")
        if path and isinstance(error, Exception):
            return (f"--{flag}={path}: loading the config failed ({type(error).__name__}: "
                    f"{text}); fix the file or the --{flag}.* overrides")
    return f"{type(error).__name__} while reading the flags: {text}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every config file loaded; one line + exit 2 on a mistake."""
    try:
        rest = flags.FLAGS(argv)
        for name in _config_flag_names():
            config = flags.FLAGS[name].value
            if config is not None:  # a file that failed to load gives a stand-in that raises
                config.keys  # noqa: B018
    except Exception as error:  # noqa: BLE001  (config files run arbitrary code)
        if show_tracebacks(argv):
            raise
        fail(f"UsageError: {describe_flag_error(error, argv)}")
    return rest


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run(main)``: user mistakes (flags, config files, what :func:`is_user_error`
    accepts from ``main``) end in one line and exit status 2; ``--traceback`` shows their
    traceback; anything else is a bug and keeps its traceback (exit status 1)."""

    def guarded(argv):
        try:
            main(argv)
        except Exception as error:  # noqa: BLE001  (bugs are re-raised below)
            if not is_user_error(error) or show_tracebacks():
                raise
            fail(error)

    app.run(guarded, flags_parser=_parse_flags)
