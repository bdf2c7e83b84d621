"""Our own on-disk form of pretrained towers (written by ``launch/convert.py``).

A converted directory holds::

    model_config.json   {"format": "fjsph_jax.pretrained_towers", "version": 1,
                         "vision": ViTConfig fields, "text": TextConfig fields,
                         "logit_scale": float, "converted_from": {"source", "kind"}}
    params/             orbax checkpoint of {"vision": tree, "text": tree}, each tree the
                        tower's parameters nested by their dotted keys (float32)
    <tokenizer files>   copied from the original checkpoint, when it had them

Reading it back needs neither torch nor transformers' model code, and is fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights.errors import CheckpointFormatError

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
FORMAT = "fjsph_jax.pretrained_towers"
FORMAT_VERSION = 1


def nest(flat: Mapping[str, np.ndarray]) -> dict:
    """``{"a.b.c": x}`` -> ``{"a": {"b": {"c": x}}}``."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = np.asarray(value)
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Inverse of :func:`nest`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = np.asarray(value, dtype=np.float32)
    return flat


def is_converted_dir(path: str) -> bool:
    """True if ``path`` is a directory holding our model_config.json."""
    config = os.path.join(path, MODEL_CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_converted(
    out_dir: str,
    *,
    vision: ViTConfig,
    text: TextConfig,
    vision_params: Mapping[str, np.ndarray],
    text_params: Mapping[str, np.ndarray],
    logit_scale: float,
    source: str,
    kind: str,
) -> None:
    """Writes the converted form into ``out_dir`` (which must be absent or empty)."""
    import orbax.checkpoint as ocp

    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(
            f"out_dir={out_dir!r} exists and is not an empty directory; choose a new one"
        )
    os.makedirs(out_dir, exist_ok=True)
    tree = {"vision": nest(vision_params), "text": nest(text_params)}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(os.path.join(out_dir, PARAMS_DIR)), tree)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "vision": dataclasses.asdict(vision),
        "text": dataclasses.asdict(text),
        "logit_scale": float(logit_scale),
        "converted_from": {"source": os.path.abspath(source), "kind": kind},
    }
    with open(os.path.join(out_dir, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def read_converted(directory: str) -> dict:
    """PretrainedTowers keyword arguments (configs, params, logit_scale) of a converted dir."""
    import orbax.checkpoint as ocp

    path = os.path.join(directory, MODEL_CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ValueError(f"format/version {config.get('format')!r}/{config.get('version')!r}")
        vision = ViTConfig(**config["vision"])
        text = TextConfig(**config["text"])
        logit_scale = float(config["logit_scale"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointFormatError(
            f"{path}: not a {FORMAT} v{FORMAT_VERSION} model config ({error}); "
            "rewrite it with launch/convert.py"
        ) from error
    params_dir = os.path.abspath(os.path.join(directory, PARAMS_DIR))
    if not os.path.isdir(params_dir):
        raise CheckpointFormatError(
            f"{params_dir}: missing; rewrite the directory with launch/convert.py"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(params_dir)
    if not isinstance(tree, Mapping) or set(tree) != {"vision", "text"}:
        raise CheckpointFormatError(
            f"{params_dir}: expected the items 'vision' and 'text', got {sorted(tree)}"
        )
    return dict(
        vision=vision,
        text=text,
        vision_params=flatten(tree["vision"]),
        text_params=flatten(tree["text"]),
        logit_scale=logit_scale,
    )
