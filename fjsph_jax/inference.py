"""A trained FJSPH run, loaded from its workdir, that turns texts and images into codes.

A training run (``fjsph_jax.training.loop.train_and_evaluate``) leaves in its workdir:

* ``config.json``: the experiment config;
* ``tokenizer.json``: the word tokenizer built from the training texts, absent when the
  towers (and their tokenizer) came from ``config.init.checkpoint``;
* ``checkpoints/<step>/state``: the train state; only its ``params`` are read here.

:meth:`TrainedModel.load` rebuilds the model from the config, restores the parameters
of the latest (or a chosen) checkpoint onto the local devices and jits one encoder per
modality (no FLIP masking, as in evaluation):

    image codes  = sign_pm(hash_image(image_tower((pixels / 255 - mean) / std)))   int8 [N, K]
    text codes   = sign_pm(hash_text(text_tower(input_ids, attention_mask)))        int8 [N, K]

``sign_pm(x) = +1 if x >= 0 else -1``. In ``end_to_end`` mode both towers are part of the
trained model. In ``frozen_encoder`` mode the trained model holds only the heads; the
towers are rebuilt exactly as training built them to compute its cached features (the
same ``config.seed``, or the same pretrained checkpoint), so a dataset item encodes to
the code evaluation gave it.

Images are uint8 ``[N, H, W, 3]`` arrays or image files (read with Pillow); both are
resized to ``config.data.image_size`` the way the dataset was (``config.data.resize``,
default ``center_crop``) unless they already have that size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fjsph_jax import encoders as encoders_lib
from fjsph_jax import parallel
from fjsph_jax.methods.fjsph import build
from fjsph_jax.binary import sign_pm
from fjsph_jax.data import images as images_lib
from fjsph_jax.data.preprocess import normalize_images
from fjsph_jax.data.tokenizer import WordTokenizer
from fjsph_jax.methods.fjsph.model import FJSPH

MODALITIES = ("image", "text")
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_DIR = "checkpoints"


class RunNotFoundError(FileNotFoundError):
    """A directory is not a training workdir, or holds no checkpoint yet."""


# ----------------------------------------------------------------------------------------
# Reading the workdir
# ----------------------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config a run saved as ``<workdir>/config.json``."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RunNotFoundError(
            f"{workdir!r} is not a training workdir: {path!r} does not exist. Pass the "
            "--workdir of a launch/train.py run."
        )
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path!r} is corrupt: {error}") from error


def load_tokenizer(workdir: str, config, towers=None):
    """The tokenizer training used: the checkpoint's with pretrained ``towers``, else the
    word tokenizer in ``<workdir>/tokenizer.json``."""
    if towers is not None:
        from fjsph_jax import weights  # deferred: the importers pull in transformers

        return towers.tokenizer or weights.require_tokenizer(config.init.checkpoint)
    path = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise RunNotFoundError(
            f"{path!r} does not exist: a run without config.init.checkpoint saves its "
            "tokenizer there when training starts; the workdir is incomplete."
        )
    return WordTokenizer.load(path)


def latest_step(workdir: str) -> int:
    """The step of the newest complete checkpoint in ``<workdir>/checkpoints``."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise RunNotFoundError(
            f"{directory!r} holds no checkpoint: train first (launch/train.py saves one "
            "every config.train.checkpoint_every_steps steps and at the end)."
        )
    return max(steps)


def restore_params(workdir: str, abstract_params: nnx.State, mesh, *, step: int | None = None):
    """The ``params`` of checkpoint ``step`` (default: the latest), replicated on ``mesh``.

    Only the parameters are read (the optimiser state and code bank stay on disk);
    ``abstract_params`` (an ``nnx.State`` of ``jax.ShapeDtypeStruct``) gives the tree
    and shapes, so a config that does not match the checkpoint fails here.

    Returns:
      ``(params, step)``.
    """
    step = latest_step(workdir) if step is None else int(step)
    path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step), "state")
    if not os.path.isdir(path):
        raise RunNotFoundError(f"checkpoint step {step} does not exist: no directory {path!r}")
    rep = parallel.replicated(mesh)
    target = {
        "params": jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract_params
        )
    }
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=rep), target)
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(
                path,
                args=ocp.args.PyTreeRestore(
                    item=target, restore_args=restore_args, partial_restore=True
                ),
            )
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"checkpoint {path!r} does not match the model that {workdir}/config.json "
                f"describes: {error}"
            ) from error
    return restored["params"], step


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------


def read_image_files(paths: Sequence[str], size: int, resize_mode: str = "center_crop"):
    """Image files -> uint8 ``[N, size, size, 3]`` (decoded with Pillow, resized by mode)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            raise FileNotFoundError(
                f"image file {os.fspath(path)!r} cannot be read: {error}"
            ) from error
        try:
            out[i] = images_lib.decode_resized(data, size, resize_mode)
        except images_lib.UnreadableImageError as error:
            raise ValueError(f"image file {os.fspath(path)!r} is not an image: {error}") from error
    return out


def prepare_images(images, size: int, resize_mode: str = "center_crop") -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` from images, which are one of

    * a uint8 array ``[N, H, W, 3]`` (resized when ``H, W != size``), or a list of
      ``[H, W, 3]`` uint8 arrays of any sizes;
    * a list of image file paths (see :func:`read_image_files`).
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise ValueError(
            f"images must be [N, H, W, 3] (a batch), got shape {images.shape}; use images[None] "
            "for one image."
        )
    if not isinstance(images, np.ndarray):
        images = list(images)
        if not images:
            raise ValueError("images is empty; pass at least one image")
        if all(isinstance(x, (str, os.PathLike)) for x in images):
            return read_image_files(images, size, resize_mode)
    rows = [np.asarray(x) for x in images]
    for i, row in enumerate(rows):
        if row.dtype != np.uint8 or row.ndim != 3 or row.shape[-1] != 3:
            raise ValueError(
                f"images[{i}] must be uint8 [H, W, 3] (RGB) or a file path, got "
                f"dtype={row.dtype} shape={row.shape}"
            )
    return np.stack(
        [
            row
            if row.shape[:2] == (size, size)
            else images_lib.resize_image(row, size, resize_mode)
            for row in rows
        ]
    )


# ----------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------


def make_modality_encoder(
    feature_graphdef, head_graphdef, modality: str, *, image_mean, image_std
) -> Callable:
    """Jitted ``(feature_params, head_params, batch) -> int8 [B, K]`` codes of one modality.

    ``batch`` holds ``images`` uint8 ``[B, H, W, 3]`` (image) or ``input_ids`` and
    ``attention_mask`` int32 ``[B, L]`` (text). The towers come from the feature model and
    the hash head from the head model (the same model in end-to-end mode).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    mean, std = tuple(image_mean), tuple(image_std)

    @jax.jit
    def encode(feature_params, head_params, batch):
        towers = nnx.merge(feature_graphdef, feature_params)
        heads = nnx.merge(head_graphdef, head_params)
        if modality == "image":
            pixels = normalize_images(batch["images"], mean, std)
            return sign_pm(heads.hash_image(towers.image_features(pixels)))
        features = towers.text_features(batch["input_ids"], batch["attention_mask"])
        return sign_pm(heads.hash_text(features))

    return encode


def encode_in_batches(fn: Callable, arrays: Mapping[str, np.ndarray], *, batch_size: int, mesh):
    """``fn(global_batch)`` over all rows of ``arrays`` (each ``[N, ...]``): ``[N, ...]`` numpy.

    Rows go in batches of ``min(batch_size, N)`` rounded up to a multiple of the device
    count (the last one padded by repeating its last row, so one compiled shape), split
    over the mesh's ``data`` axis.
    """
    num_rows = len(next(iter(arrays.values())))
    return parallel.map_batches(fn, arrays, np.arange(num_rows), batch_size=batch_size, mesh=mesh)


@dataclasses.dataclass
class TrainedModel:
    """A trained run ready to encode (make one with :meth:`load`).

    Attributes:
      workdir: the run's directory.
      config: its experiment config.
      tokenizer: its tokenizer (``encode(texts, context_length)``).
      step: the checkpoint step the parameters come from.
      mesh: the device mesh batches are split over.
    """

    workdir: str
    config: ml_collections.ConfigDict
    tokenizer: Any
    step: int
    mesh: Any
    _encoders: dict
    _feature_params: Any
    _head_params: Any

    @classmethod
    def load(cls, workdir: str, *, step: int | None = None, devices=None) -> TrainedModel:
        """Config, tokenizer and checkpoint ``step`` (default: latest) of a training run."""
        workdir = os.path.abspath(workdir)
        config = load_config(workdir)
        method = config.get("method", "fjsph")
        if method != "fjsph":
            raise ValueError(
                f"{workdir!r} holds a {method} run; encoding raw images and texts needs an "
                "FJSPH run (its towers). Methods on features code the feature rows their "
                "evaluation read."
            )
        if config.data.get("features", ""):
            raise ValueError(
                f"{workdir!r} trained FJSPH on the feature vectors of "
                f"config.data.features={config.data.features!r}, not on images and texts, so it "
                "cannot encode raw images or texts; train with --config.data.features='' for that"
            )
        towers = encoders_lib.load_pretrained_towers(config)
        tokenizer = load_tokenizer(workdir, config, towers)
        vocab_size = towers.text.vocab_size if towers is not None else tokenizer.vocab_size
        end_to_end = config.train.mode == "end_to_end"
        mesh = parallel.make_mesh(devices)
        model_config = build.model_config(
            config, vocab_size, with_encoders=end_to_end, towers=towers
        )
        abstract = nnx.eval_shape(
            lambda: FJSPH(
                model_config, rngs=nnx.Rngs(config.seed), dtype=encoders_lib.compute_dtype(config)
            )
        )
        head_graphdef, abstract_params = nnx.split(abstract)
        head_params, step = restore_params(workdir, abstract_params, mesh, step=step)
        if end_to_end:
            feature_graphdef, feature_params = head_graphdef, head_params
        else:  # the encoder model prepare_training_data builds for the cached features
            towers_model = encoders_lib.build_encoders(
                config, vocab_size, seed=config.seed, towers=towers
            )
            feature_graphdef, feature_params = nnx.split(towers_model)
            feature_params = parallel.put_replicated(feature_params, mesh)
        encoders = {
            m: make_modality_encoder(
                feature_graphdef,
                head_graphdef,
                m,
                image_mean=config.data.image_mean,
                image_std=config.data.image_std,
            )
            for m in MODALITIES
        }
        return cls(workdir, config, tokenizer, step, mesh, encoders, feature_params, head_params)

    @property
    def params(self) -> nnx.State:
        """The trained model's parameters (restored from the checkpoint, replicated)."""
        return self._head_params

    @property
    def bits(self) -> int:
        """K, the code length."""
        return int(self.config.bits)

    @property
    def image_size(self) -> int:
        """S: images are encoded at ``S x S``."""
        return int(self.config.data.image_size)

    def _batch_size(self, batch_size: int | None) -> int:
        size = self.config.eval.batch_size if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {size!r}")
        return int(size)

    def _run(self, modality: str, arrays: Mapping[str, np.ndarray], batch_size) -> np.ndarray:
        encoder = self._encoders[modality]
        return encode_in_batches(
            lambda batch: encoder(self._feature_params, self._head_params, batch),
            arrays,
            batch_size=self._batch_size(batch_size),
            mesh=self.mesh,
        ).astype(np.int8)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Codes of ``texts`` (N captions): int8 ``[N, K]`` in {-1, +1}."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty; pass at least one text")
        input_ids, attention_mask = self.tokenizer.encode(texts, self.config.data.context_length)
        return self._run(
            "text", {"input_ids": input_ids, "attention_mask": attention_mask}, batch_size
        )

    def encode_images(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Codes of images (uint8 ``[N, H, W, 3]``, arrays or file paths; see
        :func:`prepare_images`): int8 ``[N, K]`` in {-1, +1}."""
        resize_mode = self.config.data.get("resize", None) or "center_crop"
        pixels = prepare_images(images, self.image_size, resize_mode)
        return self._run("image", {"images": pixels}, batch_size)

    def encode_rows(
        self, modality: str, source, rows, *, batch_size: int | None = None
    ) -> np.ndarray:
        """Codes of dataset ``rows`` read from ``source`` (a row loader such as the streamed
        :class:`fjsph_jax.data.pipeline.ExampleEncoder`, or a mapping of arrays) giving
        ``images`` (uint8, at the model's size) or ``input_ids`` / ``attention_mask``:
        int8 ``[len(rows), K]``. Batches are loaded ahead on threads, so a dataset too
        large for memory is encoded without holding it."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        encoder = self._encoders[modality]
        return parallel.map_batches(
            lambda batch: encoder(self._feature_params, self._head_params, batch),
            source,
            np.asarray(rows),
            batch_size=self._batch_size(batch_size),
            mesh=self.mesh,
        ).astype(np.int8)

    def encode(self, modality: str, items, *, batch_size: int | None = None) -> np.ndarray:
        """:meth:`encode_images` or :meth:`encode_texts` by ``modality`` ('image' | 'text')."""
        if modality == "image":
            return self.encode_images(items, batch_size=batch_size)
        if modality == "text":
            return self.encode_texts(items, batch_size=batch_size)
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
