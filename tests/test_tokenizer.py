"""Tests for fjsph_jax.data.tokenizer: the demo's word-level tokenizer."""

import numpy as np
import pytest

from fjsph_jax.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID,
                                      WordTokenizer, split_words)

TEXTS = ["A red circle and a blue square.", "there is a red Cross", "blue, blue circle!"]


@pytest.fixture
def tokenizer():
    return WordTokenizer.from_texts(TEXTS)


def test_special_token_ids():
    assert SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)


def test_split_words_lowercases_and_drops_punctuation():
    assert split_words("A red-Cube, 2 dogs!") == ["a", "red", "cube", "2", "dogs"]


def test_vocabulary_is_specials_then_sorted_words(tokenizer):
    words = ["a", "and", "blue", "circle", "cross", "is", "red", "square", "there"]
    assert tokenizer.vocab == list(SPECIAL_TOKENS) + words
    assert tokenizer.vocab_size == 4 + len(words)


def test_min_count_drops_rare_words():
    frequent = WordTokenizer.from_texts(TEXTS, min_count=2)
    assert frequent.vocab == list(SPECIAL_TOKENS) + ["a", "blue", "circle", "red"]
    with pytest.raises(ValueError, match="min_count"):
        WordTokenizer.from_texts(TEXTS, min_count=0)


def test_encode_matches_hand_computed_ids(tokenizer):
    ids, mask = tokenizer.encode(["Red circle", "a blue square and a red cross"], 8)
    v = {w: i for i, w in enumerate(tokenizer.vocab)}
    expected = np.array([
        [BOS_ID, v["red"], v["circle"], EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        [BOS_ID, v["a"], v["blue"], v["square"], v["and"], v["a"], v["red"], EOS_ID],
    ])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.shape == mask.shape == (2, 8)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8])


def test_truncation_keeps_eos(tokenizer):
    ids, mask = tokenizer.encode(["a red circle and a blue square"], 4)
    v = {w: i for i, w in enumerate(tokenizer.vocab)}
    np.testing.assert_array_equal(ids, [[BOS_ID, v["a"], v["red"], EOS_ID]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1]])
    ids, _ = tokenizer.encode(["a red circle"], 2)
    np.testing.assert_array_equal(ids, [[BOS_ID, EOS_ID]])


def test_unknown_words_map_to_unk(tokenizer):
    ids, _ = tokenizer.encode(["a purple circle"], 6)
    assert ids[0, 2] == UNK_ID
    assert tokenizer.token_id("purple") == UNK_ID
    assert tokenizer.decode(ids[0]) == "a circle"


def test_encode_errors(tokenizer):
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        tokenizer.encode(["a red circle", "  "], 8)
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.encode(["a red circle"], 1)
    with pytest.raises(TypeError, match="single str"):
        tokenizer.encode("a red circle", 8)


def test_json_round_trip(tokenizer):
    restored = WordTokenizer.from_json(tokenizer.to_json())
    assert restored == tokenizer
    assert restored.vocab == tokenizer.vocab
    texts = ["there is a red cross", "blue unknownword"]
    for a, b in zip(restored.encode(texts, 7), tokenizer.encode(texts, 7)):
        np.testing.assert_array_equal(a, b)


def test_save_and_load(tokenizer, tmp_path):
    path = tmp_path / "vocab.json"
    tokenizer.save(path)
    assert WordTokenizer.load(path) == tokenizer
    assert WordTokenizer.load(str(path)) == tokenizer


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        WordTokenizer.load(path)


@pytest.mark.parametrize("content", [
    "{not json", '{"format": "something else", "version": 1, "vocab": []}',
    '{"format": "fjsph_jax.WordTokenizer", "version": 1, "vocab": ["a", "b"]}',
    '{"format": "fjsph_jax.WordTokenizer", "version": 1, '
    '"vocab": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "a"]}',
])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"broken\.json.*corrupt"):
        WordTokenizer.load(path)
