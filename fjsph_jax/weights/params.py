"""Our towers' parameters as flat ``{dotted.key: np.ndarray}`` dicts, and building towers from them.

A tower's parameters are named by their nnx path joined with dots, e.g.
``transformer.blocks.0.attn.q_proj.kernel`` ([D, D], input axis first) or
``patch_embed.kernel`` ([p, p, 3, D]). Importers produce such dicts; :func:`check_tower_params`
compares one with the tower its config describes (no key missing, none extra, every
shape equal) before :func:`build_tower` makes a module, so nothing runs half-initialised.

Importers describe their mapping as :class:`Rule` s (our key <- checkpoint keys, through
a transform); :func:`apply_rules` checks that every checkpoint key a rule reads exists and
that every checkpoint key is read (or explicitly ignorable) before computing anything.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fjsph_jax.models.text import TextConfig, TextTransformer
from fjsph_jax.models.vit import VisionTransformer, ViTConfig
from fjsph_jax.weights.errors import CheckpointKeysError

TOWERS = ("vision", "text")
TowerConfig = ViTConfig | TextConfig
FlatParams = dict[str, np.ndarray]


def _tower_class(tower: str):
    if tower == "vision":
        return VisionTransformer
    if tower == "text":
        return TextTransformer
    raise ValueError(f"tower={tower!r}; allowed: {list(TOWERS)}")


def _key(path) -> str:
    return ".".join(str(getattr(part, "key", part)) for part in path)


@functools.lru_cache(maxsize=16)
def _abstract_split(tower: str, config: TowerConfig, dtype=None):
    """(graphdef, abstract state) of a tower: traced once per (config, dtype), no arrays made."""
    module = nnx.eval_shape(lambda: _tower_class(tower)(config, rngs=nnx.Rngs(0), dtype=dtype))
    return nnx.split(module)


def expected_shapes(tower: str, config: TowerConfig) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of every parameter of the tower ``config`` describes (no arrays made)."""
    _, state = _abstract_split(tower, config)
    return {_key(path): tuple(variable.shape) for path, variable in nnx.to_flat_state(state)}


def check_tower_params(
    tower: str,
    config: TowerConfig,
    params: Mapping[str, np.ndarray],
    *,
    source: str,
    origin: Mapping[str, str] | None = None,
) -> None:
    """Raises CheckpointKeysError unless ``params`` has exactly the tower's keys and shapes.

    ``origin`` maps our keys to the checkpoint keys they came from, so errors name the latter.
    """
    want = expected_shapes(tower, config)
    origin = origin or {}
    name = lambda key: f"{tower}:{key}" + (f" (from {origin[key]})" if key in origin else "")  # noqa: E731
    missing = [name(key) for key in want if key not in params]
    unexpected = [name(key) for key in params if key not in want]
    mismatched = [
        (name(key), tuple(np.shape(value)), want[key])
        for key, value in params.items()
        if key in want and tuple(np.shape(value)) != want[key]
    ]
    if missing or unexpected or mismatched:
        raise CheckpointKeysError(
            source,
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            what=f"the {tower} tower {config}",
        )


def tower_state(tower: str, config: TowerConfig, params: Mapping[str, np.ndarray]) -> nnx.State:
    """The nnx.State (Params only) of the tower, holding ``params`` as float32 jax arrays.

    ``params`` must already pass :func:`check_tower_params`.
    """
    _, abstract = _abstract_split(tower, config)
    flat = [
        (path, variable.replace(jnp.asarray(params[_key(path)], dtype=variable.dtype)))
        for path, variable in nnx.to_flat_state(abstract)
    ]
    return nnx.from_flat_state(flat)


def build_tower(
    tower: str, config: TowerConfig, params: Mapping[str, np.ndarray], *, source: str, dtype=None
):
    """A VisionTransformer / TextTransformer holding ``params`` (checked first).

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """
    check_tower_params(tower, config, params, source=source)
    graphdef, _ = _abstract_split(tower, config, dtype)
    return nnx.merge(graphdef, tower_state(tower, config, params))


def module_params(module: nnx.Module) -> FlatParams:
    """Inverse of :func:`build_tower`: a module's Params as ``{dotted.key: np.ndarray}``."""
    state = nnx.state(module, nnx.Param)
    return {
        _key(path): np.asarray(jax.device_get(variable[...]))
        for path, variable in nnx.to_flat_state(state)
    }


@dataclasses.dataclass(frozen=True)
class Rule:
    """``params[tower][key] = transform(*[checkpoint[k] for k in sources])``."""

    tower: str
    key: str
    sources: tuple[str, ...]
    transform: Callable[..., np.ndarray] = lambda x: x


def apply_rules(
    arrays: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    *,
    source: str,
    ignorable: Callable[[str], bool] = lambda key: False,
) -> tuple[dict[str, FlatParams], dict[str, dict[str, str]]]:
    """Runs ``rules`` over a checkpoint's ``arrays`` after checking its keys.

    Raises CheckpointKeysError listing every checkpoint key a rule needs that is absent
    (missing) and every checkpoint key no rule reads and ``ignorable`` does not excuse
    (unexpected). Returns ``(params, origin)``: ``params[tower][key]`` float32 arrays and
    ``origin[tower][key]`` the checkpoint key(s) each came from.
    """
    rules = list(rules)
    needed = {k for rule in rules for k in rule.sources}
    missing = sorted(needed - set(arrays))
    unexpected = sorted(k for k in arrays if k not in needed and not ignorable(k))
    if missing or unexpected:
        raise CheckpointKeysError(
            source, missing=missing, unexpected=unexpected, what="the importer's key map"
        )
    params: dict[str, FlatParams] = {}
    origin: dict[str, dict[str, str]] = {}
    for rule in rules:
        value = rule.transform(*[arrays[k] for k in rule.sources])
        params.setdefault(rule.tower, {})[rule.key] = np.asarray(value, dtype=np.float32)
        origin.setdefault(rule.tower, {})[rule.key] = "+".join(rule.sources)
    return params, origin
