"""Reading named tensors from state-dict files into ``{key: np.ndarray}``.

* ``.safetensors``: read with ``safetensors.numpy`` (no torch needed);
* ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True)`` on CPU, or a TorchScript
  archive (OpenAI's released ``ViT-B-32.pt``) through ``torch.jit.load``. torch is imported
  here, lazily, and nowhere else at run time.

Floating-point tensors come back as float32 (OpenAI ships float16, some hubs bfloat16);
other dtypes (integer buffers) are kept. Checkpoints saved by training scripts that nest
the weights (``{"state_dict": {...}}``) or prefix them (``module.`` from
DistributedDataParallel) are unwrapped.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Mapping

import numpy as np

from fjsph_jax.weights.errors import CheckpointFormatError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
STATE_DICT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES

# Keys under which training scripts nest a state dict.
_NESTING_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


def as_float32(array: np.ndarray) -> np.ndarray:
    """``array`` as float32 if it holds floats (float16/bfloat16/float64 too), else unchanged."""
    array = np.asarray(array)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def import_reader(module: str, path: str, install: str):
    """``importlib.import_module(module)``; a :class:`CheckpointFormatError` naming ``path``
    and ``pip install <install>`` when the package is not installed (a one-line user
    error, not an ImportError traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CheckpointFormatError(
            f"{path}: reading this file needs the package {module.split('.')[0]!r}, which is "
            f"not installed ({error}); run `pip install {install}`, or convert the checkpoint "
            "on a machine that has it (launch/convert.py)") from None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file, floats as float32."""
    load_file = import_reader("safetensors.numpy", path, "safetensors").load_file
    SafetensorError = import_reader("safetensors", path, "safetensors").SafetensorError

    try:
        arrays = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({error})") from error
    return {key: as_float32(value) for key, value in arrays.items()}


def read_torch_file(path: str) -> dict[str, np.ndarray]:
    """All tensors of a torch checkpoint (pickle or TorchScript archive), floats as float32."""
    # lazy: the runtime stays torch-free unless a .pt/.bin file is read
    torch = import_reader("torch", path, "'fjsph-jax[torch]' (a CPU build: see setup.py)")

    try:
        if _is_torchscript(path):
            with (
                warnings.catch_warnings()
            ):  # torch 2.x deprecates TorchScript; OpenAI still ships it
                warnings.simplefilter("ignore", DeprecationWarning)
                loaded = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types on foreign or corrupt files
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint ({error})") from error
    tensors = _unwrap(loaded, path)
    out = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        value = value.detach()
        if value.is_floating_point():
            value = value.float()
        out[key] = value.numpy().copy()
    return out


def _is_torchscript(path: str) -> bool:
    """True for a TorchScript archive (a zip with a code/ directory and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict_file(path: str) -> dict[str, np.ndarray]:
    """Tensors of one state-dict file, chosen by its suffix (see module docstring)."""
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path}: no such file")
    if path.endswith(SAFETENSORS_SUFFIXES):
        arrays = read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        arrays = read_torch_file(path)
    else:
        raise CheckpointFormatError(
            f"{path}: unknown state-dict file type; allowed suffixes: {list(STATE_DICT_SUFFIXES)}"
        )
    return strip_prefixes(arrays)


def read_sharded(directory: str, index_name: str) -> dict[str, np.ndarray]:
    """Tensors of a sharded checkpoint: ``index_name`` (JSON with a ``weight_map``) + shards."""
    index_path = os.path.join(directory, index_name)
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointFormatError(
            f"{index_path}: not a checkpoint index with a weight_map ({error})"
        ) from error
    arrays: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        arrays.update(read_state_dict_file(os.path.join(directory, shard)))
    return arrays


def strip_prefixes(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix shared by every key."""
    arrays = dict(arrays)
    for prefix in _PREFIXES:
        if arrays and all(key.startswith(prefix) for key in arrays):
            arrays = {key[len(prefix) :]: value for key, value in arrays.items()}
    return arrays


def _unwrap(loaded, path: str) -> dict:
    """The tensor dict inside what torch.load returned (nested under 'state_dict' etc. or not)."""
    for _ in range(3):
        if not isinstance(loaded, Mapping):
            break
        nested = [k for k in _NESTING_KEYS if isinstance(loaded.get(k), Mapping)]
        if not nested:
            break
        loaded = loaded[nested[0]]
    if not isinstance(loaded, Mapping):
        raise CheckpointFormatError(
            f"{path}: expected a state dict (a mapping of names to tensors), "
            f"got {type(loaded).__name__}"
        )
    return dict(loaded)
