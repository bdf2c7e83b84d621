"""Validation of an experiment config before any work starts.

Every check names the key (``config.a.b``), the value it got and what is allowed, so a
bad command line fails in a second instead of after minutes of compilation.
"""

from __future__ import annotations

from typing import Any, Iterable

DATASETS = ("synthetic", "mirflickr", "nuswide", "coco")
MODELS = ("fjsph",)
TRAIN_MODES = ("end_to_end", "frozen_encoder")
INTERACTIONS = ("none", "transformer")
SIMILARITY_FORMS = ("mse", "likelihood")
DTYPES = ("float32", "bfloat16")
SPLIT_PROTOCOLS = ("random", "permutation", "small")
RESIZE_MODES = ("center_crop", "squash")
LOADERS = ("memory", "stream")


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message names the key."""


def _choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}"
        )


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def _in_range(key: str, value: float, low: float, high: float, *, high_open: bool) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} must lie in [{low}, {high}{bracket}")


def validate_config(config, num_devices: int) -> None:
    """Raises :class:`ConfigError` on the first bad value of ``config``.

    Args:
      config: the experiment ``ml_collections.ConfigDict`` (see configs/default.py).
      num_devices: devices in the training mesh (the global batch must split over them).
    """
    from fjsph_jax.models import registry  # deferred: keeps this module import-light

    _positive("config.bits", config.bits)
    _choice("config.data.name", config.data.name, DATASETS)
    _choice("config.model.name", config.model.name, MODELS)
    _choice("config.model.vision", config.model.vision, registry.VISION_PRESETS)
    _choice("config.model.text", config.model.text, registry.TEXT_PRESETS)
    _choice("config.model.interaction", config.model.interaction, INTERACTIONS)
    _choice("config.model.dtype", config.model.dtype, DTYPES)
    _choice("config.train.mode", config.train.mode, TRAIN_MODES)
    _choice("config.data.split_protocol", config.data.split_protocol, SPLIT_PROTOCOLS)
    _choice("config.data.resize", config.data.resize, RESIZE_MODES)
    loader = config.data.get("loader", "memory")
    _choice("config.data.loader", loader, LOADERS)
    if loader == "stream" and config.data.name == "synthetic":
        raise ConfigError(
            "config.data.loader='stream' reads a built dataset (mirflickr, nuswide, coco); "
            "the synthetic scenes are generated in memory: use config.data.loader='memory'"
        )
    _positive("config.data.read_threads", config.data.get("read_threads", 2))
    _positive("config.codes.updates_per_epoch", config.codes.get("updates_per_epoch", 1))
    caption = config.data.caption
    if caption not in ("first", "random") and not str(caption).isdigit():
        raise ConfigError(
            f"config.data.caption={caption!r} is not supported; allowed: 'first', 'random' "
            "or a caption index such as '2'"
        )
    _choice("config.loss.similarity_form", config.loss.similarity_form, SIMILARITY_FORMS)
    _in_range("config.model.mask_ratio", config.model.mask_ratio, 0.0, 1.0, high_open=True)
    _in_range("config.loss.eta", config.loss.eta, 0.0, 1.0, high_open=False)
    _in_range(
        "config.loss.similarity_floor", config.loss.similarity_floor, -1.0, 1.0, high_open=True
    )
    _positive("config.model.feature_dim", config.model.feature_dim)
    _positive("config.data.num_query", config.data.num_query)
    _positive("config.data.num_train", config.data.num_train)
    _positive("config.data.context_length", config.data.context_length)
    _positive("config.train.num_epochs", config.train.num_epochs)
    _positive("config.train.log_every_steps", config.train.log_every_steps)
    _positive("config.train.checkpoint_every_steps", config.train.checkpoint_every_steps)
    _positive("config.eval.batch_size", config.eval.batch_size)
    _positive("config.codes.num_sweeps", config.codes.num_sweeps)
    if config.train.learning_rate <= 0:
        raise ConfigError(f"config.train.learning_rate={config.train.learning_rate!r} must be > 0")

    batch = config.train.global_batch_size
    if not isinstance(batch, int) or batch <= 0 or batch % num_devices:
        raise ConfigError(
            f"config.train.global_batch_size={batch!r} must be a positive multiple of the "
            f"device count ({num_devices}); e.g. {max(1, num_devices) * 16}"
        )
    if batch > config.data.num_train:
        raise ConfigError(
            f"config.train.global_batch_size={batch} exceeds "
            f"config.data.num_train={config.data.num_train}"
        )

    if config.data.name == "synthetic":
        _positive("config.data.num_items", config.data.num_items)
        needed = config.data.num_query + config.data.num_train
        if needed > config.data.num_items:
            raise ConfigError(
                f"config.data.num_query + config.data.num_train = {needed} exceeds "
                f"config.data.num_items={config.data.num_items}"
            )

    ks = tuple(config.loss.cluster_ks)
    for i, k in enumerate(ks):
        _positive(f"config.loss.cluster_ks[{i}]", k)
        if k > config.data.num_train:
            raise ConfigError(
                f"config.loss.cluster_ks[{i}]={k} is larger than the number of training "
                f"items config.data.num_train={config.data.num_train}; allowed: 1..{config.data.num_train}"
            )
    weights = tuple(config.loss.cluster_weights)
    if weights:
        if len(weights) != len(ks):
            raise ConfigError(
                f"config.loss.cluster_weights has {len(weights)} entries but "
                f"config.loss.cluster_ks has {len(ks)}; give one weight per k or ()"
            )
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ConfigError(f"config.loss.cluster_weights={weights} must be >= 0 and sum to 1")
    if config.loss.eta > 0 and not ks:
        raise ConfigError("config.loss.eta > 0 needs at least one k in config.loss.cluster_ks")
