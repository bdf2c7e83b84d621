"""The registry of hashing methods: ``config.method`` -> the class that implements it.

    fjsph   FLIP towers + hash heads + joint label similarity + discrete code bank
    jspsh   shallow sparse codes, closed-form discrete optimisation, linear hash functions
    jdsh    unsupervised joint-modal similarity with DSDW weighting (features in)

Each method lives in its own place here and owns what only it has; the shared loop
(:mod:`fjsph_jax.training.loop`) and the evaluator (:mod:`fjsph_jax.evaluation`) only see
the interface of :mod:`fjsph_jax.methods.base`. Modules are imported on first use, so a
config can be validated without importing every method's dependencies.
"""

from __future__ import annotations

import importlib
import importlib.util

# name -> "module:Class"
_REGISTRY = {
    "fjsph": "fjsph_jax.methods.fjsph.method:FJSPHMethod",
    "jspsh": "fjsph_jax.methods.jspsh.method:JSPSHMethod",
    "jdsh": "fjsph_jax.methods.jdsh.method:JDSHMethod",
}


def names() -> tuple[str, ...]:
    """Every registered ``config.method`` value."""
    return tuple(_REGISTRY)


def available() -> tuple[str, ...]:
    """The registered methods whose module is present (importable) in this checkout."""
    found = []
    for name in _REGISTRY:
        module = _REGISTRY[name].split(":")[0]
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return tuple(found)


def get(name: str):
    """The method class registered as ``name``; ValueError naming the allowed values."""
    if name not in _REGISTRY:
        raise ValueError(
            f"config.method={name!r} is not a known method; allowed: "
            + ", ".join(map(repr, _REGISTRY))
        )
    module_name, class_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ValueError(
            f"config.method={name!r} is registered but not available in this checkout"
        ) from error
    return getattr(module, class_name)


def register(name: str, target: str) -> None:
    """Adds ``name`` -> ``"module:Class"`` (tests register fake methods this way)."""
    _REGISTRY[name] = target


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
