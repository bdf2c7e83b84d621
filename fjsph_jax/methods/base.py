"""The interface every hashing method offers to the shared loop and the evaluator.

A method is built once per run from the config, the run's data and the device mesh::

    method = MethodClass(config, data, mesh, towers)      # its model or solver, objective
    state  = method.init_state()                         # a pytree, placed on the mesh

and is then trained by :mod:`fjsph_jax.training.loop` in one of two ways:

* :class:`GradientMethod` (FJSPH, JDSH): ``total_steps`` jitted steps over global
  batches of training rows. The loop owns the batches, logging, checkpoints (the whole
  state pytree) and preemption; the method owns ``train_step`` and an optional
  ``before_step`` hook (FJSPH's discrete code-bank update).
* :class:`ClosedFormMethod` (JSPSH): one ``fit`` over the training rows. The loop saves
  the fitted state, so a rerun in the same workdir evaluates without refitting.

Either way the evaluator only calls ``encode(state, rows, role)``, which returns
``{"image": codes, "text": codes}`` for dataset rows, and reads ``code_format``:

* ``"pm1"``: int8 ``[M, K]`` in {-1, +1}, ranked by Hamming distance;
* ``"sparse"``: uint8 ``[M, D]`` in {0, 1} with exactly ``r = bits`` ones per row, ranked
  by inner product (JSPSH).

Nothing outside ``fjsph_jax.methods`` imports a method by name: the registry
(:mod:`fjsph_jax.methods`) maps ``config.method`` to its class.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

CODE_FORMATS = ("pm1", "sparse")
MAP_CONVENTIONS = ("top_k", "dcmh")
INPUT_KINDS = ("pixels", "features")


class Method(abc.ABC):
    """A hashing method built for one run (see the module docstring).

    Class attributes:
      name: the ``config.method`` value that selects it.
      title: how tables and plots name it.
      code_format: ``"pm1"`` or ``"sparse"``.
      map_convention: its paper's MAP@K convention (the default of ``config.eval``).
      supervised: whether training reads labels.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    code_format: ClassVar[str] = "pm1"
    map_convention: ClassVar[str] = "top_k"
    supervised: ClassVar[bool] = True

    def __init__(self, config, data, mesh, towers=None):
        self.config = config
        self.data = data
        self.mesh = mesh
        self.towers = towers

    # ---- checks and inputs (class level: they run before any work) -------------------

    @classmethod
    def validate_config(cls, config, num_devices: int) -> None:
        """Raises :class:`fjsph_jax.configuration.ConfigError` for a bad method setting."""

    @classmethod
    def input_kind(cls, config) -> str:
        """``"pixels"`` (images and token ids) or ``"features"`` (feature vectors)."""
        return "features"

    @classmethod
    def needs_towers(cls, config) -> bool:
        """True when the run computes with the image/text towers (loads
        ``config.init.checkpoint`` before the data, so checkpoint errors come first)."""
        return cls.input_kind(config) == "pixels" or not config.data.get("features", "")

    # ---- state and codes ------------------------------------------------------------

    @property
    def bits(self) -> int:
        """r: bits per code (``pm1``) or ones per code (``sparse``)."""
        return int(self.config.bits)

    @property
    def code_dim(self) -> int:
        """The length of a code vector: ``bits`` for pm1 codes, ``D`` for sparse codes."""
        return self.bits

    @abc.abstractmethod
    def init_state(self) -> Any:
        """The fresh state pytree, placed on ``self.mesh`` (the restore target too)."""

    @abc.abstractmethod
    def encode(self, state, rows: np.ndarray, *, role: str) -> dict[str, np.ndarray]:
        """Codes ``{"image": [M, code_dim], "text": [M, code_dim]}`` of dataset ``rows``.

        ``role`` is ``"query"`` or ``"database"``: a method whose database is its training
        codes (JSPSH) answers the two differently.
        """

    def describe(self) -> str:
        """One line for the start of a run."""
        return f"{self.title}, {self.bits} bits"


class GradientMethod(Method):
    """A method trained by jitted steps over global batches of training rows.

    Subclasses set ``total_steps`` and ``steps_per_epoch`` in ``__init__`` and implement
    :meth:`train_step`; the batch the loop passes holds the training rows' inputs
    (``data.load_rows``) plus ``index`` (int32 ``[B]``: positions in the training split).
    """

    total_steps: int
    steps_per_epoch: int

    def before_step(self, state, step: int):
        """Called before step ``step`` (0-based); returns the state to train on."""
        return state

    @abc.abstractmethod
    def train_step(self, state, batch: dict, step: int):
        """``(state, metrics)``: one optimisation step; ``metrics`` is a dict of scalars
        that includes ``"loss"`` (kept on device: the loop syncs once per log interval)."""


class ClosedFormMethod(Method):
    """A method fitted in one go on the training rows."""

    @abc.abstractmethod
    def fit(self, state) -> tuple[Any, dict]:
        """``(fitted state, summary)``: the summary (JSON scalars, e.g. per-iteration
        objective values) lands in ``metrics.jsonl``."""
