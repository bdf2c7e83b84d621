"""Deterministic shuffled batches over the training rows.

The batch of step ``s`` is a pure function of ``(seed, s)``: epoch ``e = s // E`` with
``E = N // B`` steps per epoch (the last partial batch of an epoch is dropped) uses the
permutation ``perm_e = Generator(seed, e).permutation(N)`` and takes rows
``perm_e[(s mod E) B : (s mod E + 1) B]``. So the data position saved in a checkpoint
is just the step, and a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_items: int) -> np.ndarray:
    """``perm_e``: the read-only permutation of ``range(num_items)`` for ``epoch``.

    Cached (the last few epochs), so consecutive steps do not redraw it; safe to call from
    several threads (grain's readers do): a race at most computes it twice.
    """
    permutation = np.random.default_rng([seed, epoch]).permutation(num_items)
    permutation.flags.writeable = False
    return permutation


class EpochBatcher:
    """Global-batch row indices for any training step, ``[B]`` int64 in ``[0, N)``.

    Stateless apart from its settings, so threads may call :meth:`indices` concurrently.
    """

    def __init__(self, num_items: int, global_batch_size: int, seed: int):
        if global_batch_size <= 0 or global_batch_size > num_items:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be in [1, {num_items}]"
                " (the number of training items)"
            )
        self.num_items = num_items
        self.batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = num_items // global_batch_size

    def indices(self, step: int) -> np.ndarray:
        epoch, within = divmod(int(step), self.steps_per_epoch)
        start = within * self.batch_size
        return epoch_permutation(self.seed, epoch, self.num_items)[start : start + self.batch_size]
