"""Restartable training: the whole train state in an orbax ``CheckpointManager``.

A checkpoint at step ``s`` holds two items:

* ``state``: the train state pytree (parameters, optimiser state, code bank
  ``B``/``F``/``G``, step, RNG key), saved asynchronously by every process (each writes
  the shards it holds; replicated arrays once). A restore lays the arrays out by the
  target state's shardings, whatever mesh wrote them: a run of 8 devices resumes on 4
  (bank rows re-split over ``data``);
* ``meta``: JSON with the data position (the step: batches are a pure function of it),
  the open logging window (so metrics.jsonl continues exactly) and a fingerprint of the
  config, so resuming with different settings fails loudly.

Damaged step directories are skipped with a warning and moved aside
(:class:`Checkpointer`); the loop never saves a state whose steps were not all finite
(:mod:`fjsph_jax.training.guards`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(RuntimeError):
    """The workdir holds checkpoints of a run with a different configuration."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint of the workdir restores onto this run's state (shapes, dtypes)."""


def _agree(ok: bool) -> bool:
    """``ok`` on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(int(ok), np.int32))
    return bool(np.all(np.asarray(flags)))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _abstract_target(abstract_state: Any, shardings: Any = None) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying the shardings the restore lays arrays out by.

    From concrete arrays (their own shardings), or from ShapeDtypeStructs (``nnx.eval_shape``
    / ``jax.eval_shape`` drop shardings: pass ``shardings``, a matching pytree).
    """
    if shardings is not None:
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state, shardings,
        )

    def leaf(path, x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            raise ValueError(
                f"restore target {jax.tree_util.keystr(path)} has no sharding: pass the "
                "state's arrays, or shardings=... (eval_shape drops them)"
            )
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory`` (kept: ``max_to_keep``).

    Every process of a multi-process run constructs it and calls :meth:`save` and
    :meth:`restore` at the same steps: orbax writes each process's shards of the state
    (replicated arrays once, by process 0) and commits a step when all are on disk.

    A step directory orbax did not finish (``<step>.orbax-checkpoint-tmp-*``: a save cut
    short) is ignored and removed. A finished one that is damaged (files missing or
    unreadable, so it does not restore while an older one does) is skipped with a warning
    naming its step and moved aside to ``<step>.corrupt-<time>``; the run resumes from the
    newest checkpoint that restores, and will write that step again.
    """

    def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int):
        self.directory = os.path.abspath(directory)
        self._warn_unfinished()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def _warn_unfinished(self) -> None:
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if _TMP_MARK in name:
                logging.warning(
                    "checkpoint step %s in %s was not finished (%s, a save cut short): "
                    "skipping it", name.split(".", 1)[0], self.directory, name
                )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts an async save of ``state`` and ``meta`` at ``step``; returns whether it saved."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, abstract_state: Any, *, fingerprint: str,
                shardings: Any = None) -> tuple[Any, dict] | None:
        """Restores the newest checkpoint that restores, onto ``abstract_state``'s layout.

        The arrays land with the target's shardings, whatever the mesh that wrote them:
        a checkpoint of 8 devices restores onto 4 (bank rows re-split over the new mesh).

        Args:
          abstract_state: a pytree like the train state whose leaves are arrays or
            ``jax.ShapeDtypeStruct`` with ``sharding`` set.
          fingerprint: the config fingerprint the checkpoint must carry.
          shardings: optional pytree of shardings matching ``abstract_state`` (for
            ShapeDtypeStructs without them, as ``nnx.eval_shape`` returns).

        Returns:
          ``(state, meta)`` or None when there is no checkpoint yet.

        Raises:
          CheckpointMismatchError: the checkpoint is of another configuration.
          CheckpointRestoreError: checkpoints exist but none restores onto this state
            (nothing is moved aside then: the state changed, not the files).
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        target = _abstract_target(abstract_state, shardings)
        failed: list[tuple[int, str, bool]] = []  # (step, why, damaged files)
        for step in steps:
            damage = _structure_problem(os.path.join(self.directory, str(step)), step)
            restored, error = None, damage
            if damage is None:
                self._check_fingerprint(step, fingerprint)  # before any array is read
                try:
                    with _library_logs_quieted():  # the reason is logged once, below
                        restored = self._restore_step(step, target)
                except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many kinds)
                    error = _first_line(e)
            if _agree(error is None):
                break
            failed.append((step, error or "failed on another process", damage is not None))
        else:
            damaged = [s for s, _, bad_files in failed if bad_files]
            if len(damaged) < len(failed):
                step, why, _ = next(f for f in failed if not f[2])
                raise CheckpointRestoreError(
                    f"no checkpoint in {self.directory} restores onto this run's state; the "
                    f"newest, step {step}: {why[:500]}. A config or code change that alters "
                    "the state's shapes cannot resume: use a new --workdir"
                )
            self._set_aside(damaged)
            return None
        self._set_aside([s for s, _, _ in failed])
        meta = dict(restored["meta"])
        for bad, why, _ in failed:
            logging.warning(
                "checkpoint step %d in %s is damaged (%s): skipped, resuming from step %d",
                bad, self.directory, why, step,
            )
        logging.info("restored checkpoint at step %d from %s", step, self.directory)
        return restored["state"], meta

    def _check_fingerprint(self, step: int, fingerprint: str) -> None:
        """:class:`CheckpointMismatchError` unless step ``step``'s meta (already checked to
        parse) records ``fingerprint``; reads no array."""
        with open(os.path.join(self.directory, str(step), "meta", "metadata")) as f:
            meta = json.load(f)
        saved = meta.get("config_fingerprint") if isinstance(meta, dict) else None
        if saved != fingerprint:
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints of a run with another configuration "
                f"(step {step}: config fingerprint {saved!r}, this run {fingerprint!r}); "
                "nothing was changed. Use a new --workdir, or resume with the original config "
                "(its config.json, if the workdir has one, lists the values)"
            )

    def _restore_step(self, step: int, target: Any) -> dict:
        """``{"state", "meta"}`` of ``step`` laid out as ``target``.

        Arrays whose rows are padded to a multiple of the device count (``[N_pad, ...]``,
        split over ``data``: :func:`fjsph_jax.parallel.padded_num_rows`) have another
        length on another mesh (N = 60: 64 rows on 8 devices, 60 on 4). When such rows are
        the only difference, they are restored truncated or extended at the end: both
        lengths hold the same N real rows first (the config fingerprint fixes N), so only
        padding rows go or come (new ones zero, as ``parallel.pad_rows`` pads).
        """
        def restore(strict: bool):
            return self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target, strict=strict),
                    meta=ocp.args.JsonRestore(),
                ),
            )

        try:
            return restore(strict=True)
        except Exception:
            if not _only_padding_rows_differ(
                    os.path.join(self.directory, str(step), "state"), target):
                raise
        logging.info("checkpoint step %d: restoring row-padded arrays onto this mesh's "
                     "padding", step)
        return restore(strict=False)

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged step directories out of orbax's sight (process 0; all wait)."""
        if not steps:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                path = os.path.join(self.directory, str(step))
                if os.path.isdir(path):
                    os.replace(path, f"{path}.corrupt-{stamp}")
                    logging.warning("checkpoint step %d is damaged: moved to %s.corrupt-%s",
                                    step, path, stamp)
        _barrier("fjsph_checkpoint_set_aside")
        self._manager.reload()

    def restore_untyped(self, step: int, *, like: Any = None) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` as saved (nested dicts of arrays).

        For inspection and comparisons; training restores through :meth:`restore`. Without
        ``like`` the arrays land on the devices that saved them, which must exist here; a
        checkpoint of another topology (e.g. written by several processes) needs ``like``:
        a pytree of the same structure whose arrays' shapes and shardings are the target.
        """
        target = None if like is None else _abstract_target(like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# Loggers of the libraries a restore goes through. A damaged step makes them log the failure
# with its full traceback (hundreds of lines) although the run recovers; while one step is
# probed they only pass CRITICAL records, and the reason is logged once, in one line.
_LIBRARY_LOGGERS = ("absl", "orbax", "orbax.checkpoint", "tensorstore")
_REASON_CHARS = 200


@contextlib.contextmanager
def _library_logs_quieted():
    """Raises the library loggers (:data:`_LIBRARY_LOGGERS`) to CRITICAL for the block."""
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    """``Kind: the first line of the message``, at most :data:`_REASON_CHARS` characters
    (tensorstore's messages go on with a many-line spec of the array)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def _path_names(path) -> tuple[str, ...]:
    """A pytree key path as plain names (a NamedTuple field and a dict key alike)."""
    names = []
    for entry in path:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def _only_padding_rows_differ(state_dir: str, target: Any) -> bool:
    """Whether the saved arrays under ``state_dir`` differ from ``target`` only in the row
    padding of row-split arrays: the leading dimension of arrays split over their first
    axis, by less than the larger device count of the two meshes."""
    from etils import epath

    try:
        saved = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))
    except Exception:  # noqa: BLE001
        return False
    saved_tree = getattr(saved, "tree", saved)
    saved_leaves = {
        _path_names(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
    }
    differ = False
    for path, want in jax.tree_util.tree_flatten_with_path(target)[0]:
        have = saved_leaves.get(_path_names(path))
        if have is None or getattr(have, "shape", None) is None:
            return False
        have_shape, want_shape = tuple(have.shape), tuple(want.shape)
        if have_shape == want_shape:
            continue
        spec = getattr(want.sharding, "spec", None)
        if (len(have_shape) != len(want_shape) or not want_shape
                or have_shape[1:] != want_shape[1:] or not spec or spec[0] is None):
            return False
        saved_devices = int(np.prod(getattr(have.sharding, "shape", None) or [1]))
        devices = max(saved_devices, len(want.sharding.device_set))
        if abs(have_shape[0] - want_shape[0]) >= devices:
            return False
        differ = True
    return differ


_TMP_MARK = ".orbax-checkpoint-tmp"

# Files every finished step directory holds (orbax's layout for the items state, meta),
# and the JSON ones among them.
_REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt",
                   "meta/metadata")
_JSON_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")


def _structure_problem(path: str, step: int) -> str | None:
    """Why the step directory ``path`` is incomplete or unreadable, or None if it looks whole.

    Checks what a half-copied or truncated checkpoint loses first: the metadata files
    exist and parse, and the data position in ``meta`` is the directory's step. The array
    data itself is checked by restoring it.
    """
    for name in _REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name} is missing"
    for name in _JSON_FILES:
        try:
            with open(os.path.join(path, name)) as f:
                value = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"{name} is unreadable ({type(e).__name__})"
        if name == "meta/metadata" and isinstance(value, dict) and "step" in value:
            if int(value["step"]) != step:
                return f"meta/metadata records step {value['step']}"
    return None


# Keys that do not change the training trajectory, so changing them keeps a run resumable.
NON_TRAJECTORY_KEYS = (
    ("eval", "batch_size"),
    ("eval", "top_k"),
    ("eval", "precision_ns"),
    ("eval", "query_chunk"),
    ("eval", "map_convention"),
    ("train", "log_every_steps"),
    ("train", "checkpoint_every_steps"),
    ("train", "max_checkpoints_to_keep"),
    ("data", "loader"),  # memory and stream give identical batches
    ("data", "read_threads"),
    ("train", "tensorboard"),
    ("eval", "every_steps"),
)


def config_fingerprint(config) -> str:
    """A stable hash of everything in the config that changes the training trajectory."""
    import hashlib

    tree = config.to_dict()
    for path in NON_TRAJECTORY_KEYS:
        node = tree
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
