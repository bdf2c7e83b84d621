"""Every accepted layout of every dataset: build it with TFDS, read examples equal to the source.

Each test writes a few rows (fjsph_jax.data.testing) the way a baseline ships them, builds
the ArrayRecord dataset with ``build_dataset`` and compares what ``tfds`` data sources
give back with the rows: JPEG bytes (or pixels for .mat image stacks), texts, labels.
"""

import collections
import os

import numpy as np
import pytest

from fjsph_jax.data import coco, images, mirflickr, testing
from fjsph_jax.data.files import MissingFilesError
from fjsph_jax.data.inmemory import example_captions
from fjsph_jax.data.tfds_builders import build_dataset

MIR_NAMES = list(mirflickr.CONCEPTS)


@pytest.fixture(autouse=True, scope="module")
def _quiet_tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def build(tmp_path, dataset, manual_dir, **kwargs):
    return build_dataset(
        dataset, str(manual_dir), data_dir=str(tmp_path / "tfds"), workers=2, **kwargs
    )


def read_all(built):
    source = built.data_source()
    return [source[i] for i in range(len(source))]


def assert_same_rows(built, rows, expected_captions, *, exact_images=True):
    examples = read_all(built)
    assert len(examples) == len(rows) == built.report["kept"]
    for i, (example, row, captions) in enumerate(zip(examples, rows, expected_captions)):
        assert example["index"] == i
        assert example_captions(example) == captions
        np.testing.assert_array_equal(example["labels"], row.labels)
        if exact_images:
            assert example["image"] == row.jpeg  # the source JPEG, byte for byte
        else:
            decoded = images.decode_rgb(example["image"]).astype(int)
            assert decoded.shape == row.pixels.shape
            assert np.abs(decoded - row.pixels).mean() < 12  # re-encoded from the .mat pixels


def tag_text(row):
    return [" ".join(row.tags)]


# ---- MIRFlickr ------------------------------------------------------------------------
def test_mirflickr_cleaned_text_files(tmp_path):
    rows = testing.make_rows(6, 24, seed=1)
    names = [f"concept{c}" for c in range(24)]
    testing.write_text_files(str(tmp_path / "src"), rows, image_dir="mirflickr", label_names=names)
    built = build(tmp_path, "mirflickr", tmp_path / "src")
    assert built.report == {"layout": "text_files", "source_rows": 6, "kept": 6, "skipped": {}}
    assert built.label_names == names and built.built_now
    assert_same_rows(built, rows, [tag_text(r) for r in rows])
    assert [e["key"] for e in read_all(built)] == [f"im{i}".encode() for i in range(1, 7)]
    again = build(tmp_path, "mirflickr", tmp_path / "src")
    assert not again.built_now and again.directory == built.directory


@pytest.mark.parametrize("v73, label_key", [(False, "category"), (True, "label")])
def test_mirflickr_index_mat_with_foreign_absolute_paths(tmp_path, v73, label_key):
    rows = testing.make_rows(5, 24, seed=2)
    testing.write_index_mat(
        str(tmp_path / "mat"),
        rows,
        label_key=label_key,
        v73=v73,
        image_prefix="/home/someone/data/mirflickr",
    )
    testing.write_images(str(tmp_path / "pictures" / "mirflickr"), rows)
    built = build(tmp_path, "mirflickr", tmp_path / "mat", image_root=str(tmp_path / "pictures"))
    assert built.report["layout"] == "index_mat"
    assert built.label_names == MIR_NAMES  # the default names when C = 24
    assert_same_rows(built, rows, [tag_text(r) for r in rows])


@pytest.mark.parametrize("v73", [False, True])
def test_mirflickr_dcmh_mat(tmp_path, v73):
    rows = testing.make_rows(4, 24, seed=3)
    vocabulary = sorted({t for r in rows for t in r.tags}) + ["unused"]
    testing.write_dcmh_mat(
        str(tmp_path / "dcmh"), rows, prefix="mirflickr25k", vocabulary=vocabulary, v73=v73
    )
    built = build(tmp_path, "mirflickr", tmp_path / "dcmh")
    assert built.report["layout"] == "dcmh_mat:mirflickr25k"
    # A bag of words keeps no order: the text lists the tags in vocabulary order.
    expected = [[" ".join(sorted(r.tags, key=vocabulary.index))] for r in rows]
    assert_same_rows(built, rows, expected, exact_images=False)


def test_dcmh_mat_without_vocabulary_uses_column_tokens(tmp_path):
    rows = testing.make_rows(3, 24, seed=4)
    vocabulary = sorted({t for r in rows for t in r.tags})
    testing.write_dcmh_mat(
        str(tmp_path / "d"),
        rows,
        prefix="mirflickr25k",
        vocabulary=vocabulary,
        v73=False,
        write_vocabulary=False,
    )
    built = build(tmp_path, "mirflickr", tmp_path / "d")
    expected = [
        [" ".join(f"tag{vocabulary.index(t)}" for t in sorted(r.tags, key=vocabulary.index))]
        for r in rows
    ]
    assert [example_captions(e) for e in read_all(built)] == expected
    assert any("tag<j>" in note for note in built.metadata["notes"])


@pytest.mark.parametrize("zipped", [True, False])
def test_mirflickr_official_release_is_cleaned(tmp_path, zipped):
    rows = testing.make_rows(8, 24, seed=5)
    rows[2].labels[:] = 0  # no label: dropped
    rows[5].tags = ["veryrare"]  # only a rare tag: dropped
    rows[6].tags = rows[6].tags + ["veryrare"]  # the rare tag is removed from the text
    testing.write_mirflickr_official(str(tmp_path / "off"), rows, mirflickr.CONCEPTS, zipped=zipped)
    built = build(tmp_path, "mirflickr", tmp_path / "off", min_tag_count=2)

    counts = collections.Counter(t for r in rows for t in set(r.tags))  # plain reference
    frequent = {t for t, c in counts.items() if c >= 2}
    kept = [r for r in rows if r.labels.any() and any(t in frequent for t in r.tags)]
    no_frequent = sum(1 for r in rows if r.labels.any() and not any(t in frequent for t in r.tags))
    assert no_frequent >= 1 and len(kept) >= 3
    assert built.report == {
        "layout": "official",
        "source_rows": 8,
        "kept": len(kept),
        "skipped": {"no frequent tag": no_frequent, "no positive label": 1},
    }
    assert built.label_names == MIR_NAMES
    assert_same_rows(built, kept, [[" ".join(t for t in r.tags if t in frequent)] for r in kept])


def test_bad_rows_are_skipped_with_counts(tmp_path):
    rows = testing.make_rows(7, 24, seed=6)
    rows[1].jpeg = rows[1].jpeg[: len(rows[1].jpeg) // 3]  # truncated JPEG
    rows[3].tags = [" "]  # empty text
    rows[4].labels[:] = 0  # no positive label
    testing.write_text_files(str(tmp_path / "src"), rows)
    os.remove(tmp_path / "src" / "images" / "im6.jpg")  # missing image
    built = build(tmp_path, "mirflickr", tmp_path / "src")
    assert built.report["skipped"] == {
        "empty text": 1,
        "image file missing": 1,
        "no positive label": 1,
        "unreadable or corrupt image": 1,
    }
    kept = [rows[i] for i in (0, 2, 6)]
    assert_same_rows(built, kept, [tag_text(r) for r in kept])
    assert "image file missing: 1" in built.summary()


def test_row_count_mismatch_is_an_error_naming_the_files(tmp_path):
    rows = testing.make_rows(4, 24, seed=7)
    testing.write_text_files(str(tmp_path / "src"), rows)
    labels = (tmp_path / "src" / "all_labels.txt").read_text().splitlines()
    (tmp_path / "src" / "all_labels.txt").write_text("\n".join(labels[:3]) + "\n")
    with pytest.raises(ValueError, match=r"all_imgs.txt: 4 rows.*all_labels.txt: 3 rows"):
        build(tmp_path, "mirflickr", tmp_path / "src")


def test_unknown_layout_lists_what_is_accepted(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("nothing useful")
    with pytest.raises(
        MissingFilesError,
        match=r"(?s)all_imgs.txt.*index.mat.*mirflickr25k-iall"
        r".*press.liacs.nl",
    ):
        build(tmp_path, "mirflickr", tmp_path / "src")


def test_partial_layouts_name_the_missing_files(tmp_path):
    rows = testing.make_rows(3, 24, seed=15)
    testing.write_text_files(str(tmp_path / "src"), rows)
    os.remove(tmp_path / "src" / "all_labels.txt")
    testing.write_mirflickr_official(str(tmp_path / "src"), rows, mirflickr.CONCEPTS)
    os.remove(tmp_path / "src" / "mirflickr25k_annotations_v080.zip")
    with pytest.raises(MissingFilesError) as error:
        build(tmp_path, "mirflickr", tmp_path / "src")
    message = str(error.value)
    assert "text_files layout is there, but missing: all_labels.txt." in message
    assert "official layout is there, but missing: animals.txt (mirflickr25k_annotations" in message
    assert "water.txt" in message and "mirflickr25k_annotations_v080.zip" in message


def test_wrong_image_root_is_reported(tmp_path):
    rows = testing.make_rows(3, 24, seed=8)
    testing.write_index_mat(str(tmp_path / "mat"), rows, image_prefix="/elsewhere/mirflickr")
    with pytest.raises(MissingFilesError, match=r"none of the first 3 images.*image_root"):
        build(tmp_path, "mirflickr", tmp_path / "mat")


# ---- NUS-WIDE -------------------------------------------------------------------------
def test_nuswide_dchmt_caption_txt_21_concepts(tmp_path):
    rows = testing.make_rows(5, 21, seed=9)
    testing.write_index_mat(
        str(tmp_path / "nus"), rows, captions="txt", image_prefix="/old/nuswide/Flickr"
    )
    testing.write_images(str(tmp_path / "nus" / "Flickr"), rows)
    built = build(tmp_path, "nuswide", tmp_path / "nus")
    assert built.label_names == [f"label_{c}" for c in range(21)]
    assert_same_rows(built, rows, [tag_text(r) for r in rows])


def test_nuswide_dcmh_tc10_v73(tmp_path):
    rows = testing.make_rows(4, 10, seed=10)
    vocabulary = sorted({t for r in rows for t in r.tags})
    testing.write_dcmh_mat(
        str(tmp_path / "nus"), rows, prefix="nus-wide-tc10", vocabulary=vocabulary, v73=True
    )
    built = build(tmp_path, "nuswide", tmp_path / "nus")
    assert built.report["layout"] == "dcmh_mat:nus-wide-tc10"
    expected = [[" ".join(sorted(r.tags, key=vocabulary.index))] for r in rows]
    assert_same_rows(built, rows, expected, exact_images=False)


def test_nuswide_cleaned_text_files(tmp_path):
    rows = testing.make_rows(4, 21, seed=11)
    testing.write_text_files(str(tmp_path / "nus"), rows, image_dir="Flickr")
    built = build(tmp_path, "nuswide", tmp_path / "nus")
    assert_same_rows(built, rows, [tag_text(r) for r in rows])


# ---- MS-COCO --------------------------------------------------------------------------
def test_coco_official_2014(tmp_path):
    rows = testing.make_rows(6, 5, seed=12)
    names = ["person", "bicycle", "car", "dog", "cake"]
    ids = testing.write_coco_official(str(tmp_path / "coco"), rows, names, unlabelled=2)
    built = build(tmp_path, "coco", tmp_path / "coco")
    assert built.report == {
        "layout": "official",
        "source_rows": 8,
        "kept": 6,
        "skipped": {"no positive label": 2},
    }
    assert built.label_names == names
    # Train images (even rows) by id, then val images (odd rows) by id.
    order = sorted(range(0, 6, 2), key=lambda i: ids[i]) + sorted(
        range(1, 6, 2), key=lambda i: ids[i]
    )
    expected = [rows[i] for i in order]
    assert_same_rows(built, expected, [r.captions for r in expected])
    keys = [e["key"].decode() for e in read_all(built)]
    assert keys[0] == f"COCO_train2014_{ids[order[0]]:012d}" and keys[-1].startswith(
        "COCO_val2014_"
    )


@pytest.mark.parametrize("v73", [False, True])
def test_coco_dchmt_mat_with_caption_cells(tmp_path, v73):
    rows = testing.make_rows(4, 80, seed=13)
    testing.write_index_mat(
        str(tmp_path / "mat"), rows, captions="cells", v73=v73, image_prefix="/srv/coco/train2014"
    )
    testing.write_images(str(tmp_path / "img"), rows)
    built = build(tmp_path, "coco", tmp_path / "mat", image_root=str(tmp_path / "img"))
    assert built.label_names == list(coco.CATEGORIES)
    assert_same_rows(built, rows, [r.captions for r in rows])


def test_coco_mith_text_files_with_sentences(tmp_path):
    rows = testing.make_rows(4, 80, seed=14)
    testing.write_text_files(str(tmp_path / "coco"), rows, sentences=True)
    built = build(tmp_path, "coco", tmp_path / "coco")
    assert_same_rows(built, rows, [r.captions for r in rows])
