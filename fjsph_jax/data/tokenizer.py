"""A small word-level tokenizer for the embedded demo dataset.

Text is lowercased and split into alphanumeric words (``[a-z0-9]+``); everything else
(punctuation, whitespace) separates words. The vocabulary is the four special tokens
followed by the sorted words of a corpus::

    <pad> = 0, <bos> = 1, <eos> = 2, <unk> = 3, then the words in sorted order.

``encode`` gives ``[bos] + words + [eos]``, truncating the words so that ``eos`` is
always kept, right-padded with ``pad`` to the context length. Real checkpoints use
the tokenizers shipped with them (transformers); this one has no dependencies.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))

_WORD = re.compile(r"[a-z0-9]+")
_FORMAT = "fjsph_jax.WordTokenizer"
_FORMAT_VERSION = 1


def split_words(text: str) -> list[str]:
    """Lowercased alphanumeric words of ``text``: ``"A red-Cube!" -> ["a", "red", "cube"]``."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps words to ids through a fixed vocabulary (special tokens first)."""

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, "
                             f"got {vocab[:len(SPECIAL_TOKENS)]}")
        if len(set(vocab)) != len(vocab):
            duplicates = sorted(w for w, n in collections.Counter(vocab).items() if n > 1)
            raise ValueError(f"vocab has duplicate entries: {duplicates[:5]}")
        self._vocab = vocab
        self._ids = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary of the words occurring at least ``min_count`` times, sorted."""
        if int(min_count) != min_count or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, got a single str")
        counts = collections.Counter(w for text in texts for w in split_words(text))
        words = sorted(w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS)
        return cls(list(SPECIAL_TOKENS) + words)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._vocab)

    @property
    def vocab(self) -> list[str]:
        """The words in id order (a copy)."""
        return list(self._vocab)

    def token_id(self, word: str) -> int:
        """Id of ``word``, or the ``<unk>`` id if it is not in the vocabulary."""
        return self._ids.get(word, UNK_ID)

    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both int32 ``[N, context_length]``.

        Row i is ``[bos] + words(texts[i])[:context_length - 2] + [eos]`` followed by
        ``pad``; the mask is 1 on real tokens (bos, words, eos) and 0 on padding.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, got a single str; wrap it in a list")
        if int(context_length) != context_length or context_length < 2:
            raise ValueError(f"context_length must be an integer >= 2 (room for <bos> and <eos>), "
                             f"got {context_length!r}")
        context_length = int(context_length)
        input_ids = np.full((len(texts), context_length), PAD_ID, dtype=np.int32)
        for row, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{row}] is empty; every text needs at least one word")
            words = split_words(text)[:context_length - 2]
            ids = [BOS_ID] + [self._ids.get(w, UNK_ID) for w in words] + [EOS_ID]
            input_ids[row, :len(ids)] = ids
        attention_mask = (input_ids != PAD_ID).astype(np.int32)
        return input_ids, attention_mask

    def decode(self, input_ids: Sequence[int]) -> str:
        """Words of one id row, without special tokens, joined by spaces."""
        return " ".join(self._vocab[i] for i in np.asarray(input_ids).tolist()
                        if i >= len(SPECIAL_TOKENS))

    def to_json(self) -> str:
        """A JSON document that :meth:`from_json` turns back into an equal tokenizer."""
        return json.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "vocab": self._vocab})

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        """Inverse of :meth:`to_json`; ValueError if the document is not one."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a WordTokenizer JSON document: {error}") from error
        if (not isinstance(document, dict) or document.get("format") != _FORMAT
                or document.get("version") != _FORMAT_VERSION
                or not isinstance(document.get("vocab"), list)
                or not all(isinstance(w, str) for w in document["vocab"])):
            raise ValueError(f'not a WordTokenizer JSON document: expected {{"format": "{_FORMAT}", '
                             f'"version": {_FORMAT_VERSION}, "vocab": [str, ...]}}')
        return cls(document["vocab"])

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        """Read a tokenizer written by :meth:`save`; errors name ``path``."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {os.fspath(path)!r} does not exist; "
                                    "write one with WordTokenizer.save(path)")
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"tokenizer file {os.fspath(path)!r} is corrupt: {error}") from error

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and self._vocab == other._vocab

    def __hash__(self) -> int:
        return hash(tuple(self._vocab))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"
