"""PretrainedTowers: what every importer returns (configs + checked parameters of both towers).

An instance is only ever made from parameters that match its configs exactly (checked in
``__post_init__``), so code that receives one can build the towers without further checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import nnx

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import params as params_lib

# Where the towers came from: a transformers CLIP directory, an OpenAI/OpenCLIP state-dict
# file, a FLIP t5x checkpoint, or a directory written by launch/convert.py.
KINDS = ("hf_clip", "openai_clip", "flip_t5x", "converted")


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedTowers:
    """Both encoder towers of a pretrained image-text model, ready to build.

    Attributes:
      vision, text: the tower configs, derived from the checkpoint.
      vision_params, text_params: ``{dotted.key: float32 array}`` (see ``params.py``).
      logit_scale: log of the contrastive temperature's inverse (logits = exp(s) cos).
      source: the path the checkpoint was read from.
      kind: one of KINDS.
      tokenizer: the checkpoint's tokenizer (see ``tokenizers.py``), or None if it has none.
      origin: ``origin[tower][key]`` = checkpoint key(s) a parameter came from (for messages).
    """

    vision: ViTConfig
    text: TextConfig
    vision_params: Mapping[str, np.ndarray] = dataclasses.field(repr=False)
    text_params: Mapping[str, np.ndarray] = dataclasses.field(repr=False)
    logit_scale: float
    source: str
    kind: str
    tokenizer: Any = None
    origin: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"PretrainedTowers.kind={self.kind!r}; allowed: {list(KINDS)}")
        for tower, config, params in (
            ("vision", self.vision, self.vision_params),
            ("text", self.text, self.text_params),
        ):
            params_lib.check_tower_params(
                tower, config, params, source=self.source, origin=self.origin.get(tower)
            )
        if not np.isfinite(self.logit_scale):
            raise ValueError(f"{self.source}: logit_scale={self.logit_scale} is not finite")

    def vision_state(self) -> nnx.State:
        """nnx.State of ``VisionTransformer(self.vision)`` holding the imported weights."""
        return params_lib.tower_state("vision", self.vision, self.vision_params)

    def text_state(self) -> nnx.State:
        """nnx.State of ``TextTransformer(self.text)`` holding the imported weights."""
        return params_lib.tower_state("text", self.text, self.text_params)
