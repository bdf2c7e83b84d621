"""Tests for fjsph_jax.weights.tokenizers: CLIP BPE and FLIP WordPiece behind one encode()."""

import json

import numpy as np
import pytest

from fjsph_jax.weights import (
    ClipBpeTokenizer,
    TokenizerNotFoundError,
    WordPieceTokenizer,
    load_tokenizer,
    require_tokenizer,
)
from fjsph_jax.weights.testing import TINY_BOS_ID, TINY_EOS_ID, write_tiny_clip_tokenizer

TEXTS = ["the cat", "a dog!!", "", "the cat the dog the cat the dog"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_tokenizer")
    write_tiny_clip_tokenizer(str(directory))
    return directory


def test_clip_encode_matches_hand_computed_ids(clip_dir):
    vocab = json.loads((clip_dir / "vocab.json").read_text())
    tokenizer = load_tokenizer(str(clip_dir))
    assert isinstance(tokenizer, ClipBpeTokenizer) and tokenizer.vocab_size == 520
    ids, mask = tokenizer.encode(TEXTS, 7)
    bos, eos = TINY_BOS_ID, TINY_EOS_ID
    the, cat, dog = vocab["the</w>"], vocab["cat</w>"], vocab["dog</w>"]
    want = np.array(
        [
            [bos, the, cat, eos, eos, eos, eos],  # padded with the pad token, which is eos
            [bos, vocab["a</w>"], dog, vocab["!"], vocab["!</w>"], eos, eos],
            [bos, eos, eos, eos, eos, eos, eos],
            [bos, the, cat, the, dog, the, eos],  # truncated: eos kept
        ]
    )
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(mask.sum(1), [4, 6, 2, 7])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(mask, np.arange(7)[None] < mask.sum(1)[:, None])


def test_clip_encode_equals_transformers_call_and_tokenizer_json_only_dirs(clip_dir, tmp_path):
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(clip_dir))
    ours_ids, ours_mask = load_tokenizer(str(clip_dir)).encode(TEXTS, 6)
    want = hf(TEXTS, padding="max_length", truncation=True, max_length=6, return_tensors="np")
    np.testing.assert_array_equal(ours_ids, want["input_ids"])
    np.testing.assert_array_equal(ours_mask, want["attention_mask"])
    hf.save_pretrained(str(tmp_path))  # tokenizer.json (+ tokenizer_config.json), no vocab.json
    assert not (tmp_path / "vocab.json").exists()
    again = load_tokenizer(str(tmp_path))
    assert isinstance(again, ClipBpeTokenizer)
    np.testing.assert_array_equal(again.encode(TEXTS, 6)[0], ours_ids)


def test_wordpiece_encodes_like_flip(tmp_path):
    words = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "dog", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = load_tokenizer(
        str(tmp_path / "vocab.txt")
    )  # a file path: its directory is searched
    assert isinstance(tokenizer, WordPieceTokenizer) and tokenizer.vocab_size == len(words)
    ids, mask = tokenizer.encode(["The CATS!", "dog bird", "the the the the the"], 4)
    np.testing.assert_array_equal(ids, [[5, 6, 7, 9], [8, 2, 0, 0], [5, 5, 5, 5]])  # no [CLS]/[SEP]
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    with_cls = WordPieceTokenizer(str(tmp_path / "vocab.txt"), add_cls=True)
    np.testing.assert_array_equal(with_cls.encode(["the cats"], 3)[0], [[3, 5, 6]])
    with pytest.raises(ValueError, match="texts\\[1\\] has no word pieces"):
        tokenizer.encode(["dog", "  "], 4)


def test_directories_without_tokenizer_files(tmp_path):
    assert load_tokenizer(str(tmp_path)) is None
    with pytest.raises(
        TokenizerNotFoundError, match="vocab.json \\+ merges.txt.*vocab.txt"
    ) as error:
        require_tokenizer(str(tmp_path))
    assert isinstance(error.value, ValueError) and str(tmp_path) in str(error.value)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}}))
    with pytest.raises(ValueError, match="'Unigram' tokenizer"):
        load_tokenizer(str(tmp_path))


def test_bad_arguments_raise(clip_dir):
    tokenizer = load_tokenizer(str(clip_dir))
    with pytest.raises(ValueError, match="context_length must be an integer >= 2"):
        tokenizer.encode(["the cat"], 1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        tokenizer.encode("the cat", 8)
