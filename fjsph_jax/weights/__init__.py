"""Pretrained encoders: importers (transformers CLIP, OpenAI/OpenCLIP, FLIP t5x) and their API.

    from fjsph_jax.weights import load_pretrained
    model, tokenizer = load_pretrained("path/to/clip-vit-base-patch32")
    ids, mask = tokenizer.encode(["a photo of a cat"], model.text.config.context_length)
    text_embeds = model.encode_text(ids, mask)          # [1, 512], unit norm
    image_embeds = model.encode_image(pixels)           # pixels [B, 224, 224, 3], normalised

See docs/pretrained.md for the supported checkpoints. Nothing here imports torch unless a
``.pt``/``.bin`` file is read.
"""

from fjsph_jax.weights.convert import convert_checkpoint
from fjsph_jax.weights.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointKeysError,
    UnsupportedCheckpointError,
)
from fjsph_jax.weights.pretrained import (
    CLIPEncoder,
    checkpoint_normalization,
    detect_format,
    fjsph_tower_configs,
    init_fjsph_from_pretrained,
    load_pretrained,
    load_towers,
)
from fjsph_jax.weights.tokenizers import (
    ClipBpeTokenizer,
    TokenizerNotFoundError,
    WordPieceTokenizer,
    load_tokenizer,
    require_tokenizer,
)
from fjsph_jax.weights.towers import PretrainedTowers

__all__ = [
    "CLIPEncoder",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKeysError",
    "ClipBpeTokenizer",
    "PretrainedTowers",
    "TokenizerNotFoundError",
    "UnsupportedCheckpointError",
    "WordPieceTokenizer",
    "checkpoint_normalization",
    "convert_checkpoint",
    "detect_format",
    "fjsph_tower_configs",
    "init_fjsph_from_pretrained",
    "load_pretrained",
    "load_tokenizer",
    "load_towers",
    "require_tokenizer",
]
