"""Convert a pretrained checkpoint once into our own form (see ``converted.py``).

``convert_checkpoint(checkpoint, out_dir)`` reads any checkpoint ``load_towers`` reads,
writes ``out_dir/model_config.json`` + ``out_dir/params`` (orbax) and copies the
tokenizer files found beside the checkpoint, so ``load_towers(out_dir)`` (and
``--config.init.checkpoint=out_dir``) later skip the original format entirely.
"""

from __future__ import annotations

import os
import shutil

from fjsph_jax.weights import converted
from fjsph_jax.weights.pretrained import load_towers
from fjsph_jax.weights.tokenizers import TOKENIZER_FILES
from fjsph_jax.weights.towers import PretrainedTowers


def convert_checkpoint(checkpoint: str, out_dir: str) -> PretrainedTowers:
    """Reads ``checkpoint``, writes its converted form to ``out_dir``; returns what was read."""
    towers = load_towers(checkpoint)
    converted.save_converted(
        out_dir,
        vision=towers.vision,
        text=towers.text,
        vision_params=towers.vision_params,
        text_params=towers.text_params,
        logit_scale=towers.logit_scale,
        source=towers.source,
        kind=towers.kind,
    )
    source_dir = (
        towers.source
        if os.path.isdir(towers.source)
        else os.path.dirname(os.path.abspath(towers.source))
    )
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(out_dir, name))
    return towers
