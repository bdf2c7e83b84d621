"""Hand-crafted features: colour histograms, bag of words, and that they retrieve."""

import logging

import numpy as np
import pytest

from fjsph_jax.data.dataset import PairedDataset, Splits, make_splits
from fjsph_jax.data.handcrafted import (
    BagOfWords,
    colour_bins,
    colour_histograms,
    handcrafted_features,
    tokenize,
)
from fjsph_jax.data.synthetic import COLOR_RGB, make_synthetic_dataset

LOGGER = "fjsph_jax.data.handcrafted"
RED, GREEN, BLUE = (COLOR_RGB[c] for c in ("red", "green", "blue"))


def _scene(objects, size=32, background=(120, 122, 118)):
    """One image: a grey background and filled rectangles ``(y0, x0, y1, x1, rgb)``."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    for y0, x0, y1, x1, rgb in objects:
        image[y0:y1, x0:x1] = rgb
    return image


def _cell(features, cell, bins=6):
    return features[cell * bins : (cell + 1) * bins]


# ---- images -----------------------------------------------------------------------------
def test_colour_bins_separate_the_demo_colours_from_grey():
    pixels = np.array([[[RED, GREEN, BLUE, (120, 122, 118), (255, 255, 0), (10, 0, 0)]]],
                      np.uint8)
    bins, num_bins = colour_bins(pixels)
    assert num_bins == 6
    # red 0 deg -> 0, green -> 2 (120), blue -> 4 (240), grey dropped, yellow -> 1 (60),
    # near-black dropped (value below min_value)
    np.testing.assert_array_equal(bins[0, 0], [0, 2, 4, -1, 1, -1])
    bins, num_bins = colour_bins(pixels, achromatic_bins=2)
    assert num_bins == 8 and bins[0, 0, 3] == 6 and bins[0, 0, 5] == 6  # dark grey level
    # hue sectors are centred: red hues just below 360 deg stay red
    assert colour_bins(np.array([[[[220, 40, 60]]]], np.uint8))[0].item() == 0


def test_shapes_normalisation_and_determinism():
    images = make_synthetic_dataset(50, seed=3).images
    features = colour_histograms(images)
    assert features.shape == (50, 4 * 4 * 6) and features.dtype == np.float32
    np.testing.assert_array_equal(features, colour_histograms(images))
    np.testing.assert_array_equal(features, colour_histograms(images, chunk=7))  # chunked
    assert colour_histograms(images, grid=2, hue_bins=12).shape == (50, 2 * 2 * 12)
    # L1 per cell over all pixels, then sqrt: with achromatic bins every cell has L2 norm 1
    full = colour_histograms(images, achromatic_bins=3).reshape(50, 16, 9)
    np.testing.assert_allclose(np.linalg.norm(full, axis=-1), 1.0, rtol=1e-6)
    raw = colour_histograms(images, achromatic_bins=3, sqrt=False).reshape(50, 16, 9)
    np.testing.assert_allclose(raw.sum(-1), 1.0, rtol=1e-6)
    # without them, a cell's squared norm is its fraction of coloured pixels
    coloured = colour_histograms(images).reshape(50, 16, 6)
    np.testing.assert_allclose((coloured**2).sum(-1), full[..., :6].__pow__(2).sum(-1),
                               rtol=1e-6)
    assert np.all((coloured**2).sum(-1) <= 1 + 1e-6)


def test_same_objects_in_same_cells_give_identical_histograms():
    # a red square inside cell (0, 0) (pixels 0..7 at grid 4), moved within the cell,
    # and a blue bar in cell (2, 3), moved too; the background brightness differs
    a = _scene([(1, 1, 5, 5, RED), (17, 25, 19, 31, BLUE)])
    b = _scene([(3, 2, 7, 6, RED), (21, 24, 23, 30, BLUE)], background=(140, 141, 139))
    features = colour_histograms(np.stack([a, b]))
    np.testing.assert_array_equal(features[0], features[1])
    red_fraction = 16 / 64
    np.testing.assert_allclose(_cell(features[0], 0), [np.sqrt(red_fraction), 0, 0, 0, 0, 0])
    np.testing.assert_allclose(_cell(features[0], 2 * 4 + 3), [0, 0, 0, 0, np.sqrt(12 / 64), 0])
    # moved into another cell: the mass moves between cells
    c = _scene([(1, 9, 5, 13, RED), (17, 25, 19, 31, BLUE)])
    moved = colour_histograms(c[None])[0]
    assert _cell(moved, 0).sum() == 0 and _cell(moved, 1)[0] > 0


def test_a_colour_change_moves_mass_between_bins_of_that_cell_only():
    red = _scene([(9, 9, 15, 15, RED), (0, 24, 8, 32, GREEN)])
    blue = _scene([(9, 9, 15, 15, BLUE), (0, 24, 8, 32, GREEN)])
    f_red, f_blue = colour_histograms(np.stack([red, blue]))
    cell = 1 * 4 + 1
    assert _cell(f_red, cell)[0] > 0 and _cell(f_red, cell)[4] == 0
    assert _cell(f_blue, cell)[0] == 0 and _cell(f_blue, cell)[4] == _cell(f_red, cell)[0]
    others = np.ones(16 * 6, bool)
    others[cell * 6 : cell * 6 + 6] = False
    np.testing.assert_array_equal(f_red[others], f_blue[others])  # green cell untouched
    assert _cell(f_red, 3)[2] == 1.0  # the full green cell


def test_image_argument_errors():
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        colour_histograms(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="grid=8 needs images of at least 8 x 8"):
        colour_histograms(np.zeros((1, 4, 4, 3), np.uint8), grid=8)
    with pytest.raises(ValueError, match="grid must be an integer >= 1"):
        colour_histograms(np.zeros((1, 4, 4, 3), np.uint8), grid=0)


# ---- texts ------------------------------------------------------------------------------
def test_tokenize_lowercases_and_drops_stopwords():
    assert tokenize("There is A Red circle, and a blue-cross!") == [
        "red", "circle", "blue", "cross"]
    assert tokenize("a red circle", stopwords=()) == ["a", "red", "circle"]
    assert tokenize("a red circle beside", bigrams=True) == [
        "red", "circle", "beside", "red circle", "circle beside"]


def test_vocabulary_from_training_captions_only_binary_or_counts():
    train = ["a red circle", "a red square and a red cross", "blue circle", "green dog"]
    bow = BagOfWords.fit(train)
    # by caption frequency, then alphabetically; stopwords gone
    assert bow.vocabulary == ("circle", "red", "blue", "cross", "dog", "green", "square")
    counts = BagOfWords.fit(train, min_count=2, binary=False)
    assert counts.vocabulary == ("circle", "red")
    features = counts.transform(["red red circle", "purple red"])
    np.testing.assert_array_equal(features, [[1, 2], [0, 1]])
    binary = bow.transform(["Red red CIRCLE", "a purple hexagon circle"])
    assert binary.dtype == np.float32 and binary.shape == (2, 7)
    np.testing.assert_array_equal(binary[0], [1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(binary[1], [1, 0, 0, 0, 0, 0, 0])  # unknown words ignored
    assert BagOfWords.fit(train, max_words=3).vocabulary == ("circle", "red", "blue")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        BagOfWords.fit(["a the and"])


def test_captions_with_no_known_word_are_zero_rows_and_reported(caplog):
    bow = BagOfWords.fit(["red circle", "blue square"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        features = bow.transform(["red circle", "a purple hexagon", "the and", "blue"],
                                 what="test captions")
    assert not features[1].any() and not features[2].any() and features[3].any()
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "2 of 4 test captions" in message and "[1, 2]" in message
    assert "4-term training vocabulary" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        bow.transform(["red", "square"])
    assert not caplog.records  # nothing to report


# ---- both -------------------------------------------------------------------------------
def test_handcrafted_features_use_training_vocabulary_and_keep_the_splits(caplog):
    dataset = make_synthetic_dataset(60, seed=1)
    texts = list(dataset.texts)
    texts[0] = "a purple hexagon"  # a query row: words never seen in training
    texts[5] = "a purple hexagon beside a red circle"
    dataset = PairedDataset(dataset.name, dataset.images, texts, dataset.labels,
                            dataset.label_names)
    splits = Splits(query=np.arange(0, 10), database=np.arange(10, 60),
                    train=np.arange(10, 40))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        features = handcrafted_features(dataset, splits)
    assert "1 of 60 captions of 'synthetic'" in caplog.text and "[0]" in caplog.text
    assert features.source == "handcrafted:synthetic" and features.skipped == 0
    assert features.image_features.shape == (60, 96)
    bow = BagOfWords.fit([texts[i] for i in range(10, 40)])
    assert "purple" not in bow.vocabulary and features.text_dim == len(bow)
    np.testing.assert_array_equal(features.text_features, bow.transform(texts))
    np.testing.assert_array_equal(features.labels, dataset.labels)
    assert features.label_names == dataset.label_names
    np.testing.assert_array_equal(features.splits.train, splits.train)
    again = handcrafted_features(dataset, splits)
    np.testing.assert_array_equal(again.image_features, features.image_features)


def _map_all(query, database, query_labels, database_labels):
    """MAP over all database items by cosine similarity; relevant = share >= 1 label."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = unit(query) @ unit(database).T
    relevant = (query_labels.astype(np.float32) @ database_labels.T.astype(np.float32)) > 0
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1).astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    num_relevant = hits.sum(axis=1)
    ap = (precision * hits).sum(axis=1) / np.maximum(num_relevant, 1)
    return float(ap[num_relevant > 0].mean()), float(relevant.mean())


def test_features_retrieve_relevant_items_well_above_chance():
    dataset = make_synthetic_dataset(1200, seed=0)
    splits = make_splits(1200, 200, 800, seed=0)
    features = handcrafted_features(dataset, splits)
    q, d = splits.query, splits.database
    image_map, chance = _map_all(features.image_features[q], features.image_features[d],
                                 dataset.labels[q], dataset.labels[d])
    text_map, _ = _map_all(features.text_features[q], features.text_features[d],
                           dataset.labels[q], dataset.labels[d])
    # measured: chance 0.307, image 0.444 (grid 4), text 0.694 (binary unigrams)
    assert 0.25 < chance < 0.36
    assert image_map > chance + 0.10, (image_map, chance)
    assert text_map > chance + 0.30, (text_map, chance)
    # a random ranking scores about the chance level
    rng = np.random.default_rng(0)
    random_map, _ = _map_all(rng.normal(size=(200, 8)), rng.normal(size=(1000, 8)),
                             dataset.labels[q], dataset.labels[d])
    assert abs(random_map - chance) < 0.03
