"""Which dataset a config names, loaded into a :class:`PairedDataset` with its splits.

``config.data.name`` selects the source: ``synthetic`` is generated in memory (the
embedded demo); the real benchmark datasets (``mirflickr``, ``nuswide``, ``coco``)
are built once from the files a user downloaded into ``config.data.manual_dir``
(:func:`fjsph_jax.data.tfds_builders.build_dataset`: layout detected from the files
present, rows cleaned, ArrayRecord written under ``config.data.data_dir``) and read
back with images resized to ``config.data.image_size``.

Optional ``config.data`` keys (defaults in brackets): ``data_dir`` [""] where builds are
cached ("" = ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); ``image_root`` [""] where
image paths of ``.mat`` / text layouts are resolved ("" = ``manual_dir``);
``min_tag_count`` [20] MIRFlickr's frequent-tag threshold; ``caption`` ["first"] which
COCO caption is the text ("first", "random", or an index); ``resize`` ["center_crop"] or
"squash"; ``split_protocol`` ["random"] "random" | "permutation" | "small" | "djsrh"
(:mod:`fjsph_jax.data.splits`; ``djsrh`` samples per label, so it reads the labels).
"""

from __future__ import annotations

import logging
import os

from fjsph_jax.data.dataset import PairedDataset, Splits
from fjsph_jax.data.files import MissingFilesError
from fjsph_jax.data.splits import config_splits, record_path, record_splits
from fjsph_jax.data.synthetic import make_synthetic_dataset

REAL_DATASETS = ("mirflickr", "nuswide", "coco")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a real dataset are not where the config says."""


def _get(data_config, key: str, default):
    value = (
        data_config.get(key, default)
        if hasattr(data_config, "get")
        else getattr(data_config, key, default)
    )
    return default if value is None else value


def build_from_config(data_config, *, overwrite: bool = False):
    """Build (or reuse) the real dataset ``data_config`` names; a BuiltDataset.

    Raises DatasetNotFoundError naming the missing directory or files.
    """
    from fjsph_jax.data.tfds_builders import build_dataset  # deferred: imports TFDS

    name = data_config.name
    manual_dir = _get(data_config, "manual_dir", "")
    if not manual_dir:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: config.data.manual_dir is empty. Download it and "
            "point --config.data.manual_dir at it; see docs/datasets.md for the files and layout."
        )
    if not os.path.isdir(manual_dir):
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: config.data.manual_dir={manual_dir!r} does not exist. "
            "Download it and point --config.data.manual_dir at it; see docs/datasets.md."
        )

    def build(rebuild: bool):
        try:
            return build_dataset(
                name,
                manual_dir,
                data_dir=_get(data_config, "data_dir", "") or None,
                image_root=_get(data_config, "image_root", ""),
                min_tag_count=_get(data_config, "min_tag_count", 20),
                overwrite=rebuild,
            )
        except MissingFilesError as error:
            raise DatasetNotFoundError(f"dataset {name!r} not found: {error}") from error

    return _on_process_zero_first(build, overwrite)


def _on_process_zero_first(build, overwrite: bool):
    """Process 0 builds; the others wait for it, then open the same build (the data dir
    must be shared between hosts). One process: just build."""
    import jax

    if jax.process_count() == 1:
        return build(overwrite)
    from jax.experimental import multihost_utils

    built = build(overwrite) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("fjsph_jax: dataset built")
    return built if built is not None else build(False)


def load_dataset(data_config, *, seed: int) -> PairedDataset:
    """Builds or reads the dataset that ``data_config.name`` names.

    Real datasets come back with images uint8 ``[N, S, S, 3]``, S = ``data_config.image_size``,
    and their split (by ``split_protocol``) recorded beside the build.

    Raises:
      DatasetNotFoundError: a real dataset whose files are missing; the message names
        the directory or files and points at docs/datasets.md.
      ValueError: an unknown name, or source files that disagree.
    """
    name = data_config.name
    if name == "synthetic":
        return make_synthetic_dataset(
            data_config.num_items, image_size=data_config.image_size, seed=seed
        )
    if name in REAL_DATASETS:
        from fjsph_jax.data.inmemory import read_paired_dataset

        built = build_from_config(data_config)
        logging.info("%s", built.summary())
        dataset = read_paired_dataset(
            built,
            image_size=data_config.image_size,
            resize_mode=_get(data_config, "resize", "center_crop"),
            caption=_get(data_config, "caption", "first"),
            seed=data_config.split_seed,
        )
        built_splits(data_config, built)
        return dataset
    raise ValueError(
        f"config.data.name={name!r} is unknown; allowed: 'synthetic', "
        + ", ".join(map(repr, REAL_DATASETS))
    )


def prepare_from_config(data_config, *, overwrite: bool = False) -> str:
    """Build (or reuse) the dataset, record its split, and describe both (for prepare_data).

    Returns a multi-line summary: the detected layout, rows kept and skipped per reason,
    the label names, where the build lives and the split sizes by the configured protocol.
    """
    built = build_from_config(data_config, overwrite=overwrite)
    protocol = _get(data_config, "split_protocol", "random") or "random"
    splits = built_splits(data_config, built)
    path = record_path(built.directory, protocol, splits, data_config.split_seed)
    sizes = splits.sizes()
    return (
        f"{built.summary()}\n"
        f"  split ({protocol}, seed {data_config.split_seed}): query {sizes['query']}, "
        f"database {sizes['database']}, train {sizes['train']}\n"
        f"  split recorded at {path}"
    )


def built_splits(data_config, built) -> Splits:
    """The split of a built dataset by ``data_config.split_protocol`` (seeded), recorded
    beside the build (:func:`fjsph_jax.data.splits.record_splits`)."""
    protocol = _get(data_config, "split_protocol", "random") or "random"
    labels = None
    if protocol == "djsrh":  # per-label sampling: the labels (cached beside the build)
        from fjsph_jax.data.captions_cache import captions_and_labels

        labels = captions_and_labels(built)[1]
    splits = config_splits(data_config, len(built), labels=labels)
    record_splits(built.directory, protocol, splits, data_config.split_seed)
    return splits


def load_splits(data_config, dataset: PairedDataset) -> Splits:
    """Query / database / train index sets by ``data_config.split_protocol`` (seeded)."""
    return config_splits(data_config, len(dataset), labels=dataset.labels)
