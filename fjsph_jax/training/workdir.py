"""Whether a workdir can take a run, checked before anything is written to it.

* :func:`check_workdir`: ``--workdir`` is a directory that can be written (or can be
  created); :class:`WorkdirError` naming it otherwise.
* :func:`check_resume`: a workdir that already holds a run (its ``config.json``) is resumed
  only by the same config. The two configs are compared key by key (flattened,
  ``a.b.c``), leaving out the keys that do not change the training trajectory
  (:data:`fjsph_jax.training.checkpointing.NON_TRAJECTORY_KEYS`); a difference raises
  :class:`ResumeMismatchError` naming every key with both values and the two ways forward,
  before any checkpoint is read and before anything in the workdir changes.
* :func:`removed_on_failure`: a workdir this run created is removed again when the run
  fails before training starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

from fjsph_jax.configuration import ConfigError
from fjsph_jax.training.checkpointing import NON_TRAJECTORY_KEYS

CONFIG_FILE = "config.json"
_MAX_LISTED = 8  # differing keys named in full; the rest are counted


class WorkdirError(ConfigError):
    """--workdir cannot hold a run: not a directory, or not writable."""


class ResumeMismatchError(ConfigError):
    """The workdir holds a run of another config; resuming would mix the two."""


def check_workdir(workdir: str) -> None:
    """:class:`WorkdirError` unless ``workdir`` is (or can become) a writable directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} exists and is not a directory; pass a new "
                           "or existing directory")
    existing = workdir
    while not os.path.exists(existing):  # the nearest ancestor that exists is created under
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not os.path.isdir(existing):
        raise WorkdirError(f"--workdir={workdir} cannot be created: {existing} is a file, "
                           "not a directory; pass another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise WorkdirError(f"--workdir={workdir} is not writable ({existing}: "
                           f"{error.strerror}); pass a directory you can write to") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and tuples are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _trajectory_keys(flat: dict[str, Any]) -> dict[str, Any]:
    skip = {".".join(path) for path in NON_TRAJECTORY_KEYS}
    return {k: v for k, v in flat.items() if k not in skip}


def config_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of every trajectory key that differs (``<absent>``
    for a key only one side has), sorted by key."""
    missing = "<absent>"
    old_flat, new_flat = _trajectory_keys(flatten(old)), _trajectory_keys(flatten(new))
    keys = sorted(set(old_flat) | set(new_flat))
    return [(k, old_flat.get(k, missing), new_flat.get(k, missing)) for k in keys
            if old_flat.get(k, missing) != new_flat.get(k, missing)]


def _flag_value(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def check_resume(config, workdir: str) -> None:
    """:class:`ResumeMismatchError` when ``workdir`` holds a run whose config differs from
    ``config`` in a key that changes training; nothing when it holds no run yet."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResumeMismatchError(
            f"{path} is unreadable ({type(error).__name__}), so this run cannot be checked "
            "against the one in the workdir; use a new --workdir") from None
    new = json.loads(config.to_json_best_effort())
    diffs = config_differences(old, new)
    if not diffs:
        return
    listed = ", ".join(f"{k}: {_flag_value(a)} in the run, {_flag_value(b)} now"
                       for k, a, b in diffs[:_MAX_LISTED])
    more = f" and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
    restore = " ".join(f"--config.{k}={_flag_value(a)}" for k, a, _ in diffs[:_MAX_LISTED]
                       if a != "<absent>")
    raise ResumeMismatchError(
        f"--workdir={workdir} holds a run of another config ({len(diffs)} key(s) differ: "
        f"{listed}{more}); nothing was changed. Train this config in a new --workdir, or "
        f"resume the run with its own values ({restore or 'the config in ' + path})"
    )


@contextlib.contextmanager
def removed_on_failure(workdir: str):
    """Creates ``workdir`` if it does not exist; if it did not and the block raises, removes
    it again, so a run that fails before training leaves no stray directory. An existing
    workdir is never touched.

    Every process decides for itself: on the shared file system of a multi-process run
    whichever process created the directory removes it (before, only process 0 did, and a
    directory that another process happened to create first was left behind); the others
    found it existing and leave it.
    """
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
