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

Both give the same inputs for the same rows. In ``frozen_encoder`` mode either loader
feeds the towers once, and training then reads the cached features
(``<workdir>/features-<fingerprint>.npz``) from memory.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from fjsph_jax import build, features
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
      loader: "memory" or "stream" (how ``load_rows`` gets its rows).
    """

    splits: Splits
    labels: np.ndarray
    label_names: list
    tokenizer: Any
    vocab_size: int
    load_rows: RowLoader
    loader: str

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


def _in_memory(config, workdir: str, towers):
    from fjsph_jax.data.sources import load_dataset, load_splits

    dataset = load_dataset(config.data, seed=config.seed)
    splits = load_splits(config.data, dataset)
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
    splits = sources.built_splits(data, built)
    texts, labels = read_texts_and_labels(built, caption=data.caption, seed=data.split_seed)
    tokenizer = _tokenizer(config, workdir, towers, [texts[i] for i in splits.train])
    load_rows = ExampleEncoder.from_config(
        data, built.data_source(), tokenizer, with_labels=False
    )
    return splits, labels, built.label_names, tokenizer, load_rows


def prepare_training_data(config, workdir: str, mesh, towers=None) -> TrainingData:
    """Builds or reads the dataset ``config.data`` names and the loader of its model inputs.

    With pretrained ``towers`` the checkpoint's tokenizer and vocabulary are used. In
    ``frozen_encoder`` mode the towers encode every row once (cached in ``workdir``) and the
    loader serves the features.
    """
    os.makedirs(workdir, exist_ok=True)
    loader = config.data.get("loader", "memory")
    if loader not in LOADERS:
        raise ValueError(f"config.data.loader={loader!r} is not supported; allowed: {LOADERS}")
    prepare = _streaming if loader == "stream" else _in_memory
    splits, labels, label_names, tokenizer, load_rows = prepare(config, workdir, towers)
    vocab_size = towers.text.vocab_size if towers is not None else tokenizer.vocab_size
    if config.train.mode == "frozen_encoder":
        num_items = len(labels)
        cache = os.path.join(
            workdir, f"features-{features.features_fingerprint(config, num_items)}.npz"
        )
        encoders = build.build_model(
            config, vocab_size, with_encoders=True, seed=config.seed, towers=towers
        )
        load_rows = ArrayRows(
            features.cached_features(
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
        )
    return TrainingData(splits, labels, label_names, tokenizer, vocab_size, load_rows, loader)
