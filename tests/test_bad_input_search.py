"""Search refuses a model that is not the run that wrote the code database, and warns when a
text query has no word the run's tokenizer knows (its codes would carry no meaning)."""
import logging
import types

import numpy as np
import pytest

from fjsph_jax import code_database
from fjsph_jax.data.tokenizer import WordTokenizer
from fjsph_jax.training.checkpointing import config_fingerprint
from tiny import tiny_config


def _database(config, tmp_path):
    codes = np.where(np.random.default_rng(0).random((4, 16)) > 0.5, 1, -1).astype(np.int8)
    database = code_database.CodeDatabase.from_codes(
        {"image": codes}, ids=np.arange(4), labels=np.eye(4, dtype=np.uint8),
        label_names=list("abcd"), texts=["a red ball"] * 4,
        metadata={"config_fingerprint": config_fingerprint(config)})
    database.save(str(tmp_path / "db"))
    return code_database.CodeDatabase.load(str(tmp_path / "db"))


def test_a_model_of_another_run_is_refused(tmp_path):
    database = _database(tiny_config(), tmp_path)
    same = types.SimpleNamespace(config=tiny_config(), workdir="run-a")
    code_database.check_same_run(database, same, "db")  # the run that wrote it: fine
    other = types.SimpleNamespace(config=tiny_config(bits=32), workdir="run-b")
    with pytest.raises(ValueError, match="written by a run of another config.*--workdir"):
        code_database.check_same_run(database, other, "db")


def test_a_query_of_unknown_words_is_warned_about(caplog):
    tokenizer = WordTokenizer.from_texts(["a red ball", "a blue cube"])
    with caplog.at_level(logging.WARNING):
        code_database.warn_unknown_words(tokenizer, "a green pyramid")
    assert not caplog.records  # 'a' is known
    with caplog.at_level(logging.WARNING):
        code_database.warn_unknown_words(tokenizer, "zebra xylophone")
    (record,) = caplog.records
    assert "no word of the query 'zebra xylophone'" in record.getMessage()
    assert "carry no meaning" in record.getMessage()
