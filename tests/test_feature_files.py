"""Feature files (I/T/L x tr/te) in .npz, MATLAB v5 and v7.3: round trips, third-party
layouts (sparse, other dtypes, transposed HDF5), dropped unlabelled rows and the errors."""

import logging
import os

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from fjsph_jax.data import matfiles
from fjsph_jax.data.dataset import Splits, make_splits
from fjsph_jax.data.feature_files import (
    FEATURE_KEYS,
    FeatureDataset,
    FeatureFileError,
    feature_arrays,
    read_feature_file,
    write_feature_file,
)

LOGGER = "fjsph_jax.data.feature_files"


def _arrays(num_tr=30, num_te=8, d_image=6, d_text=5, classes=4, seed=0):
    """The six keys, non-square so a transposition cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("tr", num_tr), ("te", num_te)):
        labels = (rng.random((n, classes)) < 0.4).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, classes, n)] = 1  # every row labelled
        out[f"I_{split}"] = rng.normal(size=(n, d_image)).astype(np.float32)
        out[f"T_{split}"] = rng.normal(size=(n, d_text)).astype(np.float32)
        out[f"L_{split}"] = labels
    return out


def _dataset(seed=0):
    rng = np.random.default_rng(seed)
    n = 40
    labels = (rng.random((n, 3)) < 0.5).astype(np.uint8)
    labels[:, 0] |= ~labels.any(axis=1)
    return FeatureDataset.from_arrays(
        rng.normal(size=(n, 7)), rng.random((n, 9)), labels, make_splits(n, 10, 20, seed),
        source="memory", label_names=["red circle", "dog", "x"])


# ---- round trips ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,name", [("npz", "f.npz"), ("mat", "f.mat"), ("mat73", "f.mat")])
def test_round_trip_keeps_rows_splits_and_dtypes(tmp_path, fmt, name):
    dataset = _dataset()
    path = tmp_path / name
    assert write_feature_file(path, dataset, format=fmt) == fmt
    assert matfiles.is_v73(str(path)) == (fmt == "mat73") or fmt == "npz"
    back = read_feature_file(path)
    assert back.source == str(path) and back.skipped == 0
    assert back.label_names == ["red circle", "dog", "x"]
    assert back.image_features.dtype == np.float32 and back.labels.dtype == np.uint8
    want, got = feature_arrays(dataset), feature_arrays(back)
    # train is a strict subset of the database: its positions are stored
    assert set(got) == set(FEATURE_KEYS) | {"train_rows", "label_names"}
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # rows are [tr; te]: database first, queries after
    sizes = dataset.splits.sizes()
    np.testing.assert_array_equal(back.splits.database, np.arange(sizes["database"]))
    np.testing.assert_array_equal(back.splits.query,
                                  sizes["database"] + np.arange(sizes["query"]))
    np.testing.assert_array_equal(back.splits.train,
                                  np.searchsorted(dataset.splits.database, dataset.splits.train))
    image, text, labels = back.rows("query")
    np.testing.assert_array_equal(image, dataset.rows("query")[0])
    np.testing.assert_array_equal(labels, dataset.rows("query")[2])


@pytest.mark.parametrize("name", ["f.npz", "f.mat"])
def test_files_hold_the_six_keys_matlab_can_use(tmp_path, name):
    arrays = _arrays()
    write_feature_file(tmp_path / name, arrays)
    if name.endswith(".npz"):
        with np.load(tmp_path / name) as data:
            stored = {k: data[k] for k in data.files}
        assert stored["L_tr"].dtype == np.uint8
    else:
        stored = {k: v for k, v in scipy.io.loadmat(tmp_path / name).items()
                  if not k.startswith("__")}
        assert stored["L_tr"].dtype == np.float64  # MATLAB cannot multiply integer matrices
    assert sorted(stored) == sorted(FEATURE_KEYS)  # train = database: no train_rows
    for key in FEATURE_KEYS:
        np.testing.assert_array_equal(stored[key], arrays[key], err_msg=key)
        assert stored[key].dtype == (np.float32 if key[0] != "L" else stored[key].dtype)
    back = read_feature_file(tmp_path / name)
    assert back.label_names is None
    np.testing.assert_array_equal(back.splits.train, back.splits.database)
    assert back.splits.sizes() == {"query": 8, "database": 30, "train": 30}


def test_v73_is_read_in_matlab_axis_order(tmp_path):
    """A v7.3 file as MATLAB writes it: HDF5 datasets hold [dim, N]; we must get [N, dim]."""
    arrays = _arrays(num_tr=12, num_te=3, d_image=4, d_text=7)
    matfiles.write_mat_v73(tmp_path / "m.mat", {k: v.astype(np.float64)
                                                for k, v in arrays.items()})
    with h5py.File(tmp_path / "m.mat", "r") as f:
        assert f["I_tr"].shape == (4, 12)  # stored transposed
    back = read_feature_file(tmp_path / "m.mat")
    np.testing.assert_array_equal(back.image_features[:12], arrays["I_tr"])
    np.testing.assert_array_equal(back.text_features[12:], arrays["T_te"])
    np.testing.assert_array_equal(back.labels[12:], arrays["L_te"])


def test_v5_sparse_and_other_dtypes_are_accepted(tmp_path):
    arrays = _arrays()
    stored = {
        "I_tr": arrays["I_tr"].astype(np.float64),
        "I_te": arrays["I_te"].astype(np.float64),
        "T_tr": scipy.sparse.csc_matrix((arrays["T_tr"] > 0.5).astype(np.float64)),  # BoW
        "T_te": scipy.sparse.csc_matrix((arrays["T_te"] > 0.5).astype(np.float64)),
        "L_tr": arrays["L_tr"].astype(bool),  # MATLAB logical
        "L_te": arrays["L_te"].astype(np.int32),
        "extra": np.zeros(3),
    }
    scipy.io.savemat(tmp_path / "s.mat", stored)
    back = read_feature_file(tmp_path / "s.mat")
    np.testing.assert_array_equal(back.text_features[:30], arrays["T_tr"] > 0.5)
    np.testing.assert_array_equal(back.labels[:30], arrays["L_tr"])
    np.testing.assert_allclose(back.image_features[30:], arrays["I_te"])
    assert back.text_features.dtype == np.float32


def _write_v73_sparse(path, dense_by_key):
    """MATLAB's own v7.3 sparse layout: a group with data, ir, jc and MATLAB_sparse."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, dense in dense_by_key.items():
            if key.startswith("T"):
                csc = scipy.sparse.csc_matrix(dense.astype(np.float64))
                group = f.create_group(key)
                group.attrs["MATLAB_class"] = np.bytes_("double")
                group.attrs["MATLAB_sparse"] = np.uint64(dense.shape[0])
                group.create_dataset("data", data=csc.data)
                group.create_dataset("ir", data=csc.indices.astype(np.uint64))
                group.create_dataset("jc", data=csc.indptr.astype(np.uint64))
            else:
                f.create_dataset(key, data=dense.astype(np.float64).T)
    with open(path, "r+b") as f:
        f.write(matfiles._v73_header())


def test_v73_sparse_groups_are_densified(tmp_path):
    arrays = _arrays()
    arrays["T_tr"] = (arrays["T_tr"] > 0.8).astype(np.float32)
    arrays["T_te"] = (arrays["T_te"] > 0.8).astype(np.float32)
    _write_v73_sparse(tmp_path / "sp.mat", arrays)
    back = read_feature_file(tmp_path / "sp.mat")
    np.testing.assert_array_equal(back.text_features, np.concatenate([arrays["T_tr"],
                                                                       arrays["T_te"]]))
    np.testing.assert_array_equal(back.image_features[:30], arrays["I_tr"])


# ---- unlabelled rows --------------------------------------------------------------------
def test_all_zero_label_rows_are_dropped_with_a_warning(tmp_path, caplog):
    arrays = _arrays()
    arrays["L_tr"][[2, 5, 9]] = 0
    arrays["L_te"][[0]] = 0
    path = tmp_path / "z.npz"
    np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        back = read_feature_file(path)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert str(path) in messages[0] and "L_tr" in messages[0] and "3 items" in messages[0]
    assert "[2, 5, 9]" in messages[0]
    assert "L_te" in messages[1] and "1 items" in messages[1] and "[0]" in messages[1]
    assert back.skipped == 4 and back.skipped_rows == {"L_tr": [2, 5, 9], "L_te": [0]}
    assert back.splits.sizes() == {"query": 7, "database": 27, "train": 27}
    keep = np.ones(30, bool)
    keep[[2, 5, 9]] = False
    np.testing.assert_array_equal(back.image_features[:27], arrays["I_tr"][keep])
    np.testing.assert_array_equal(back.image_features[27:], arrays["I_te"][1:])
    assert "4 unlabelled items dropped" in back.summary()


def test_a_split_left_empty_is_an_error(tmp_path):
    arrays = _arrays()
    arrays["L_te"][:] = 0
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(FeatureFileError, match=r"every row of L_te is all zero \(8 rows\)"):
        read_feature_file(tmp_path / "e.npz")


def test_from_arrays_drops_unlabelled_rows_and_renumbers_splits(caplog):
    rng = np.random.default_rng(1)
    labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 10)]
    labels[[1, 4]] = 0
    splits = Splits(query=np.array([0, 1]), database=np.arange(2, 10),
                    train=np.array([3, 4, 5]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = FeatureDataset.from_arrays(rng.normal(size=(10, 2)), rng.normal(size=(10, 3)),
                                             labels, splits, source="demo")
    assert "demo" in caplog.text and "2 items" in caplog.text and "[1, 4]" in caplog.text
    assert dataset.skipped == 2 and len(dataset) == 8
    np.testing.assert_array_equal(dataset.splits.query, [0])
    np.testing.assert_array_equal(dataset.splits.database, np.arange(1, 8))
    np.testing.assert_array_equal(dataset.splits.train, [2, 3])  # old rows 3, 5
    assert dataset.splits.query.dtype == np.int64
    assert dataset.row_loader()(np.array([1]))["text_features"].shape == (1, 3)


# ---- errors -----------------------------------------------------------------------------
def _save(tmp_path, arrays, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_missing_unreadable_and_wrong_kind_of_file(tmp_path):
    with pytest.raises(FeatureFileError, match=r"nope\.npz' does not exist; pass the path"):
        read_feature_file(tmp_path / "nope.npz")
    (tmp_path / "f.txt").write_text("1 2 3")
    with pytest.raises(FeatureFileError, match=r"extension '\.txt'.*\.mat.*\.npz"):
        read_feature_file(tmp_path / "f.txt")
    (tmp_path / "g.mat").write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(FeatureFileError, match=r"g\.mat' is not a readable MATLAB"):
        read_feature_file(tmp_path / "g.mat")
    (tmp_path / "g.npz").write_bytes(b"junk")
    with pytest.raises(FeatureFileError, match=r"g\.npz' is not a readable \.npz"):
        read_feature_file(tmp_path / "g.npz")
    with pytest.raises(FeatureFileError, match="is a directory"):
        read_feature_file(tmp_path)


def test_missing_keys_lists_missing_and_present(tmp_path):
    arrays = _arrays()
    del arrays["T_te"], arrays["L_tr"]
    arrays["Y"] = np.zeros(2)
    path = _save(tmp_path, arrays)
    with pytest.raises(FeatureFileError) as error:
        read_feature_file(path)
    message = str(error.value)
    assert path in message and "misses the keys ['L_tr', 'T_te']" in message
    assert "it holds ['I_te', 'I_tr', 'L_te', 'T_tr', 'Y']" in message


def test_row_counts_and_dimensions_must_agree(tmp_path):
    arrays = _arrays()
    arrays["T_tr"] = arrays["T_tr"][:29]
    with pytest.raises(FeatureFileError,
                       match="I_tr has 30, T_tr has 29, L_tr has 30.*transpose"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    arrays["I_te"] = arrays["I_te"][:, :5]
    with pytest.raises(FeatureFileError, match="I_tr has 6 columns but I_te has 5"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    arrays["L_te"] = arrays["L_te"][:, :3]
    with pytest.raises(FeatureFileError, match="label columns of tr and te must agree"):
        read_feature_file(_save(tmp_path, arrays))


def test_non_finite_features_name_key_count_and_rows(tmp_path):
    arrays = _arrays()
    arrays["T_te"][[1, 6], 2] = np.nan
    arrays["T_te"][6, 0] = np.inf
    with pytest.raises(FeatureFileError,
                       match=r"T_te has 3 NaN or Inf values in 2 rows \(first rows: \[1, 6\]\)"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    arrays["I_tr"] = arrays["I_tr"].astype(np.float64)
    arrays["I_tr"][4, 0] = 1e300
    with pytest.raises(FeatureFileError, match="overflow float32"):
        read_feature_file(_save(tmp_path, arrays))


def test_labels_must_be_zero_one(tmp_path):
    arrays = _arrays()
    arrays["L_tr"] = np.where(arrays["L_tr"] > 0, 1, -1).astype(np.int8)
    with pytest.raises(FeatureFileError, match=r"L_tr must be 0/1.*\[-1\].*\{-1, \+1\}.*L > 0"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    arrays["L_te"] = arrays["L_te"] * 0.5
    with pytest.raises(FeatureFileError, match=r"L_te must be 0/1 multi-hot labels, found the "
                                               r"values \[0\.5\]"):
        read_feature_file(_save(tmp_path, arrays))


def test_wrong_ndim_and_non_numeric_values(tmp_path):
    arrays = _arrays()
    arrays["L_te"] = arrays["L_te"][:, 0]
    with pytest.raises(FeatureFileError, match=r"L_te \(labels\) must be a 2-D matrix.*\(8,\)"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    arrays["I_tr"] = np.array(["a", "b"])
    with pytest.raises(FeatureFileError, match="I_tr must be a real numeric matrix"):
        read_feature_file(_save(tmp_path, arrays))
    arrays = _arrays()
    matfiles.write_mat_v73(tmp_path / "c.mat", {**arrays, "T_tr": ["a caption"] * 30})
    with pytest.raises(FeatureFileError, match=r"c\.mat': T_tr is a MATLAB char"):
        read_feature_file(tmp_path / "c.mat")


def test_label_names_must_match_the_label_columns(tmp_path):
    arrays = {**_arrays(), "label_names": np.array(["a", "b", "c"])}
    with pytest.raises(FeatureFileError, match="label_names has 3 names but L_tr has 4 label"):
        read_feature_file(_save(tmp_path, arrays))
    arrays["label_names"] = np.arange(4)
    with pytest.raises(FeatureFileError, match="label_names must be an array of str"):
        read_feature_file(_save(tmp_path, arrays))
    with pytest.raises(ValueError, match="label_names has 2 names; they must agree"):
        FeatureDataset.from_arrays(arrays["I_tr"], arrays["T_tr"], arrays["L_tr"],
                                   make_splits(30, 5, 10, 0), label_names=["a", "b"])


def test_bad_train_rows(tmp_path):
    arrays = {**_arrays(), "train_rows": np.array([3, 1])}
    with pytest.raises(FeatureFileError, match="train_rows must be sorted"):
        read_feature_file(_save(tmp_path, arrays))
    arrays["train_rows"] = np.array([1, 30])
    with pytest.raises(FeatureFileError, match=r"train_rows holds row 30, outside 0\.\.29"):
        read_feature_file(_save(tmp_path, arrays))


def test_write_errors(tmp_path):
    dataset = _dataset()
    with pytest.raises(FeatureFileError, match=r"extension '\.h5'.*use \.npz, or \.mat"):
        write_feature_file(tmp_path / "x.h5", dataset)
    with pytest.raises(FeatureFileError, match=r"format='mat73' writes \.mat files"):
        write_feature_file(tmp_path / "x.npz", dataset, format="mat73")
    with pytest.raises(FeatureFileError, match="format='hdf5' is unknown"):
        write_feature_file(tmp_path / "x.mat", dataset, format="hdf5")
    arrays = _arrays()
    del arrays["I_te"]
    with pytest.raises(FeatureFileError, match=r"miss the keys \['I_te'\]"):
        write_feature_file(tmp_path / "x.npz", arrays)
    arrays = _arrays()
    arrays["L_tr"] = arrays["L_tr"] * 2
    with pytest.raises(FeatureFileError, match=r"cannot write .*x\.npz.*values \[2\]"):
        write_feature_file(tmp_path / "x.npz", arrays)
    assert not os.listdir(tmp_path)  # nothing half-written


def test_dataset_validation_names_the_field():
    good = _dataset()
    fields = dict(image_features=good.image_features, text_features=good.text_features,
                  labels=good.labels, splits=good.splits)
    cases = [
        (dict(image_features=good.image_features.astype(np.float64)),
         "image_features must be float32"),
        (dict(text_features=good.text_features[:-1]), "text_features=39"),
        (dict(labels=good.labels.astype(np.int32)), "labels must be uint8"),
        (dict(splits=Splits(good.splits.database[:3], good.splits.database,
                            good.splits.train)), "splits.query and splits.database share 3"),
        (dict(splits=Splits(good.splits.query, good.splits.database,
                            good.splits.query)), "splits.train has 10 rows outside"),
        (dict(splits=Splits(good.splits.query[::-1], good.splits.database,
                            good.splits.train)), "splits.query must be sorted"),
        (dict(splits=Splits(np.array([0, 99]), good.splits.database, good.splits.train)),
         "splits.query holds row 99"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            FeatureDataset(**{**fields, **change})
    bad = good.image_features.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"image_features has NaN or Inf values in 1 rows "
                                         r"\(first rows: \[3\]\)"):
        FeatureDataset(**{**fields, "image_features": bad})
    with pytest.raises(ValueError, match=r"labels must be 0/1.*\[3\]"):
        FeatureDataset.from_arrays(good.image_features, good.text_features, good.labels * 3,
                                   good.splits)
