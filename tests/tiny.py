"""A tiny experiment config for tests: seconds per run on CPU, same code paths as the demo.

The config itself lives in configs/tiny.py (one source of truth for the tests, CI and
``python launch/train.py --config=configs/tiny.py``).
"""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
)
import default  # noqa: E402,F401  (tests build other configs from it)

# configs/tiny.py, loaded by path: this module is itself importable as ``tiny``.
TINY_CONFIG_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"
)


def _load_config_file(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("configs_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONFIG_FILE = _load_config_file(TINY_CONFIG_PATH)


def tiny_config(**overrides):
    """configs/tiny.py: 256 items, 64 train, batch 16, 8 steps; dotted overrides."""
    return apply_overrides(_CONFIG_FILE.get_config(), **overrides)


def apply_overrides(config, **overrides):
    """``config`` with dotted keys set, e.g. ``apply_overrides(c, **{"train.mode": "x"})``."""
    from fjsph_jax.configuration import apply_overrides as apply

    return apply(config, overrides)


def tiny_built_config(root, **overrides):
    """tiny_config on the 40-pair MIRFlickr-like dataset :func:`write_tiny_mirflickr` wrote
    under ``root``: 8 query, 24 train, batch 8 (3 steps per epoch), 32 px images."""
    return tiny_config(
        **{
            "data.name": "mirflickr",
            "data.manual_dir": str(root / "src"),
            "data.data_dir": str(root / "tfds"),
            "data.num_query": 8,
            "data.num_train": 24,
            "data.split_protocol": "random",
            "loss.cluster_ks": (2, 4),
            "train.global_batch_size": 8,
            **overrides,
        }
    )


def write_tiny_mirflickr(root):
    """40 random JPEG / tag / 5-label rows in the cleaned text-file layout, ``root/src``."""
    from fjsph_jax.data import testing

    testing.write_text_files(str(root / "src"), testing.make_rows(40, 5, size=40, seed=3))
    return root


class LabelCodes:
    """Mixin of the tests' fake methods: codes copied from the labels (bit c = +1 iff
    label c), so every item is ranked by how many labels it shares with the query."""

    @property
    def bits(self):
        return self.data.labels.shape[1]

    def encode(self, state, rows, *, role):
        import numpy as np

        codes = np.where(self.data.labels[rows] > 0, 1, -1).astype(np.int8)
        return {"image": codes, "text": codes}


def registered(name: str, method_class):
    """Registers ``method_class`` (a class of a test module) as ``name`` until the generator
    ends: ``yield from registered(...)`` in a fixture."""
    from fjsph_jax import methods

    methods.register(name, f"{method_class.__module__}:{method_class.__name__}")
    try:
        yield method_class
    finally:
        methods.unregister(name)
