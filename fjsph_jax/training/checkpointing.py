"""Restartable training: the whole train state in an orbax ``CheckpointManager``.

A checkpoint at step ``s`` holds two items:

* ``state``: the train state pytree (parameters, optimiser state, code bank
  ``B``/``F``/``G``, step, RNG key), saved asynchronously with its shardings so a
  restore lands every array back on the mesh where it lives (bank rows split over
  ``data``);
* ``meta``: JSON with the data position (the step: batches are a pure function of it)
  and a fingerprint of the config, so resuming with different settings fails loudly.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(RuntimeError):
    """The workdir holds checkpoints of a run with a different configuration."""


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory`` (kept: ``max_to_keep``)."""

    def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster announced a preemption: save now and stop (all hosts agree)."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts an async save of ``state`` and ``meta`` at ``step``; returns whether it saved."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, abstract_state: Any, *, fingerprint: str) -> tuple[Any, dict] | None:
        """Restores the latest checkpoint onto ``abstract_state``'s shapes and shardings.

        Args:
          abstract_state: a pytree like the train state whose leaves are arrays or
            ``jax.ShapeDtypeStruct`` with ``sharding`` set.
          fingerprint: the config fingerprint the checkpoint must carry.

        Returns:
          ``(state, meta)`` or None when there is no checkpoint yet.
        """
        step = self.latest_step()
        if step is None:
            return None
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(restored["meta"])
        if meta.get("config_fingerprint") != fingerprint:
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints of a run with another configuration "
                f"(fingerprint {meta.get('config_fingerprint')!r}, this run {fingerprint!r}). "
                "Use a new --workdir, or the original config to resume."
            )
        logging.info("restored checkpoint at step %d from %s", step, self.directory)
        return restored["state"], meta

    def restore_untyped(self, step: int) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` as saved, without a target (nested dicts of arrays).

        For inspection and comparisons; training restores through :meth:`restore`.
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# Keys that do not change the training trajectory, so changing them keeps a run resumable.
_NON_TRAJECTORY_KEYS = (
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
)


def config_fingerprint(config) -> str:
    """A stable hash of everything in the config that changes the training trajectory."""
    import hashlib

    tree = config.to_dict()
    for path in _NON_TRAJECTORY_KEYS:
        node = tree
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
