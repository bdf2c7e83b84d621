"""What a training run reads: splits, labels, tokenizer and a row loader of model inputs.

:func:`prepare_training_data` turns ``config.data`` into a :class:`TrainingData`. How rows
become model inputs is ``config.data.loader``:

* ``"memory"``: the dataset is decoded once into host memory (the synthetic scenes are
  generated there; a real build is decoded and resized up front) and texts are tokenised
  once; batches are gathers (:class:`fjsph_jax.data.loaders.ArrayRows`).
* ``"stream"``: a real dataset's ArrayRecord build is read batch by batch: JPEG decode,
  resize and tokenisation happen on grain's threads as the steps need them
  (:class:`fjsph_jax.data.pipeline.ExampleEncoder`), so memory does not grow with the
  dataset. Texts and labels (small) are read once up front, without decoding images,
  for the tokenizer's vocabulary and the label similarity.

Both give the same inputs for the same rows. A method that reads feature vectors
(JSPSH, JDSH, FJSPH in ``frozen_encoder`` mode) gets them from ``config.data.features``:
a ``.mat`` / ``.npz`` feature file (:mod:`fjsph_jax.data.feature_files`, its own splits),
``"handcrafted"`` (colour histograms and bag-of-words of the dataset's rows,
:mod:`fjsph_jax.data.handcrafted`), or, when empty, the towers, which encode every row once
(either loader feeds them; cached as ``<workdir>/features-<fingerprint>.npz``).

With ``config.eval.split = "validation"`` the queries are ``config.data.num_validation``
rows carved from the training set (:func:`fjsph_jax.data.splits.validation_splits`): tune
on those, report the test queries once.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from fjsph_jax import encoders as encoders_lib
from fjsph_jax import features
from fjsph_jax.configuration import LOADERS
from fjsph_jax.data.dataset import Splits
from fjsph_jax.data.loaders import ArrayRows, RowLoader
from fjsph_jax.data.tokenizer import WordTokenizer


class TrainingData(NamedTuple):
    """Everything a run reads, for all ``N`` rows of the dataset.

    Attributes:
      splits: query / database / train row indices.
      labels: uint8 ``[N, C]`` multi-hot labels.
      label_names: the C concept names.
      tokenizer: ``encode(texts, context_length) -> (ids, mask)``.
      vocab_size: the text tower's vocabulary size.
      load_rows: row loader, rows ``[B]`` -> model inputs ``[B, ...]`` (``images``,
        ``input_ids``, ``attention_mask``; or ``image_features``, ``text_features``).
      loader: "memory" or "stream" (how ``load_rows`` gets its rows), or "features".
      input_kind: "pixels" (``images``, ``input_ids``, ``attention_mask``) or "features"
        (``image_features`` [B, dI], ``text_features`` [B, dT]).
      feature_dims: ``(dI, dT)`` for features, else None.
      evaluation_split: "test" (the dataset's queries) or "validation" (queries carved
        from the training rows, :func:`fjsph_jax.data.splits.validation_splits`).
    """

    splits: Splits
    labels: np.ndarray
    label_names: list
    tokenizer: Any
    vocab_size: int
    load_rows: RowLoader
    loader: str
    input_kind: str = "pixels"
    feature_dims: tuple | None = None
    evaluation_split: str = "test"

    @property
    def num_items(self) -> int:
        return len(self.labels)


def _tokenizer(config, workdir: str, towers, train_texts: list[str]):
    """The checkpoint's tokenizer with pretrained towers, else a word tokenizer over the
    training texts (saved to ``<workdir>/tokenizer.json``)."""
    if towers is not None:
        from fjsph_jax import weights

        return towers.tokenizer or weights.require_tokenizer(config.init.checkpoint)
    tokenizer = WordTokenizer.from_texts(train_texts)
    if jax.process_index() == 0:
        tokenizer.save(os.path.join(workdir, "tokenizer.json"))
    return tokenizer


def evaluation_splits(config, splits: Splits) -> Splits:
    """``splits``, or with ``config.eval.split == "validation"`` validation queries carved from
    the training rows (``config.data.num_validation`` of them)."""
    if config.eval.get("split", "test") != "validation":
        return splits
    from fjsph_jax.data.splits import validation_splits

    return validation_splits(
        splits, config.data.get("num_validation", 0), config.data.split_seed
    )


def _in_memory(config, workdir: str, towers):
    from fjsph_jax.data.sources import load_dataset, load_splits

    dataset = load_dataset(config.data, seed=config.seed)
    splits = evaluation_splits(config, load_splits(config.data, dataset))
    tokenizer = _tokenizer(config, workdir, towers, [dataset.texts[i] for i in splits.train])
    input_ids, attention_mask = tokenizer.encode(dataset.texts, config.data.context_length)
    load_rows = ArrayRows(
        {"images": dataset.images, "input_ids": input_ids, "attention_mask": attention_mask}
    )
    return splits, dataset.labels, list(dataset.label_names), tokenizer, load_rows


def _streaming(config, workdir: str, towers):
    from fjsph_jax.data import sources
    from fjsph_jax.data.inmemory import read_texts_and_labels
    from fjsph_jax.data.pipeline import ExampleEncoder

    data = config.data
    if data.name not in sources.REAL_DATASETS:
        raise ValueError(
            f"config.data.loader='stream' reads a built dataset; config.data.name={data.name!r} "
            f"has none. Use config.data.loader='memory' or one of {sources.REAL_DATASETS}."
        )
    built = sources.build_from_config(data)
    logging.info("%s", built.summary())
    splits = evaluation_splits(config, sources.built_splits(data, built))
    texts, labels = read_texts_and_labels(built, caption=data.caption, seed=data.split_seed)
    tokenizer = _tokenizer(config, workdir, towers, [texts[i] for i in splits.train])
    load_rows = ExampleEncoder.from_config(
        data, built.data_source(), tokenizer, with_labels=False
    )
    return splits, labels, built.label_names, tokenizer, load_rows


def _feature_dataset(config):
    """The :class:`fjsph_jax.data.feature_files.FeatureDataset` ``config.data.features``
    names: ``"handcrafted"`` (colour histograms and bag-of-words of ``config.data.name``'s
    rows, with its splits) or a ``.mat`` / ``.npz`` file (its own tr / te splits)."""
    source = config.data.features
    if source == "handcrafted":
        from fjsph_jax.data.handcrafted import handcrafted_features
        from fjsph_jax.data.sources import load_dataset, load_splits

        dataset = load_dataset(config.data, seed=config.seed)
        return handcrafted_features(dataset, load_splits(config.data, dataset))
    from fjsph_jax.data.feature_files import read_feature_file

    return read_feature_file(source)


def _from_features(config) -> TrainingData:
    features_ = _feature_dataset(config)
    splits = evaluation_splits(config, features_.splits)
    arrays = {"image_features": features_.image_features,
              "text_features": features_.text_features}
    dims = (int(arrays["image_features"].shape[1]), int(arrays["text_features"].shape[1]))
    logging.info("features %s: image %d-d, text %d-d, splits %s", config.data.features,
                 *dims, splits.sizes())
    names = list(getattr(features_, "label_names", None) or
                 [f"label_{c}" for c in range(features_.labels.shape[1])])
    return TrainingData(splits, features_.labels, names, None, 0, ArrayRows(arrays),
                        "features", "features", dims,
                        config.eval.get("split", "test"))


def prepare_training_data(config, workdir: str, mesh, towers=None, *,
                          input_kind: str = "pixels") -> TrainingData:
    """Builds or reads the dataset ``config.data`` names and the loader of its model inputs.

    ``input_kind`` is what the method reads. ``"pixels"``: images and token ids (with
    pretrained ``towers`` the checkpoint's tokenizer and vocabulary are used).
    ``"features"``: feature vectors, from ``config.data.features`` (a feature file, or
    ``"handcrafted"``) or, when that is empty, from the towers, which encode every row once
    (cached in ``workdir``).
    """
    os.makedirs(workdir, exist_ok=True)
    if input_kind not in ("pixels", "features"):
        raise ValueError(f"input_kind={input_kind!r}; allowed: 'pixels', 'features'")
    if input_kind == "features" and config.data.get("features", ""):
        return _from_features(config)
    loader = config.data.get("loader", "memory")
    if loader not in LOADERS:
        raise ValueError(f"config.data.loader={loader!r} is not supported; allowed: {LOADERS}")
    prepare = _streaming if loader == "stream" else _in_memory
    splits, labels, label_names, tokenizer, load_rows = prepare(config, workdir, towers)
    vocab_size = towers.text.vocab_size if towers is not None else tokenizer.vocab_size
    split_name = config.eval.get("split", "test")
    if input_kind == "pixels":
        return TrainingData(splits, labels, label_names, tokenizer, vocab_size, load_rows,
                            loader, "pixels", None, split_name)
    num_items = len(labels)
    cache = os.path.join(
        workdir, f"features-{features.features_fingerprint(config, num_items)}.npz"
    )
    encoders = encoders_lib.build_encoders(config, vocab_size, seed=config.seed, towers=towers)
    arrays = features.cached_features(
        cache,
        lambda: features.compute_features(
            encoders,
            load_rows,
            num_items=num_items,
            image_mean=tuple(config.data.image_mean),
            image_std=tuple(config.data.image_std),
            batch_size=config.eval.batch_size,
            mesh=mesh,
        ),
    )
    dims = (int(arrays["image_features"].shape[1]), int(arrays["text_features"].shape[1]))
    return TrainingData(splits, labels, label_names, tokenizer, vocab_size, ArrayRows(arrays),
                        loader, "features", dims, split_name)
