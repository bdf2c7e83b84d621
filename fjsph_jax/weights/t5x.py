"""Reading (and, for tests and tools, writing) t5x checkpoints, the format FLIP releases.

A t5x checkpoint step directory holds a msgpack file named ``checkpoint``::

    {"version": 3, "optimizer": {"target": <params tree>, "state": {...}}}

written with ``flax.serialization``. Each parameter leaf is either the array itself (small
or unpartitioned arrays) or a TensorStore spec (a dict with ``driver`` "zarr" and a
``kvstore``) whose zarr array lives in a subdirectory named after the parameter path with
dots, e.g. ``target.img_encoder.posembed_encoder.pos_embedding``, relative to the step
directory. Older specs keep that relative path in ``spec["path"]``; specs written on GCS
use a ``gcs`` kvstore: both are resolved against the local step directory, as t5x does.

A checkpoint path may be the ``checkpoint`` file, its step directory, or a directory of
``checkpoint_<step>`` directories (the latest step is read). Parameters come back flat,
keyed by their tree path joined with ``/`` (``img_encoder/Transformer/encoder_norm/scale``),
floats as float32.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from fjsph_jax.weights.errors import CheckpointFormatError
from fjsph_jax.weights.tensors import as_float32

CHECKPOINT_FILE = "checkpoint"
T5X_VERSION = 3
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


def find_t5x_checkpoint(path: str) -> str | None:
    """The ``checkpoint`` msgpack file ``path`` designates (see module docstring), or None."""
    if os.path.isfile(path):
        return path if os.path.basename(path) == CHECKPOINT_FILE else None
    if not os.path.isdir(path):
        return None
    direct = os.path.join(path, CHECKPOINT_FILE)
    if os.path.isfile(direct):
        return direct
    steps = []
    for name in os.listdir(path):
        match = _STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(path, name, CHECKPOINT_FILE)):
            steps.append((int(match.group(1)), name))
    if not steps:
        return None
    return os.path.join(path, max(steps)[1], CHECKPOINT_FILE)


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and "kvstore" in value


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and not _is_ts_spec(tree):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _read_ts(spec: Mapping, step_dir: str, name: str) -> np.ndarray:
    import tensorstore as ts

    kvstore = dict(spec["kvstore"])
    relative = kvstore.get("path", spec.get("path"))
    if relative is None:
        raise CheckpointFormatError(f"{step_dir}: TensorStore spec of {name} has no path: {spec}")
    resolved = {
        "driver": spec["driver"],
        "kvstore": {"driver": "file", "path": os.path.join(step_dir, relative)},
    }
    try:
        return np.asarray(ts.open(resolved, open=True, read=True).result().read().result())
    except Exception as error:  # noqa: BLE001 - tensorstore raises ValueError or its own types
        raise CheckpointFormatError(
            f"{step_dir}: cannot read the TensorStore array of {name} at "
            f"{resolved['kvstore']['path']} ({error})"
        ) from error


def read_t5x_params(path: str) -> dict[str, np.ndarray]:
    """Flat ``{a/b/c: float32 array}`` of a t5x checkpoint's parameters (``optimizer.target``)."""
    from flax import serialization

    file = find_t5x_checkpoint(path)
    if file is None:
        raise CheckpointFormatError(
            f"{path}: no t5x checkpoint: expected a 'checkpoint' msgpack file in it or in "
            "checkpoint_<step>/"
        )
    with open(file, "rb") as f:
        raw = f.read()
    try:
        contents = serialization.msgpack_restore(raw)
    except Exception as error:  # noqa: BLE001 - msgpack raises several types on corrupt input
        raise CheckpointFormatError(f"{file}: not a msgpack checkpoint ({error})") from error
    if not isinstance(contents, dict):
        raise CheckpointFormatError(f"{file}: expected a msgpack map at the top level")
    target = (
        (contents.get("optimizer") or {}).get("target")
        if "optimizer" in contents
        else contents.get("target")
    )
    if not isinstance(target, dict):
        raise CheckpointFormatError(
            f"{file}: no parameters: expected 'optimizer' -> 'target' (t5x) or 'target'; "
            f"top-level keys are {sorted(contents)}"
        )
    step_dir = os.path.dirname(file)
    params = {}
    for name, leaf in _flatten(target).items():
        array = _read_ts(leaf, step_dir, name) if _is_ts_spec(leaf) else np.asarray(leaf)
        params[name] = as_float32(array)
    return params


def write_t5x_checkpoint(
    params: Mapping[str, np.ndarray],
    directory: str,
    *,
    step: int = 0,
    tensorstore_min_size: int = 1024,
) -> str:
    """Writes ``params`` (flat ``a/b/c`` keys) as t5x checkpoint step ``step`` under ``directory``.

    Arrays with at least ``tensorstore_min_size`` elements go to gzip-compressed zarr
    arrays (as t5x writes partitioned parameters); the rest are stored inline in the
    msgpack file. Returns the path of the ``checkpoint`` file.
    """
    import tensorstore as ts
    from flax import serialization

    step_dir = os.path.join(directory, f"checkpoint_{step}")
    os.makedirs(step_dir, exist_ok=True)
    target: dict = {}
    for name, value in params.items():
        array = np.asarray(value)
        if array.size >= tensorstore_min_size:
            relative = "target." + name.replace("/", ".")
            spec = {
                "driver": "zarr",
                "dtype": array.dtype.name,
                "kvstore": {"driver": "file", "path": relative},
                "metadata": {
                    "compressor": {"id": "gzip"},
                    "shape": list(array.shape),
                    "chunks": list(array.shape),
                },
            }
            store = ts.open(
                {**spec, "kvstore": {"driver": "file", "path": os.path.join(step_dir, relative)}},
                create=True,
                delete_existing=True,
            ).result()
            store.write(array).result()
            leaf: Any = spec
        else:
            leaf = array
        node = target
        parts = name.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    contents = {
        "version": T5X_VERSION,
        "optimizer": {"target": target, "state": {"step": np.asarray(step)}},
    }
    file = os.path.join(step_dir, CHECKPOINT_FILE)
    with open(file, "wb") as f:
        f.write(serialization.msgpack_serialize(contents))
    return file
