"""Encode a dataset split of a trained run into a code database.

    python launch/encode.py --workdir=runs/default-20250101-120000 \
        [--split=database|query|train] [--modality=both|image|text] [--out=DIR]

Loads the run's config, tokenizer and latest checkpoint, encodes every item of the split
(the run's own split of its dataset) and writes packed codes, ids, labels, label names
and texts to --out (default <workdir>/codes-<split>). Search it with launch/search.py.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a launch/train.py run.", required=True)
_SPLIT = flags.DEFINE_enum(
    "split", "database", ["database", "query", "train"], "Which split of the run's dataset."
)
_MODALITY = flags.DEFINE_enum(
    "modality", "both", ["both", "image", "text"], "Which codes to compute."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default <workdir>/codes-<split>).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Items per encoder call (default config.eval.batch_size)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from fjsph_jax.code_database import write_split_database

    try:
        database, out = write_split_database(
            _WORKDIR.value,
            split=_SPLIT.value,
            modality=_MODALITY.value,
            out=_OUT.value,
            batch_size=_BATCH_SIZE.value,
            step=_STEP.value,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"wrote {len(database)} {_SPLIT.value} items ({', '.join(database.modalities)} codes, "
        f"{database.bits} bits, checkpoint step {database.metadata['checkpoint_step']}) to {out}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
