"""A tiny experiment config for tests: seconds per run on CPU, same code paths as the demo."""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
)
import default  # noqa: E402


def tiny_config(**overrides):
    """configs/default.py shrunk: 256 items, 64 train, batch 16, 4+ steps; dotted overrides."""
    config = default.get_config()
    config.data.num_items = 256
    config.data.num_query = 32
    config.data.num_train = 64
    config.data.context_length = 12
    config.model.vision = "vit_micro"
    config.model.text = "text_micro"
    config.model.feature_dim = 32
    config.model.hash_hidden_dim = 32
    config.bits = 16
    config.train.global_batch_size = 16
    config.train.num_epochs = 2
    config.train.warmup_steps = 2
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 4
    config.loss.cluster_ks = (4, 8)
    config.loss.kmeans_iters = 10
    config.codes.update_every_steps = 3
    config.eval.batch_size = 64
    config.eval.top_k = 20
    config.eval.precision_ns = (1, 5, 20)
    config.eval.query_chunk = 16
    return apply_overrides(config, **overrides)


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
