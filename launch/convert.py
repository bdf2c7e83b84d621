"""Convert a pretrained CLIP/FLIP checkpoint once into fjsph_jax's own form.

    python launch/convert.py --checkpoint=PATH --out=DIR

PATH: a transformers CLIP directory, an OpenAI/OpenCLIP state-dict file, or a FLIP t5x
checkpoint (see docs/pretrained.md). DIR gets model_config.json, an orbax params/
checkpoint and the tokenizer files; use it as --config.init.checkpoint=DIR afterwards.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Pretrained checkpoint to read.", required=True
)
_OUT = flags.DEFINE_string(
    "out", None, "Directory to write (must not exist or be empty).", required=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from fjsph_jax.weights import CheckpointError, convert_checkpoint

    try:
        towers = convert_checkpoint(_CHECKPOINT.value, _OUT.value)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"converted {towers.kind} checkpoint {towers.source} -> {_OUT.value}")
    print(f"  vision: {towers.vision}")
    print(f"  text:   {towers.text}")
    print(f"  tokenizer: {towers.tokenizer!r}")


if __name__ == "__main__":
    app.run(main)
