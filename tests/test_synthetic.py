"""Tests for fjsph_jax.data.synthetic: the embedded multi-label scene dataset."""

import itertools
import os
import re
import time

import numpy as np
import pytest

from fjsph_jax.data import synthetic
from fjsph_jax.data.synthetic import (COLORS, COLOR_RGB, SHAPES, chance_relevance,
                                      concept_names, make_synthetic_dataset)

NUM_ITEMS = 400


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(NUM_ITEMS, seed=3)


@pytest.fixture(scope="module")
def scenes():
    """A layout, its full masks, and its rendering with the default noise."""
    rng = np.random.default_rng(11)
    layout = synthetic.sample_layouts(rng, 300, image_size=32, min_objects=1, max_objects=3,
                                      num_shapes=len(SHAPES), num_colors=len(COLORS))
    masks = synthetic.shape_masks(layout, 32)
    images, visible = synthetic.render_images(rng, layout, 32, synthetic.DEFAULT_NOISE_STD)
    return layout, masks, images, visible


def parse_concepts(caption, names):
    """Concept names found in a caption, as whole words."""
    return {name for name in names if re.search(rf"\b{name}\b", caption)}


def test_concept_names_are_colour_major_pairs():
    assert concept_names(("circle", "cross"), ("red", "blue")) == [
        "red circle", "red cross", "blue circle", "blue cross"]
    assert len(concept_names()) == len(SHAPES) * len(COLORS)
    assert concept_names()[0] == f"{COLORS[0]} {SHAPES[0]}"


def test_shapes_dtypes_and_names(dataset):
    num_concepts = len(SHAPES) * len(COLORS)
    assert dataset.name == "synthetic"
    assert dataset.images.shape == (NUM_ITEMS, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.labels.shape == (NUM_ITEMS, num_concepts) and dataset.labels.dtype == np.uint8
    assert len(dataset.texts) == NUM_ITEMS and all(isinstance(t, str) for t in dataset.texts)
    assert dataset.label_names == concept_names()
    small = make_synthetic_dataset(5, image_size=24, num_shapes=2, num_colors=2, seed=1)
    assert small.images.shape == (5, 24, 24, 3)
    assert small.label_names == concept_names(SHAPES[:2], COLORS[:2])


def test_deterministic_from_seed(dataset):
    again = make_synthetic_dataset(NUM_ITEMS, seed=3)
    assert again.images.tobytes() == dataset.images.tobytes()
    assert again.labels.tobytes() == dataset.labels.tobytes()
    assert again.texts == dataset.texts
    other = make_synthetic_dataset(NUM_ITEMS, seed=4)
    assert other.images.tobytes() != dataset.images.tobytes()
    assert not np.array_equal(other.labels, dataset.labels)
    assert other.texts != dataset.texts


def test_one_to_three_distinct_objects(dataset):
    counts = dataset.labels.sum(axis=1)
    assert counts.min() == 1 and counts.max() == 3
    assert set(np.unique(counts)) == {1, 2, 3}
    exactly_two = make_synthetic_dataset(50, seed=0, min_objects=2, max_objects=2)
    np.testing.assert_array_equal(exactly_two.labels.sum(axis=1), 2)


def test_captions_name_exactly_the_labelled_concepts(dataset):
    names = dataset.label_names
    concept_words = set(SHAPES) | set(COLORS)
    for caption, row in zip(dataset.texts, dataset.labels):
        labelled = {names[c] for c in np.flatnonzero(row)}
        assert parse_concepts(caption, names) == labelled, caption
        # No distractor words: every colour or shape word belongs to one named object.
        words = re.findall(r"[a-z]+", caption)
        assert sum(w in concept_words for w in words) == 2 * len(labelled), caption


def test_captions_vary_in_template_and_order(dataset):
    two_object = [t for t, row in zip(dataset.texts, dataset.labels) if row.sum() == 2]
    openings = {" ".join(t.split()[:2]) for t in dataset.texts}
    assert len(openings) >= 6
    assert any(" next to " in t for t in two_object)
    assert any("," in t and " and " not in t for t in dataset.texts)  # the bare list template
    # The same pair of concepts is named in both orders somewhere.
    names = dataset.label_names
    order_seen = set()
    for caption, row in zip(two_object, (r for r in dataset.labels if r.sum() == 2)):
        first, second = sorted(np.flatnonzero(row), key=lambda c: caption.index(names[c]))
        order_seen.add((first < second))
    assert order_seen == {True, False}


def test_colour_and_shape_each_underdetermine_the_label(dataset):
    present = dataset.labels.reshape(-1, len(COLORS), len(SHAPES)).any(axis=0)  # [colour, shape]
    assert (present.sum(axis=1) >= 2).all(), "each colour must appear in several shapes"
    assert (present.sum(axis=0) >= 2).all(), "each shape must appear in several colours"


def test_shape_masks_match_pointwise_formulas():
    size = 20
    layout = synthetic.SceneLayout(
        concept_ids=np.array([[0, 1, 2, 3]]), shape_ids=np.array([[0, 1, 2, 3]]),
        color_ids=np.zeros((1, 4), np.int64),
        centers=np.array([[[6.3, 7.1], [12.0, 10.5], [9.7, 8.2], [10.0, 10.0]]], np.float32),
        radii=np.array([[4.2, 5.0, 6.0, 5.5]], np.float32),
        rgb=np.zeros((1, 4, 3), np.float32))
    masks = synthetic.shape_masks(layout, size)
    assert masks.shape == (1, 4, size, size) and masks.dtype == bool

    def inside(shape, x, y, cx, cy, r):
        dx, dy = x + 0.5 - cx, y + 0.5 - cy
        if shape == "circle":
            return dx ** 2 + dy ** 2 <= r ** 2
        if shape == "square":
            return abs(dx) <= 0.85 * r and abs(dy) <= 0.85 * r
        if shape == "triangle":
            return abs(dy) <= r and abs(dx) <= 1.1 * r * (dy + r) / (2 * r)
        return min(abs(dx), abs(dy)) <= 0.35 * r and max(abs(dx), abs(dy)) <= r

    for k, shape in enumerate(SHAPES):
        (cx, cy), r = layout.centers[0, k], layout.radii[0, k]
        expected = np.array([[inside(shape, x, y, cx, cy, r) for x in range(size)]
                             for y in range(size)])
        np.testing.assert_array_equal(masks[0, k], expected, err_msg=shape)
    # Triangle apex up: its top row is narrower than its bottom row.
    rows = np.flatnonzero(masks[0, 2].any(axis=1))
    assert masks[0, 2, rows[0]].sum() < masks[0, 2, rows[-1]].sum()
    # Empty slots draw nothing.
    empty = synthetic.SceneLayout(**{**layout.__dict__, "shape_ids": np.full((1, 4), -1),
                                     "concept_ids": np.full((1, 4), -1)})
    assert not synthetic.shape_masks(empty, size).any()


def test_object_pixels_carry_the_object_colour(scenes):
    layout, masks, images, visible = scenes
    palette = np.array([COLOR_RGB[c] for c in COLORS], np.float64)
    n_checked = 0
    for i, k in zip(*np.nonzero(layout.present)):
        pixels = images[i][visible[i, k]].astype(np.float64)  # [P, 3]
        assert len(pixels) >= 20
        mean = pixels.mean(axis=0)
        np.testing.assert_allclose(mean, layout.rgb[i, k], atol=6.0)
        nearest = np.argmin(np.linalg.norm(palette - mean, axis=1))
        assert nearest == layout.color_ids[i, k]
        n_checked += 1
    assert n_checked > 300
    # Background pixels are grey: their channels are close to one another on average.
    background = ~masks.any(axis=1)  # [N, H, W]
    bg_pixels = images[background].astype(np.float64)
    assert np.abs(bg_pixels.mean(axis=0) - bg_pixels.mean()).max() < 5.0
    spread = bg_pixels.max(axis=1) - bg_pixels.min(axis=1)
    assert np.median(spread) < 45.0


def test_objects_stay_inside_and_mostly_visible(scenes):
    layout, masks, _, visible = scenes
    present = layout.present
    r = layout.radii[..., None]
    assert ((layout.centers >= r - 1e-4) & (layout.centers <= 32 - r + 1e-4))[present].all()
    visible_fraction = visible.sum(axis=(2, 3))[present] / masks.sum(axis=(2, 3))[present]
    assert visible_fraction.min() > 0.5 and visible_fraction.mean() > 0.95
    diameters = 2 * layout.radii[present]
    low, high = synthetic.OBJECT_DIAMETER_FRACTION
    assert diameters.min() >= low * 32 - 1e-4 and diameters.max() <= high * 32 + 1e-4
    assert diameters.min() >= 9.0 and diameters.max() <= 15.0  # recognisable at 32 px


def test_generation_is_fast_and_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    big = make_synthetic_dataset(6000, image_size=32, seed=0)
    elapsed = time.perf_counter() - start
    assert len(big) == 6000
    assert elapsed < 20.0, f"6,000 items took {elapsed:.1f} s"
    assert os.listdir(tmp_path) == []


def test_chance_relevance_matches_exact_count(dataset):
    labels = dataset.labels[:40]
    shared = sum(bool((labels[i] & labels[j]).any())
                 for i, j in itertools.permutations(range(len(labels)), 2))
    expected = shared / (40 * 39)
    assert chance_relevance(labels) == pytest.approx(expected, abs=1e-12)
    assert chance_relevance(dataset.subset(np.arange(40))) == pytest.approx(expected, abs=1e-12)
    # The sampled estimate is close to the exact value on all items.
    exact = chance_relevance(dataset, max_items=NUM_ITEMS)
    assert chance_relevance(dataset, max_items=150, seed=1) == pytest.approx(exact, abs=0.06)
    # The defaults put random-code MAP well below 0.5.
    assert 0.2 <= exact <= 0.35


def test_chance_relevance_on_disjoint_and_identical_labels():
    assert chance_relevance(np.eye(4, dtype=np.uint8)) == 0.0
    assert chance_relevance(np.ones((3, 2), dtype=np.uint8)) == 1.0
    with pytest.raises(ValueError, match="N >= 2"):
        chance_relevance(np.ones((1, 3), dtype=np.uint8))


@pytest.mark.parametrize("kwargs, argument", [
    ({"num_items": 0}, "num_items"),
    ({"num_shapes": 5}, "num_shapes"),
    ({"num_shapes": 2.0}, "num_shapes"),
    ({"num_colors": 0}, "num_colors"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects"),
    ({"max_objects": 4}, "max_objects"),
    ({"noise_std": -1.0}, "noise_std"),
    ({"image_size": 8}, "image_size"),
])
def test_bad_arguments_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_synthetic_dataset(**{"num_items": 4, **kwargs})
