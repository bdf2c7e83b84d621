"""TFDS builders for the benchmark datasets: ArrayRecord files, no TensorFlow.

``build_dataset("mirflickr", manual_dir)`` detects the layout of the files a user holds
(:mod:`fjsph_jax.data.mirflickr`, ``nuswide``, ``coco``), cleans the rows
(:func:`fjsph_jax.data.layouts.clean_items`) and writes one TFDS split ``pairs`` of
ArrayRecord shards, in source order (shuffling disabled, so row ``i`` of the built
dataset is the ``i``-th kept source row). Each example is::

    image     JPEG bytes (the source file itself when it is a valid JPEG)
    captions  the row's texts joined by "\\n" (one for tags, several for COCO)
    labels    uint8 [C] multi-hot
    key       the row's id in the source ("im17", "COCO_val2014_000000000042", "row 16")
    index     int64, the row number i

The dataset's metadata (``metadata.json`` beside the shards) records the detected layout,
the rows read, kept and skipped per reason, the label names and notes. The builder config
name is a fingerprint of the dataset, layout, metadata files (paths, sizes, mtimes) and
options, so a different source never reuses another's build: ``<data_dir>/fjsph_<dataset>/
src_<fingerprint>/1.0.0``. Read it back with :meth:`BuiltDataset.data_source` (TFDS
``as_data_source``; images left encoded for the pipeline to decode).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import types

import numpy as np

from fjsph_jax.data import coco, mirflickr, nuswide
from fjsph_jax.data.files import SourceFiles
from fjsph_jax.data.layouts import ReadOptions, SourcePairs, clean_items, detect_layout

DATASET_MODULES: dict[str, types.ModuleType] = {
    mirflickr.NAME: mirflickr,
    nuswide.NAME: nuswide,
    coco.NAME: coco,
}
SPLIT = "pairs"
BUILD_VERSION = "1.0.0"


def _tfds():
    import tensorflow_datasets as tfds  # deferred: ~1 s to import

    return tfds


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def dataset_module(name: str) -> types.ModuleType:
    if name not in DATASET_MODULES:
        raise ValueError(
            f"dataset {name!r} is unknown; allowed: " + ", ".join(map(repr, DATASET_MODULES))
        )
    return DATASET_MODULES[name]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """What a build reads: the files, the detected layout and the read options."""

    dataset: str
    files: SourceFiles
    layout: object
    found: tuple[str, ...]
    options: ReadOptions

    def fingerprint(self) -> str:
        document = {
            "dataset": self.dataset,
            "layout": self.layout.name,
            "layout_detail": getattr(self.layout, "description", ""),
            "files": self.files.fingerprint(self.found),
            "root": self.files.root,
            "version": BUILD_VERSION,
            "image_root": os.path.abspath(self.options.image_root)
            if self.options.image_root
            else "",
            "min_tag_count": self.options.min_tag_count,
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]

    def read(self) -> SourcePairs:
        module = dataset_module(self.dataset)
        return self.layout.read(
            self.files, list(self.found), self.options, module.default_label_names
        )


def detect_source(dataset: str, manual_dir: str, options: ReadOptions) -> SourceSpec:
    """Index ``manual_dir`` and detect its layout (MissingFilesError if none fits)."""
    module = dataset_module(dataset)
    if not manual_dir:
        raise FileNotFoundError(
            f"no manual dir given for {dataset!r}.\n{module.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    files = SourceFiles(manual_dir)
    layout, found = detect_layout(
        files, module.LAYOUTS, instructions=module.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
    return SourceSpec(dataset, files, layout, tuple(found), options)


def _features(tfds):
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "captions": tfds.features.Text(),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "key": tfds.features.Text(),
            "index": np.int64,
        }
    )


def _builder_class(dataset: str):
    """The GeneratorBasedBuilder subclass of ``dataset`` (made once, not registered)."""
    if dataset in _BUILDER_CLASSES:
        return _BUILDER_CLASSES[dataset]
    tfds = _tfds()
    module = dataset_module(dataset)

    class PairsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(BUILD_VERSION)
        RELEASE_NOTES = {BUILD_VERSION: "Cleaned image-text-label pairs, JPEG bytes, ArrayRecord."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = module.MANUAL_DOWNLOAD_INSTRUCTIONS
        code_path = None  # no checksums file or package metadata to look up next to the code

        def __init__(
            self, *, source: SourceSpec | None = None, workers: int | None = None, **kwargs
        ):
            self._source = source
            self._workers = workers
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(module.__doc__ or "").strip(),
                features=_features(tfds),
                disable_shuffling=True,
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            if self._source is None:
                raise FileNotFoundError(
                    f"{self.name} is not built under {self.data_dir!r} and "
                    f"no source was given.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
            return {SPLIT: self._generate_examples()}

        def _generate_examples(self):
            pairs = self._source.read()
            kept, report = clean_items(pairs, workers=self._workers)
            for index, (item, data) in enumerate(kept):
                captions = "\n".join(" ".join(c.split()) for c in item.captions if c.strip())
                yield (
                    index,
                    {
                        "image": data,
                        "captions": captions,
                        "labels": item.labels,
                        "key": item.key,
                        "index": index,
                    },
                )
            if report.kept == 0:
                raise ValueError(
                    f"no usable rows in {self._source.files.root!r} "
                    f"({report.as_dict()}); check the files and the image root"
                )
            self.info.metadata.update(
                {
                    "dataset": dataset,
                    "report": report.as_dict(),
                    "label_names": list(pairs.label_names),
                    "notes": list(pairs.notes),
                    "manual_dir": self._source.files.root,
                    "image_root": self._source.options.image_root,
                    "min_tag_count": self._source.options.min_tag_count,
                }
            )

    PairsBuilder.__name__ = PairsBuilder.__qualname__ = f"Fjsph{dataset.capitalize()}"
    PairsBuilder.name = f"fjsph_{dataset}"
    _BUILDER_CLASSES[dataset] = PairsBuilder
    return PairsBuilder


_BUILDER_CLASSES: dict = {}


class _QuietTfdsNotices(logging.Filter):
    """Drops TFDS's notices about our per-source builder configs (expected, not warnings)."""

    _NOTICES = ("Using custom data configuration", "has no dataset_info.json")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self._NOTICES)


@dataclasses.dataclass
class BuiltDataset:
    """A built dataset on disk: its builder, directory and build metadata."""

    dataset: str
    builder: object
    directory: str
    metadata: dict
    built_now: bool

    @property
    def label_names(self) -> list[str]:
        return list(self.metadata["label_names"])

    @property
    def report(self) -> dict:
        return dict(self.metadata["report"])

    def __len__(self) -> int:
        return int(self.builder.info.splits[SPLIT].num_examples)

    def data_source(self, decode_images: bool = False):
        """Random-access TFDS data source of the ``pairs`` split; images stay JPEG bytes
        unless ``decode_images``. Examples are dicts (text fields as bytes)."""
        tfds = _tfds()
        decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
        return self.builder.as_data_source(split=SPLIT, decoders=decoders)

    def summary(self) -> str:
        """What was built: layout, rows kept and skipped per reason, where."""
        report = self.report
        skipped = ", ".join(f"{reason}: {n}" for reason, n in report["skipped"].items()) or "none"
        notes = "".join(f"\n  note: {note}" for note in self.metadata.get("notes", []))
        return (
            f"{self.dataset}: layout {report['layout']!r} in {self.metadata['manual_dir']}\n"
            f"  source rows {report['source_rows']}, kept {report['kept']}, "
            f"skipped {sum(report['skipped'].values())} ({skipped})\n"
            f"  {len(self.label_names)} labels: {', '.join(self.label_names)}\n"
            f"  built at {self.directory}{' (now)' if self.built_now else ' (cached)'}"
            f"{notes}"
        )


def build_dataset(
    dataset: str,
    manual_dir: str,
    *,
    data_dir: str | None = None,
    image_root: str = "",
    min_tag_count: int = 20,
    overwrite: bool = False,
    workers: int | None = None,
) -> BuiltDataset:
    """Build ``dataset`` from the files in ``manual_dir`` once, or reuse the existing build.

    Args:
      dataset: "mirflickr", "nuswide" or "coco".
      manual_dir: the folder holding the downloaded files (any accepted layout).
      data_dir: where built datasets live (default :func:`default_data_dir`).
      image_root: where image paths of .mat / text layouts are resolved ("" = manual_dir).
      min_tag_count: tag frequency threshold of the official MIRFlickr cleaning.
      overwrite: rebuild even if a build of the same source exists.
      workers: threads that read and check images (default: CPU count).

    Raises:
      MissingFilesError (a FileNotFoundError): no accepted layout, or its files are missing;
        the message names the files and gives the download instructions.
      ValueError: the layout's files disagree (row counts, label values).
    """
    if int(min_tag_count) != min_tag_count or min_tag_count < 1:
        raise ValueError(f"min_tag_count must be a positive integer, got {min_tag_count!r}")
    tfds = _tfds()
    options = ReadOptions(image_root=image_root or "", min_tag_count=int(min_tag_count))
    source = detect_source(dataset, manual_dir, options)
    config = tfds.core.BuilderConfig(
        name=f"src_{source.fingerprint()}",
        description=f"{dataset} from {source.files.root} ({source.layout.name} layout)",
    )
    quiet = _QuietTfdsNotices()
    logging.getLogger("absl").addFilter(quiet)
    try:
        builder = _builder_class(dataset)(
            source=source,
            workers=workers,
            data_dir=data_dir or default_data_dir(),
            config=config,
            file_format="array_record",
        )
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    built_now = overwrite or not builder.is_prepared()
    if built_now:
        mode = (
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        )
        logging.info(
            "building %s from %s (%s layout) into %s",
            dataset,
            source.files.root,
            source.layout.name,
            builder.data_dir,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=source.files.root, download_mode=mode
            )
        )
    metadata = dict(builder.info.metadata)
    return BuiltDataset(dataset, builder, os.fspath(builder.data_dir), metadata, built_now)
