"""Code databases: search against brute-force numpy Hamming ranks, save/load, errors."""

import json
import os

import numpy as np
import pytest

from fjsph_jax import code_database as cdb

NUM_ITEMS, BITS, NUM_CLASSES = 40, 12, 3
LABEL_NAMES = ["dog", "beach", "sky"]


def _codes(rng, rows):
    return np.where(rng.random((rows, BITS)) < 0.5, -1, 1).astype(np.int8)


@pytest.fixture(scope="module")
def items():
    rng = np.random.default_rng(0)
    labels = (rng.random((NUM_ITEMS, NUM_CLASSES)) < 0.5).astype(np.uint8)
    labels[:, 0] |= labels.sum(1) == 0
    return {
        "codes": {"image": _codes(rng, NUM_ITEMS), "text": _codes(rng, NUM_ITEMS)},
        "ids": (np.arange(NUM_ITEMS) * 7 + 3)[::-1].copy(),  # unsorted, not row numbers
        "labels": labels,
        "texts": [f"caption {i}" for i in range(NUM_ITEMS)],
        "image_paths": [f"/images/{i}.jpg" for i in range(NUM_ITEMS)],
    }


@pytest.fixture(scope="module")
def database(items):
    return cdb.CodeDatabase.from_codes(
        items["codes"],
        ids=items["ids"],
        labels=items["labels"],
        label_names=LABEL_NAMES,
        texts=items["texts"],
        image_paths=items["image_paths"],
        metadata={"split": "database"},
    )


def _numpy_ranking(query_k, codes_nk, k):
    """Hamming distances and rows of the k nearest, ties by row (stable sort)."""
    distances = np.sum(query_k[None, :] != codes_nk, axis=1)
    rows = np.argsort(distances, kind="stable")[:k]
    return distances[rows], rows


def test_search_matches_numpy_ranking_and_item_fields(database, items):
    rng = np.random.default_rng(1)
    queries = _codes(rng, 3)
    queries[2] = items["codes"]["text"][17]  # an exact copy of item 17's text code
    k = 9
    results = database.search(queries, against="text", k=k)
    assert len(results) == 3
    for query, hits in zip(queries, results):
        distances, rows = _numpy_ranking(query, items["codes"]["text"], k)
        assert [h.rank for h in hits] == list(range(1, k + 1))
        assert [h.distance for h in hits] == distances.tolist()
        assert [h.id for h in hits] == items["ids"][rows].tolist()
        assert [h.text for h in hits] == [items["texts"][r] for r in rows]
        assert [h.image_path for h in hits] == [items["image_paths"][r] for r in rows]
        for hit, row in zip(hits, rows):
            assert hit.labels == tuple(n for n, on in zip(LABEL_NAMES, items["labels"][row]) if on)
    assert results[2][0].distance == 0 and 17 in database.positions(
        [h.id for h in results[2] if h.distance == 0]
    )


def test_codes_positions_and_facts(database, items):
    assert len(database) == NUM_ITEMS and database.bits == BITS
    assert database.modalities == ("image", "text")
    np.testing.assert_array_equal(database.codes("image"), items["codes"]["image"])
    np.testing.assert_array_equal(database.positions(items["ids"][[5, 0, 39]]), [5, 0, 39])
    with pytest.raises(ValueError, match="unknown ids"):
        database.positions([1])
    with pytest.raises(ValueError, match="not 'audio'"):
        database.codes("audio")


def test_save_load_round_trip_and_replace(database, items, tmp_path):
    out = tmp_path / "db"
    database.save(out)
    assert sorted(os.listdir(out)) == [
        "image_codes.npz",
        "items.json",
        "items.npz",
        "metadata.json",
        "text_codes.npz",
    ]
    loaded = cdb.CodeDatabase.load(out)
    np.testing.assert_array_equal(loaded.ids, items["ids"])
    np.testing.assert_array_equal(loaded.labels, items["labels"])
    np.testing.assert_array_equal(loaded.codes("text"), items["codes"]["text"])
    assert loaded.texts == items["texts"] and loaded.image_paths == items["image_paths"]
    assert loaded.label_names == LABEL_NAMES
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["split"] == "database" and meta["bits"] == BITS and meta["num_items"] == NUM_ITEMS
    query = items["codes"]["image"][:2]
    assert loaded.search(query, against="image", k=5) == database.search(
        query, against="image", k=5
    )

    text_only = cdb.CodeDatabase.from_codes(
        {"text": items["codes"]["text"]},
        ids=items["ids"],
        labels=items["labels"],
        label_names=LABEL_NAMES,
        texts=items["texts"],
    )
    text_only.save(out)  # replaces the database, dropping the stale image codes
    again = cdb.CodeDatabase.load(out)
    assert again.modalities == ("text",) and again.image_paths is None
    assert not (out / "image_codes.npz").exists()


def test_save_and_load_errors(database, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a code database"):
        database.save(other)
    with pytest.raises(FileNotFoundError, match="launch/encode.py"):
        cdb.CodeDatabase.load(other)
    broken = tmp_path / "broken"
    database.save(broken)
    os.remove(broken / "text_codes.npz")
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        cdb.CodeDatabase.load(broken)


def test_invalid_parts_are_named(items):
    base = {
        "ids": items["ids"],
        "labels": items["labels"],
        "label_names": LABEL_NAMES,
        "texts": items["texts"],
    }
    with pytest.raises(ValueError, match="texts has 39 entries"):
        cdb.CodeDatabase.from_codes(items["codes"], **{**base, "texts": items["texts"][:-1]})
    with pytest.raises(ValueError, match="ids must be unique"):
        cdb.CodeDatabase.from_codes(items["codes"], **{**base, "ids": np.zeros(NUM_ITEMS, int)})
    with pytest.raises(ValueError, match="label_names has 2 names"):
        cdb.CodeDatabase.from_codes(items["codes"], **{**base, "label_names": LABEL_NAMES[:2]})
    with pytest.raises(ValueError, match="unknown modalities"):
        cdb.CodeDatabase.from_codes({"audio": items["codes"]["text"]}, **base)
    with pytest.raises(ValueError, match="modality must be one of"):
        cdb.parse_modalities("video")
    assert cdb.parse_modalities("both") == ("image", "text")


class _FakeModel:
    """Stands in for a TrainedModel: fixed codes per query, records what it was asked."""

    bits = BITS

    def __init__(self, code):
        self.code, self.calls = code, []

    def encode_texts(self, texts):
        self.calls.append(("text", list(texts)))
        return self.code[None]

    def encode_images(self, images):
        self.calls.append(("image", list(images)))
        return self.code[None]


def test_query_search_targets_and_formatting(database, items):
    model = _FakeModel(items["codes"]["image"][4])
    against, hits = cdb.search_text_or_image(database, model, text="a dog", k=3)
    assert against == "image" and model.calls == [("text", ["a dog"])]  # cross-modal default
    assert hits[0].distance == 0 and hits[0].id == items["ids"][4]
    against, _ = cdb.search_text_or_image(database, model, image="q.jpg", k=3)
    assert against == "text" and model.calls[-1] == ("image", ["q.jpg"])
    against, _ = cdb.search_text_or_image(database, model, text="a dog", against="text", k=3)
    assert against == "text"
    with pytest.raises(ValueError, match="exactly one of text= and image="):
        cdb.search_text_or_image(database, model, k=3)
    with pytest.raises(ValueError, match=r"k=41 exceeds .* 1\.\.40"):
        cdb.search_text_or_image(database, model, text="a dog", k=41)
    model.bits = 64
    with pytest.raises(ValueError, match="64-bit codes"):
        cdb.search_text_or_image(database, model, text="a dog", k=3)

    result = cdb.SearchResult("text", "a dog", "image", "db", hits)
    table = result.format_table().splitlines()
    assert len(table) == 2 + 3 and "a dog" in table[0]
    first = table[2].split()
    assert first[:3] == ["1", str(items["ids"][4]), "0"] and items["texts"][4] in table[2]
    decoded = json.loads(result.to_json())
    assert decoded["against"] == "image" and decoded["hits"][0]["id"] == items["ids"][4]
    assert decoded["hits"][0]["labels"] == list(hits[0].labels)


def test_text_only_database_searches_its_own_modality(items):
    text_only = cdb.CodeDatabase.from_codes(
        {"text": items["codes"]["text"]},
        ids=items["ids"],
        labels=items["labels"],
        label_names=LABEL_NAMES,
        texts=items["texts"],
    )
    assert cdb.default_target(text_only, "text") == "text"
    assert cdb.default_target(text_only, "image") == "text"
    with pytest.raises(ValueError, match="against='image' is not in this database"):
        cdb.search_text_or_image(
            text_only, _FakeModel(items["codes"]["text"][0]), text="x", against="image"
        )


def test_encode_split_of_a_streamed_run_equals_the_in_memory_split(tmp_path):
    """A run trained with config.data.loader=stream: its split is encoded batch by batch
    from the ArrayRecord build, with the codes, ids, texts and labels that decoding the
    whole split into memory gives."""
    from tiny import tiny_built_config, write_tiny_mirflickr

    from fjsph_jax import inference
    from fjsph_jax.training import loop as train

    write_tiny_mirflickr(tmp_path)
    config = tiny_built_config(
        tmp_path, **{"data.loader": "stream", "train.checkpoint_every_steps": 6}
    )
    train.train_and_evaluate(config, str(tmp_path / "run"))
    model = inference.TrainedModel.load(str(tmp_path / "run"))
    streamed = cdb.encode_split(model, "database", batch_size=8)
    model.config.data.loader = "memory"
    in_memory = cdb.encode_split(model, "database", batch_size=8)
    assert len(streamed.ids) == 32  # 40 pairs - 8 query
    np.testing.assert_array_equal(streamed.ids, in_memory.ids)
    np.testing.assert_array_equal(streamed.labels, in_memory.labels)
    assert streamed.texts == in_memory.texts and streamed.label_names == in_memory.label_names
    for modality in ("image", "text"):
        np.testing.assert_array_equal(streamed.codes(modality), in_memory.codes(modality))
    assert len(np.unique(streamed.codes("image"), axis=0)) > 1
