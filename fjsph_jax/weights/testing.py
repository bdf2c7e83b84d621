"""Tiny checkpoints for tests and examples: a CLIP BPE vocabulary and transformers CLIP models.

``write_tiny_clip_tokenizer`` writes a 520-token CLIP vocabulary (``vocab.json`` +
``merges.txt``): the 256 byte-level symbols, the same with the end-of-word marker
``</w>``, six merges (``ca``, ``cat</w>``, ``do``, ``dog</w>``, ``th``, ``the</w>``),
then ``<|startoftext|>`` (518) and ``<|endoftext|>`` (519), the largest id as in
OpenAI's vocabulary. ``save_tiny_hf_clip`` builds a random ``transformers.CLIPModel``
(torch, imported lazily) with every bias and LayerNorm parameter perturbed so that no
parameter is left at a trivial value, and saves it with ``save_pretrained``.
"""

from __future__ import annotations

import json
import os

TINY_MERGES = ("c a", "ca t</w>", "d o", "do g</w>", "t h", "th e</w>")
TINY_VOCAB_SIZE = 520
TINY_BOS_ID = 518
TINY_EOS_ID = 519


def write_tiny_clip_tokenizer(directory: str) -> int:
    """Writes the tiny CLIP vocab.json + merges.txt into ``directory``; returns the vocab size."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n")
    return len(tokens)


def save_tiny_hf_clip(
    directory: str,
    *,
    vision: dict,
    text: dict,
    projection_dim: int,
    logit_scale: float = 2.3,
    seed: int = 0,
    with_tokenizer: bool = True,
    safe_serialization: bool = True,
):
    """A random transformers CLIPModel saved (with the tiny tokenizer) into ``directory``.

    ``vision`` / ``text`` are CLIPVisionConfig / CLIPTextConfig keyword arguments; the text
    vocabulary defaults to the tiny tokenizer's (520, eos 519, pad 519). Returns the model
    in eval mode.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": TINY_VOCAB_SIZE,
        "bos_token_id": TINY_BOS_ID,
        "eos_token_id": TINY_EOS_ID,
        "pad_token_id": TINY_EOS_ID,
        **text,
    }
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory, safe_serialization=safe_serialization)
    if with_tokenizer:
        write_tiny_clip_tokenizer(directory)
    return model
