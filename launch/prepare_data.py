"""Build a benchmark dataset once.

    python launch/prepare_data.py --dataset=mirflickr --manual_dir=DIR [--image_root=DIR]

Detects the layout of the files in --manual_dir (official release, cleaned text files,
DCHMT/MITH .mat or DCMH .mat: you never name it), cleans the rows, writes the ArrayRecord
build under --data_dir and records the split of the dataset's config (configs/<dataset>.py,
or --config). Prints the layout, pairs kept, pairs skipped per reason and the split sizes.
Training (`launch/train.py`) builds on demand the same way and reuses this build.
"""

import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fjsph_jax import cli  # noqa: E402

_DATASET = flags.DEFINE_enum(
    "dataset", None, ["mirflickr", "nuswide", "coco"], "Which dataset to build."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config whose data section to use (default: configs/<dataset>.py).",
    lock_config=False,
)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the downloaded files.")
_IMAGE_ROOT = flags.DEFINE_string(
    "image_root", None, "Folder with the images, if not under --manual_dir."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where builds are kept (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_SPLIT_PROTOCOL = flags.DEFINE_enum(
    "split_protocol",
    None,
    ["random", "permutation", "small", "djsrh"],
    "Split protocol (default: the config's); djsrh: DJSRH/JDSH's per-label sampling.",
)
_NUM_QUERY = flags.DEFINE_integer("num_query", None, "Query set size (default: the config's).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training set size (default: the config's).")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", None, "Split seed (default: the config's).")
_MIN_TAG_COUNT = flags.DEFINE_integer(
    "min_tag_count", None, "MIRFlickr official release: frequent-tag threshold (20)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if a build exists.")


def _dataset_config(dataset: str):
    """``get_config()`` of configs/<dataset>.py."""
    import importlib.util

    path = os.path.join(REPO_ROOT, "configs", f"{dataset}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{dataset}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from fjsph_jax.data.sources import DatasetNotFoundError, prepare_from_config

    config = _CONFIG.value
    if config is None:
        if _DATASET.value is None:
            raise app.UsageError("give --dataset=mirflickr|nuswide|coco (or --config)")
        config = _dataset_config(_DATASET.value)
    config.unlock()
    data = config.data
    if _DATASET.value is not None:
        data.name = _DATASET.value
    overrides = {
        "manual_dir": _MANUAL_DIR.value,
        "image_root": _IMAGE_ROOT.value,
        "data_dir": _DATA_DIR.value,
        "split_protocol": _SPLIT_PROTOCOL.value,
        "num_query": _NUM_QUERY.value,
        "num_train": _NUM_TRAIN.value,
        "split_seed": _SPLIT_SEED.value,
        "min_tag_count": _MIN_TAG_COUNT.value,
    }
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        print(prepare_from_config(data, overwrite=_OVERWRITE.value), flush=True)
    except (DatasetNotFoundError, ValueError) as error:
        if not cli.is_user_error(error) or cli.show_tracebacks():
            raise
        cli.fail(f"{type(error).__name__}: {in_own_flags(str(error))}")


def in_own_flags(message: str) -> str:
    """``message`` with the trainer's ``--config.data.X`` (and ``config.data.X``) written as
    this tool's ``--X`` wherever it has that flag."""
    own = {name for name in flags.FLAGS if not name.startswith("config")}

    def replace(match):
        key = {"name": "dataset"}.get(match.group(1), match.group(1))
        return f"--{key}" if key in own else match.group(0)

    return re.sub(r"(?:--)?config\.data\.(\w+)", replace, message)


if __name__ == "__main__":
    cli.run(main)
