"""Validation of an experiment config before any work starts.

Every check names the key (``config.a.b``), the value it got and what is allowed, so a
bad command line fails in a second instead of after minutes of compilation.

:func:`validate_config` checks what every method shares (``config.method``, ``bits``,
``config.data``, ``config.eval``), then asks the method ``config.method`` names
(:mod:`fjsph_jax.methods`) to check its own keys; methods trained by steps also call
:func:`validate_training` for ``config.train``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import os
from typing import Any, Iterable

DATASETS = ("synthetic", "mirflickr", "nuswide", "coco")
SPLIT_PROTOCOLS = ("random", "permutation", "small", "djsrh")
RESIZE_MODES = ("center_crop", "squash")
LOADERS = ("memory", "stream")
EVAL_SPLITS = ("test", "validation")
MAP_CONVENTIONS = ("top_k", "dcmh")
FEATURE_FILE_SUFFIXES = (".mat", ".npz")


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message names the key."""


def choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}"
        )


def positive(key: str, value: Any) -> None:
    """ConfigError unless ``value`` is a positive int (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def in_range(key: str, value: float, low: float, high: float, *, high_open: bool) -> None:
    """ConfigError unless ``low <= value < high`` (``high_open``) or ``<= high``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        low <= value < high if high_open else low <= value <= high
    )
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} must lie in [{low}, {high}{bracket}")


def non_negative(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key}={value!r} must be a number >= 0")


def positive_number(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a number > 0")


def finite(key: str, value: Any) -> None:
    """ConfigError unless ``value`` is a finite int or float (not a bool, NaN or inf)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value):
        raise ConfigError(f"{key}={value!r} must be a finite number")


def require_keys(section, prefix: str, keys: Iterable[str], start_from: str) -> None:
    """ConfigError naming the first of ``keys`` missing from ``section`` (``prefix.key``)."""
    for key in keys:
        if key not in section:
            raise ConfigError(f"{prefix}.{key} is missing: start from {start_from}")


def require_features(config, title: str) -> None:
    """ConfigError unless ``config.data.features`` names feature vectors (a method ``title``
    that hashes features, not pixels, needs them)."""
    if not config.data.get("features", ""):
        raise ConfigError(
            f"config.data.features is empty, but {title} hashes feature vectors: give "
            "--config.data.features=PATH (a .mat / .npz feature file, e.g. written by "
            "`python launch/encode.py --features=PATH --config=...`) or "
            "--config.data.features=handcrafted (colour histograms + bag of words)"
        )


def integer(key: str, value: Any, minimum: int) -> None:
    """ConfigError unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def boolean(key: str, value: Any) -> None:
    """ConfigError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be True or False")


def string(key: str, value: Any) -> None:
    """ConfigError unless ``value`` is a string (a path may be '')."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string (a path, or '')")


def numbers(key: str, value: Any, length: int, *, minimum_open: float | None = None) -> None:
    """ConfigError unless ``value`` is ``length`` numbers (each ``> minimum_open`` if given)."""
    ok = isinstance(value, (tuple, list)) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        and (minimum_open is None or v > minimum_open) for v in value)
    if not ok:
        bound = f", each > {minimum_open}" if minimum_open is not None else ""
        raise ConfigError(f"{key}={value!r} must be {length} numbers{bound}, e.g. "
                          f"{(0.5,) * length}")


# The config sections each method reads, next to the shared ones (data, eval). A section of
# another method has no effect on the run: it is refused, so no value is ignored in silence.
SHARED_SECTIONS = ("data", "eval")
SHARED_KEYS = ("method", "seed", "bits")
METHOD_SECTIONS = {
    "fjsph": ("model", "init", "train", "loss", "codes"),
    "jspsh": ("jspsh",),
    "jdsh": ("train", "jdsh"),
}


def check_method_sections(config, method: str) -> None:
    """ConfigError for a top-level key of ``config`` that ``method`` does not read."""
    own = METHOD_SECTIONS.get(method)
    if own is None:  # a method registered elsewhere: its sections are its own business
        return
    allowed = set(SHARED_SECTIONS) | set(SHARED_KEYS) | set(own)
    for key in config.keys():
        if key in allowed:
            continue
        readers = [m for m, sections in METHOD_SECTIONS.items() if key in sections]
        why = (f"it is read by {', '.join(readers)}, not by config.method={method!r}"
               if readers else "no method reads it")
        raise ConfigError(
            f"config.{key} has no effect: {why}. Remove it from the config file, or pick the "
            f"method that reads it (sections of {method}: {', '.join(sorted(allowed))})"
        )


# Every key a config of a method may hold: the keys of its reference file in configs/ (which
# starts from configs/common.py), plus the shared loop's keys those files leave at their
# defaults. A key outside them (a misspelling in a user's copy of a config file) is an error:
# nothing would read it, and the run would silently use the default.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
REFERENCE_CONFIGS = {"fjsph": "default.py", "jspsh": "jspsh.py", "jdsh": "jdsh_mirflickr.py"}
LOOP_KEYS = ("train.tensorboard", "eval.every_steps")


def flat_keys(config, prefix: str = "") -> list[str]:
    """The dotted leaf keys of a (nested) ConfigDict, e.g. ``["bits", "train.mode", ...]``."""
    keys = []
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, (str, bytes)):
            keys += flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


@functools.lru_cache(maxsize=None)
def reference_keys(method: str) -> frozenset[str] | None:
    """The keys a ``method`` config may set (see :data:`REFERENCE_CONFIGS`), or None for a
    method without a reference file or a package installed without configs/."""
    name = REFERENCE_CONFIGS.get(method)
    path = os.path.join(CONFIGS_DIR, name) if name else ""
    if not path or not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location(f"_reference_config_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(flat_keys(module.get_config())) | frozenset(LOOP_KEYS)


def check_known_keys(config, method: str) -> None:
    """ConfigError for a key that no code of ``method`` reads (e.g. ``train.warmpu_steps``
    written in a config file), with the closest known key as a "did you mean"."""
    known = reference_keys(method)
    if known is None:
        return
    for key in flat_keys(config):
        if key in known or key.split(".")[0] not in known_sections(known):
            continue  # unknown sections: check_method_sections names their method
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean config.{close[0]}? " if close else ""
        raise ConfigError(
            f"config.{key} is not a key of a {method} config, so nothing would read it; "
            f"{hint}Fix the config file (configs/{REFERENCE_CONFIGS[method]} lists every key)")


def known_sections(keys: Iterable[str]) -> set[str]:
    """The top-level names of dotted ``keys``."""
    return {key.split(".")[0] for key in keys}


def validate_common(config) -> None:
    """The shared keys no other check reads: seed, image geometry, split seed, paths."""
    integer("config.seed", config.seed, 0)
    data = config.data
    positive("config.data.image_size", data.get("image_size", 32))
    integer("config.data.split_seed", data.get("split_seed", 0), 0)
    positive("config.data.min_tag_count", data.get("min_tag_count", 20))
    integer("config.data.num_validation", data.get("num_validation", 0), 0)
    for key in ("manual_dir", "data_dir", "image_root"):
        string(f"config.data.{key}", data.get(key, ""))
    numbers("config.data.image_mean", data.get("image_mean", (0.5,) * 3), 3)
    numbers("config.data.image_std", data.get("image_std", (0.5,) * 3), 3,
            minimum_open=0.0)


def validate_config(config, num_devices: int) -> None:
    """Raises :class:`ConfigError` on the first bad value of ``config``.

    Args:
      config: the experiment ``ml_collections.ConfigDict`` (see configs/default.py).
      num_devices: devices in the training mesh (a global batch must split over them).
    """
    from fjsph_jax import methods  # deferred: the registry imports nothing heavy, but later

    method = config.get("method", "fjsph")
    choice("config.method", method, methods.names())
    check_method_sections(config, method)
    check_known_keys(config, method)
    positive("config.bits", config.bits)
    validate_common(config)
    validate_data(config)
    validate_eval(config)
    validate_loop(config)
    try:
        method_class = methods.get(method)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    method_class.validate_config(config, num_devices)


def validate_data(config) -> None:
    """``config.data``: the dataset, its split protocol and loader, a feature source."""
    data = config.data
    choice("config.data.name", data.name, DATASETS)
    choice("config.data.split_protocol", data.split_protocol, SPLIT_PROTOCOLS)
    choice("config.data.resize", data.resize, RESIZE_MODES)
    loader = data.get("loader", "memory")
    choice("config.data.loader", loader, LOADERS)
    if loader == "stream" and data.name == "synthetic":
        raise ConfigError(
            "config.data.loader='stream' reads a built dataset (mirflickr, nuswide, coco); "
            "the synthetic scenes are generated in memory: use config.data.loader='memory'"
        )
    positive("config.data.read_threads", data.get("read_threads", 2))
    caption = data.caption
    if caption not in ("first", "random") and not str(caption).isdigit():
        raise ConfigError(
            f"config.data.caption={caption!r} is not supported; allowed: 'first', 'random' "
            "or a caption index such as '2'"
        )
    positive("config.data.num_query", data.num_query)
    positive("config.data.num_train", data.num_train)
    positive("config.data.context_length", data.context_length)
    if data.name == "synthetic":
        positive("config.data.num_items", data.num_items)
        needed = data.num_query + data.num_train
        if needed > data.num_items:
            raise ConfigError(
                f"config.data.num_query + config.data.num_train = {needed} exceeds "
                f"config.data.num_items={data.num_items}"
            )
    features = data.get("features", "")
    if not isinstance(features, str):
        raise ConfigError(f"config.data.features={features!r} must be a string: '', "
                          "'handcrafted' or the path of a .mat / .npz feature file")
    if features and features != "handcrafted":
        if not features.lower().endswith(FEATURE_FILE_SUFFIXES):
            raise ConfigError(
                f"config.data.features={features!r} is neither 'handcrafted' nor a .mat / .npz "
                "feature file (keys I_tr, T_tr, L_tr, I_te, T_te, L_te; see docs/datasets.md)"
            )
        if not os.path.isfile(features):
            raise ConfigError(
                f"config.data.features={features!r}: no such file. Write one with "
                "`python launch/encode.py --features=PATH ...` or point at your .mat / .npz"
            )


def validate_eval(config) -> None:
    """``config.eval``: batch size, MAP@K cut-off and convention, the evaluation split."""
    ev = config.eval
    positive("config.eval.batch_size", ev.batch_size)
    positive("config.eval.top_k", ev.top_k)
    positive("config.eval.query_chunk", ev.query_chunk)
    convention = ev.get("map_convention", "")
    if convention:
        choice("config.eval.map_convention", convention, MAP_CONVENTIONS)
    split = ev.get("split", "test")
    choice("config.eval.split", split, EVAL_SPLITS)
    if split == "validation":
        positive("config.data.num_validation", config.data.get("num_validation", 0))
    ns = tuple(ev.precision_ns)
    if not ns:
        raise ConfigError("config.eval.precision_ns is empty; give cut-offs such as (1, 10, 100)")
    for i, n in enumerate(ns):
        positive(f"config.eval.precision_ns[{i}]", n)


def validate_loop(config) -> None:
    """The shared loop's optional keys (:data:`LOOP_KEYS`; absent keys take their defaults):
    ``eval.every_steps`` (an integer >= 0) and ``train.tensorboard`` (a bool; True needs
    tensorboardX)."""
    every = config.get("eval", {}).get("every_steps", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(
            f"config.eval.every_steps={every!r} must be an integer >= 0 (0: evaluate only "
            "at the end)"
        )
    tensorboard = config.get("train", {}).get("tensorboard", False)
    boolean("config.train.tensorboard", tensorboard)
    if tensorboard:
        from fjsph_jax.training import logs  # deferred: imports jax

        logs.check_tensorboard()


def validate_training(config, num_devices: int) -> None:
    """``config.train`` keys the shared step loop reads (gradient methods)."""
    train = config.train
    positive("config.train.num_epochs", train.num_epochs)
    positive("config.train.log_every_steps", train.log_every_steps)
    positive("config.train.checkpoint_every_steps", train.checkpoint_every_steps)
    positive("config.train.max_checkpoints_to_keep", train.max_checkpoints_to_keep)
    if not isinstance(train.max_steps, int) or isinstance(train.max_steps, bool) or (
        train.max_steps == 0 or train.max_steps < -1
    ):
        raise ConfigError(
            f"config.train.max_steps={train.max_steps!r} must be -1 (num_epochs decides) "
            "or a positive integer"
        )
    positive_number("config.train.learning_rate", train.learning_rate)
    batch = train.global_batch_size
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0 or batch % num_devices:
        raise ConfigError(
            f"config.train.global_batch_size={batch!r} must be a positive multiple of the "
            f"device count ({num_devices}); e.g. {max(1, num_devices) * 16}"
        )
    if not config.data.get("features", "") and batch > config.data.num_train:
        raise ConfigError(
            f"config.train.global_batch_size={batch} exceeds "
            f"config.data.num_train={config.data.num_train}"
        )


def validate_cluster_ks(key_prefix: str, ks, weights, num_train: int | None) -> None:
    """k-means granularities ``ks`` (each in 1..num_train) and optional weights (sum 1)."""
    ks = tuple(ks)
    for i, k in enumerate(ks):
        positive(f"{key_prefix}.cluster_ks[{i}]", k)
        if num_train is not None and k > num_train:
            raise ConfigError(
                f"{key_prefix}.cluster_ks[{i}]={k} is larger than the number of training "
                f"items config.data.num_train={num_train}; allowed: 1..{num_train}"
            )
    weights = tuple(weights or ())
    if weights:
        if len(weights) != len(ks):
            raise ConfigError(
                f"{key_prefix}.cluster_weights has {len(weights)} entries but "
                f"{key_prefix}.cluster_ks has {len(ks)}; give one weight per k or ()"
            )
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ConfigError(
                f"{key_prefix}.cluster_weights={weights} must be >= 0 and sum to 1"
            )


def apply_overrides(config, overrides: dict | None = None, **dotted):
    """``config`` with dotted keys set in place, e.g. ``{"train.mode": "frozen_encoder"}``
    (the ``--config.a.b=v`` of the command line, from Python); returns ``config``."""
    for key, value in {**(overrides or {}), **dotted}.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config
