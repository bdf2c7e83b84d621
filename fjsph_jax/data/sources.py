"""Which dataset a config names, loaded into a :class:`PairedDataset` with its splits.

``config.data.name`` selects the source: ``synthetic`` is generated in memory (the
embedded demo); the real benchmark datasets (``mirflickr``, ``nuswide``, ``coco``)
are read from the files a user downloaded into ``config.data.manual_dir``.
"""

from __future__ import annotations

import os

from fjsph_jax.data.dataset import PairedDataset, Splits, make_splits
from fjsph_jax.data.synthetic import make_synthetic_dataset

REAL_DATASETS = ("mirflickr", "nuswide", "coco")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a real dataset are not where the config says."""


def load_dataset(data_config, *, seed: int) -> PairedDataset:
    """Builds or reads the dataset that ``data_config.name`` names.

    Raises:
      DatasetNotFoundError: a real dataset whose files are missing; the message names
        the directory and points at docs/datasets.md.
    """
    name = data_config.name
    if name == "synthetic":
        return make_synthetic_dataset(
            data_config.num_items, image_size=data_config.image_size, seed=seed
        )
    if name in REAL_DATASETS:
        manual_dir = data_config.manual_dir
        where = (
            f"config.data.manual_dir={manual_dir!r} does not exist"
            if manual_dir and not os.path.isdir(manual_dir)
            else "config.data.manual_dir is empty"
            if not manual_dir
            else f"no reader for {name!r} files in {manual_dir!r} is available yet"
        )
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: {where}. Download it and point "
            f"--config.data.manual_dir at it; see docs/datasets.md for the files and layout."
        )
    raise ValueError(
        f"config.data.name={name!r} is unknown; allowed: 'synthetic', "
        + ", ".join(map(repr, REAL_DATASETS))
    )


def load_splits(data_config, dataset: PairedDataset) -> Splits:
    """Query / database / train index sets by the field's protocol (seeded)."""
    return make_splits(
        len(dataset), data_config.num_query, data_config.num_train, data_config.split_seed
    )
