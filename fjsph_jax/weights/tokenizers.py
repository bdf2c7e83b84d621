"""Tokenizers shipped with pretrained checkpoints, behind one small interface.

Both classes offer ``vocab_size`` and ``encode(texts, context_length) -> (input_ids,
attention_mask)``, int32 ``[N, context_length]`` each, the contract of
``fjsph_jax.data.tokenizer.WordTokenizer.encode``, so training can use any of them.

* :class:`ClipBpeTokenizer`: CLIP's byte-level BPE, read from a checkpoint directory
  (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``) by transformers' CLIPTokenizer
  (backed by the tokenizers library; no torch). Row i is
  ``[bos] + bpe(texts[i])[:L - 2] + [eos]``, then the pad id (CLIP's own pad token, which
  for OpenAI's vocabulary is the end-of-text token) up to ``L``: exactly what
  ``tokenizer(texts, padding="max_length", truncation=True, max_length=L)`` gives, eos kept.
* :class:`WordPieceTokenizer`: BERT's uncased WordPiece from ``vocab.txt``, as FLIP feeds
  its text tower: lower-cased word pieces with no [CLS]/[SEP] (optionally a leading [CLS],
  FLIP's ``aug.txt.cls_token``), truncated to ``L``, padded with [PAD] (id 0).

The mask is 1 on real tokens and 0 on padding.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

CLIP_TOKENIZER_FILES = ("tokenizer.json",)
CLIP_VOCAB_FILES = ("vocab.json", "merges.txt")
WORDPIECE_FILES = ("vocab.txt",)
# Files a checkpoint's tokenizer may need; launch/convert.py copies those present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)


class TokenizerNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint directory has no tokenizer files."""


def _check_texts(texts: Sequence[str], context_length: int, minimum: int) -> int:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, got a single str; wrap it in a list")
    if int(context_length) != context_length or context_length < minimum:
        raise ValueError(f"context_length must be an integer >= {minimum}, got {context_length!r}")
    return int(context_length)


def _pack(rows: list[list[int]], context_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.full((len(rows), context_length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), context_length), dtype=np.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


class ClipBpeTokenizer:
    """CLIP's BPE tokenizer from a checkpoint directory (see module docstring)."""

    def __init__(self, directory: str):
        from tokenizers import Tokenizer
        from transformers import CLIPTokenizer  # tokenizers-backed; does not import torch

        try:
            self._hf = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(
                f"{directory}: cannot read the CLIP tokenizer files ({error})"
            ) from error
        # A private copy of the Rust tokenizer with padding and truncation off (transformers
        # leaves the shared one in whatever state its last __call__ set).
        self._backend = Tokenizer.from_str(self._hf.backend_tokenizer.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self.bos_id = int(self._hf.bos_token_id)
        self.eos_id = int(self._hf.eos_token_id)
        pad = self._hf.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.directory = directory

    @property
    def vocab_size(self) -> int:
        """Number of ids, special and added tokens included."""
        return len(self._hf)

    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int32 ``[N, context_length]`` (module docstring)."""
        length = _check_texts(texts, context_length, 2)
        pieces = self._backend.encode_batch(list(texts), add_special_tokens=False)
        rows = [[self.bos_id] + piece.ids[: length - 2] + [self.eos_id] for piece in pieces]
        return _pack(rows, length, self.pad_id)

    def __repr__(self) -> str:
        return f"ClipBpeTokenizer({self.directory!r}, vocab_size={self.vocab_size})"


class WordPieceTokenizer:
    """BERT uncased WordPiece over ``vocab.txt``, encoded as FLIP does (see module docstring)."""

    def __init__(self, vocab_file: str, *, add_cls: bool = False):
        from tokenizers import BertWordPieceTokenizer

        try:
            self._backend = BertWordPieceTokenizer(vocab_file, lowercase=True)
        except Exception as error:  # noqa: BLE001 - the Rust reader raises plain Exceptions
            raise ValueError(
                f"{vocab_file}: cannot read the WordPiece vocabulary ({error})"
            ) from error
        self.pad_id = self._special_id("[PAD]", vocab_file)
        self.cls_id = self._special_id("[CLS]", vocab_file) if add_cls else None
        self.vocab_file = vocab_file

    def _special_id(self, token: str, vocab_file: str) -> int:
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{vocab_file}: the vocabulary has no {token} token")
        return int(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of word pieces in vocab.txt."""
        return self._backend.get_vocab_size()

    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int32 ``[N, context_length]`` (module docstring)."""
        lead = [] if self.cls_id is None else [self.cls_id]
        length = _check_texts(texts, context_length, 1 + len(lead))
        pieces = self._backend.encode_batch(list(texts), add_special_tokens=False)
        rows = []
        for i, piece in enumerate(pieces):
            if not piece.ids:
                raise ValueError(f"texts[{i}] has no word pieces; every text needs at least one")
            rows.append(lead + piece.ids[: length - len(lead)])
        return _pack(rows, length, self.pad_id)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer({self.vocab_file!r}, vocab_size={self.vocab_size})"


def _tokenizer_json_model(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return (json.load(f).get("model") or {}).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(path: str, *, add_cls: bool = False):
    """The tokenizer whose files are in directory ``path`` (or beside file ``path``), or None.

    ``tokenizer.json`` (a BPE model) or ``vocab.json`` + ``merges.txt`` give a
    ClipBpeTokenizer; ``vocab.txt`` gives a WordPieceTokenizer (``add_cls`` as FLIP's
    ``aug.txt.cls_token``). Returns None when none of these files is there.
    """
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    has = lambda name: os.path.isfile(os.path.join(directory, name))  # noqa: E731
    if has("tokenizer.json"):
        model = _tokenizer_json_model(os.path.join(directory, "tokenizer.json"))
        if model == "WordPiece" and has("vocab.txt"):
            return WordPieceTokenizer(os.path.join(directory, "vocab.txt"), add_cls=add_cls)
        if model != "BPE":
            raise ValueError(
                f"{directory}/tokenizer.json holds a {model!r} tokenizer; supported: CLIP BPE "
                "(tokenizer.json or vocab.json + merges.txt) and BERT WordPiece (vocab.txt)"
            )
        return ClipBpeTokenizer(directory)
    if all(has(name) for name in CLIP_VOCAB_FILES):
        return ClipBpeTokenizer(directory)
    if has("vocab.txt"):
        return WordPieceTokenizer(os.path.join(directory, "vocab.txt"), add_cls=add_cls)
    return None


def require_tokenizer(path: str, *, add_cls: bool = False):
    """Like :func:`load_tokenizer`, but raises TokenizerNotFoundError instead of returning None."""
    tokenizer = load_tokenizer(path, add_cls=add_cls)
    if tokenizer is None:
        directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        raise TokenizerNotFoundError(
            f"{directory} has no tokenizer files: expected "
            f"{' or '.join(CLIP_TOKENIZER_FILES)} or {' + '.join(CLIP_VOCAB_FILES)} (CLIP BPE, "
            f"e.g. from a transformers CLIP checkpoint), or {WORDPIECE_FILES[0]} (BERT uncased "
            "WordPiece for FLIP, e.g. vocab/vocab_bert_base.txt of facebookresearch/flip); copy "
            "them into that directory"
        )
    return tokenizer
