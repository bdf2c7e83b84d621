"""Search a code database with a text or an image.

    python launch/search.py --index=runs/RUN/codes-database --text="a dog on the beach"
    python launch/search.py --index=runs/RUN/codes-database --image=photo.jpg --k=5

Encodes the query with the run that wrote the database (its model and tokenizer) and
prints the k nearest items: rank, id, Hamming distance, labels and text. A text query
is ranked against the image codes and an image query against the text codes when the
database holds them (cross-modal retrieval); --against=image|text chooses.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402

from fjsph_jax import cli  # noqa: E402

_INDEX = flags.DEFINE_string(
    "index", None, "Code database directory written by launch/encode.py.", required=True
)
_TEXT = flags.DEFINE_string("text", None, "Query text.")
_IMAGE = flags.DEFINE_string("image", None, "Query image file.")
_K = flags.DEFINE_integer("k", 10, "Number of results.")
_AGAINST = flags.DEFINE_enum(
    "against", None, ["image", "text"], "Codes to rank (default: the other modality)."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The training run (default: the one the database names)."
)
_JSON = flags.DEFINE_bool("json", False, "Print the results as one JSON object.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if (_TEXT.value is None) == (_IMAGE.value is None):
        raise app.UsageError("give exactly one of --text and --image")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from fjsph_jax.code_database import search_directory

    # a missing or mismatched run or index: cli.run reports it in one line, exit 2
    result = search_directory(_INDEX.value, text=_TEXT.value, image=_IMAGE.value, k=_K.value,
                              against=_AGAINST.value, workdir=_WORKDIR.value)
    print(result.to_json() if _JSON.value else result.format_table(), flush=True)


if __name__ == "__main__":
    cli.run(main)
