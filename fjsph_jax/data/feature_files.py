"""Feature datasets: precomputed image and text features with labels and splits.

Shallow and unsupervised cross-modal hashing methods (JSPSH, JDSH, ...) read features,
not pixels and captions. A :class:`FeatureDataset` holds N rows:

* ``image_features`` float32 ``[N, dI]``, ``text_features`` float32 ``[N, dT]``;
* ``labels`` uint8 multi-hot ``[N, C]`` (values 0/1, at least one 1 per row);
* ``splits``: a :class:`fjsph_jax.data.dataset.Splits` (query / database / train).

**File layout.** The shallow cross-modal hashing code bases ship features as a ``.mat``
file with six matrices, one row per item::

    I_tr [Ntr, dI]  T_tr [Ntr, dT]  L_tr [Ntr, C]   training set = retrieval database
    I_te [Nte, dI]  T_te [Nte, dT]  L_te [Nte, C]   queries

:func:`read_feature_file` reads that layout from ``.mat`` (MATLAB v5 via scipy, v7.3 via
h5py: HDF5 stores MATLAB arrays with reversed axes, so they are transposed back) and
``.npz`` files. Rows are stacked as ``[tr; te]``: ``database = train = 0..Ntr-1`` and
``query = Ntr..Ntr+Nte-1``. :func:`write_feature_file` writes the same six keys (``.npz``,
``.mat`` v5, or ``.mat`` v7.3 with ``format="mat73"``), so features computed here feed
MATLAB/Octave code and back. When the training set is a strict subset of the database
(the synthetic demo: 21,000 database items, 20,000 of them for training) the writer adds
``train_rows``, the sorted 0-based positions of the training items among the ``tr`` rows
(MATLAB: ``I_tr(train_rows + 1, :)``); the reader honours it when present. The optional
``label_names`` key holds the C names of the label columns (a str array in ``.npz``, a
cell array of strings in ``.mat``).

Sparse matrices (scipy.sparse in v5 files, MATLAB sparse groups in v7.3 files) are
densified; any real numeric or logical dtype is accepted. Labels must be 0/1 (a {-1, +1}
encoding is rejected with a hint). Items whose label row is all zero are never relevant to
any query and would distort MAP: they are dropped with a logged WARNING that names the
file, the key, the count and the first rows, and counted in ``FeatureDataset.skipped``.
Every other problem raises :class:`FeatureFileError` naming the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fjsph_jax.data.dataset import Splits

log = logging.getLogger(__name__)

SPLIT_KEYS = {"tr": ("I_tr", "T_tr", "L_tr"), "te": ("I_te", "T_te", "L_te")}
FEATURE_KEYS = SPLIT_KEYS["tr"] + SPLIT_KEYS["te"]
TRAIN_ROWS_KEY = "train_rows"
LABEL_NAMES_KEY = "label_names"
FORMATS = ("npz", "mat", "mat73")  # .npz, .mat (MATLAB v5), .mat (MATLAB v7.3 / HDF5)
EXTENSIONS = {"npz": ".npz", "mat": ".mat", "mat73": ".mat"}
_MAX_ROWS_LISTED = 5
_KIND = {"I": "image features", "T": "text features", "L": "labels"}


class FeatureFileError(ValueError):
    """A feature file (or arrays given for one) cannot be used; the message names the file,
    the key and what to do."""


def _first(rows: np.ndarray) -> list[int]:
    return np.asarray(rows)[:_MAX_ROWS_LISTED].tolist()


def _check_sorted_indices(name: str, indices, num_rows: int) -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer array of row indices, "
                         f"got {array.dtype} shape {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size == 0:
        raise ValueError(f"{name} is empty; every split needs at least one row")
    if np.any(np.diff(array) <= 0):
        raise ValueError(f"{name} must be sorted and without repeats (np.unique(...) gives that)")
    if array[0] < 0 or array[-1] >= num_rows:
        raise ValueError(f"{name} holds row {int(array[0] if array[0] < 0 else array[-1])}, "
                         f"outside 0..{num_rows - 1} (N={num_rows} rows)")
    return array


@dataclasses.dataclass(eq=False)
class FeatureDataset:
    """N rows of image features, text features and labels, with query / database / train
    splits; checked on creation (ValueError naming the field).

    Attributes:
      image_features: float32 ``[N, dI]``, finite.
      text_features: float32 ``[N, dT]``, finite.
      labels: uint8 multi-hot ``[N, C]``, values in {0, 1}, at least one 1 per row.
      splits: sorted int64 row indices; query and database disjoint, train within database.
      source: where the rows came from (a path, or a name such as ``"handcrafted:synthetic"``).
      skipped: how many items were dropped on the way in (all-zero label rows).
      skipped_rows: ``{key: [row, ...]}``, the dropped rows per key or field, in the
        numbering of the input (e.g. ``{"L_tr": [3, 17]}``); empty when nothing was dropped.
      label_names: C names of the label columns, or None when unknown (a file without
        ``label_names``).
    """

    image_features: np.ndarray
    text_features: np.ndarray
    labels: np.ndarray
    splits: Splits
    source: str = "<arrays>"
    skipped: int = 0
    skipped_rows: dict = dataclasses.field(default_factory=dict)
    label_names: list | None = None

    def __post_init__(self):
        self.validate()

    # -- facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_dim(self) -> int:
        return int(self.image_features.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text_features.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image_features, text_features, labels)`` of ``split``
        ('query' | 'database' | 'train'), each ``[len(split), ...]``."""
        if split not in ("query", "database", "train"):
            raise ValueError(f"split must be 'query', 'database' or 'train', got {split!r}")
        index = getattr(self.splits, split)
        return self.image_features[index], self.text_features[index], self.labels[index]

    def row_loader(self):
        """An :class:`fjsph_jax.data.loaders.ArrayRows` serving ``image_features`` and
        ``text_features`` (the keys of the frozen-encoder feature loader)."""
        from fjsph_jax.data.loaders import ArrayRows

        return ArrayRows({"image_features": self.image_features,
                          "text_features": self.text_features})

    def summary(self) -> str:
        """One line: source, rows per split, dims, label columns, skipped items."""
        sizes = self.splits.sizes()
        text = (f"{self.source}: {len(self)} items (query {sizes['query']}, database "
                f"{sizes['database']}, train {sizes['train']}), image dim {self.image_dim}, "
                f"text dim {self.text_dim}, {self.num_classes} label columns")
        return text + (f", {self.skipped} unlabelled items dropped" if self.skipped else "")

    # -- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the offending field if the parts are inconsistent."""
        for field in ("image_features", "text_features", "labels"):
            value = getattr(self, field)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{field} must be a numpy array, got {type(value).__name__}")
            if value.ndim != 2:
                raise ValueError(f"{field} must be 2-D [N, dim], got shape {value.shape}")
            if value.shape[1] == 0:
                raise ValueError(f"{field} has no columns (shape {value.shape})")
        for field in ("image_features", "text_features"):
            value = getattr(self, field)
            if value.dtype != np.float32:
                raise ValueError(f"{field} must be float32, got {value.dtype} "
                                 "(FeatureDataset.from_arrays converts)")
            bad = np.flatnonzero(~np.isfinite(value).all(axis=1))
            if bad.size:
                raise ValueError(f"{field} has NaN or Inf values in {bad.size} rows "
                                 f"(first rows: {_first(bad)})")
        counts = {f: getattr(self, f).shape[0]
                  for f in ("image_features", "text_features", "labels")}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{f}={n}" for f, n in counts.items())
            raise ValueError(f"row counts of image_features, text_features and labels must "
                             f"agree, got {detail}")
        if self.labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 multi-hot, got dtype {self.labels.dtype}")
        if self.labels.size and self.labels.max() > 1:
            raise ValueError("labels must be multi-hot with values in {0, 1}, found the value "
                             f"{int(self.labels.max())}")
        unlabelled = np.flatnonzero(~self.labels.any(axis=1))
        if unlabelled.size:
            raise ValueError(f"labels: {unlabelled.size} rows have no positive label (first "
                             f"rows: {_first(unlabelled)}); FeatureDataset.from_arrays drops them")
        if not isinstance(self.splits, Splits):
            raise ValueError(f"splits must be a Splits, got {type(self.splits).__name__}")
        n = len(self)
        parts = {name: _check_sorted_indices(f"splits.{name}", getattr(self.splits, name), n)
                 for name in ("query", "database", "train")}
        if np.intersect1d(parts["query"], parts["database"]).size:
            shared = np.intersect1d(parts["query"], parts["database"])
            raise ValueError(f"splits.query and splits.database share {shared.size} rows (first "
                             f"rows: {_first(shared)}); queries must not be in the database")
        outside = np.setdiff1d(parts["train"], parts["database"])
        if outside.size:
            raise ValueError(f"splits.train has {outside.size} rows outside splits.database "
                             f"(first rows: {_first(outside)}); train must be a subset")
        if any(getattr(self.splits, k) is not parts[k] for k in parts):
            self.splits = Splits(**parts)  # int64 arrays (Splits is frozen: a new one)
        if self.label_names is not None:
            if isinstance(self.label_names, str) or not all(
                    isinstance(n, str) for n in self.label_names):
                raise ValueError("label_names must be a list of str (one per label column)")
            self.label_names = list(self.label_names)
            if len(self.label_names) != self.num_classes:
                raise ValueError(f"labels has C={self.num_classes} columns but label_names has "
                                 f"{len(self.label_names)} names; they must agree")
        if not isinstance(self.source, str):
            raise ValueError(f"source must be a str, got {type(self.source).__name__}")
        if isinstance(self.skipped, bool) or not isinstance(self.skipped, (int, np.integer)) \
                or self.skipped < 0:
            raise ValueError(f"skipped must be a count >= 0, got {self.skipped!r}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, image_features, text_features, labels, splits: Splits, *,
                    source: str = "<arrays>",
                    label_names: list[str] | None = None) -> "FeatureDataset":
        """A dataset from in-memory arrays over all N items and their own ``splits``.

        Features of any real numeric dtype become float32, 0/1 labels of any dtype uint8
        (ValueError naming the field otherwise); ``label_names`` optional (C names); items
        whose label row is all zero are
        dropped with a WARNING (counted in ``skipped``) and the split indices renumbered.
        """
        arrays = {}
        for field, value in (("image_features", image_features),
                             ("text_features", text_features), ("labels", labels)):
            arrays[field] = _numeric(_densify(value), where=field)
            if arrays[field].ndim != 2:
                raise ValueError(f"{field} must be 2-D [N, dim], got shape {arrays[field].shape}")
        for field in ("image_features", "text_features"):
            arrays[field] = _as_features(arrays[field], where=field)
        arrays["labels"] = _as_labels(arrays["labels"], where="labels")
        counts = {f: a.shape[0] for f, a in arrays.items()}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{f}={n}" for f, n in counts.items())
            raise ValueError(f"row counts of image_features, text_features and labels must "
                             f"agree, got {detail}")
        n = counts["labels"]
        parts = {name: _check_sorted_indices(f"splits.{name}", getattr(splits, name), n)
                 for name in ("query", "database", "train")}
        keep = arrays["labels"].any(axis=1)
        dropped = np.flatnonzero(~keep)
        if dropped.size:
            log.warning("%s: labels: dropping %d items whose label row is all zero (first rows: "
                        "%s): they are relevant to no query", source, dropped.size,
                        _first(dropped))
        parts = _renumber(parts, keep)
        for name, index in parts.items():
            if index.size == 0:
                raise ValueError(f"splits.{name} is empty after dropping {dropped.size} "
                                 "unlabelled items; every split needs labelled rows")
        return cls(arrays["image_features"][keep], arrays["text_features"][keep],
                   arrays["labels"][keep], Splits(**parts), source=source,
                   skipped=int(dropped.size),
                   skipped_rows={"labels": dropped.tolist()} if dropped.size else {},
                   label_names=None if label_names is None else list(label_names))


def _renumber(parts: dict, keep: np.ndarray) -> dict:
    """Split indices restricted to kept rows and renumbered to the kept rows' positions."""
    new_index = np.cumsum(keep) - 1
    return {name: new_index[index[keep[index]]].astype(np.int64) for name, index in parts.items()}


# ---- conversions (shared by from_arrays and the reader) ---------------------------------
def _densify(value):
    try:
        import scipy.sparse

        if scipy.sparse.issparse(value):
            return value.toarray()
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    return value


def _numeric(value, *, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{where} must be a real numeric matrix, got dtype {array.dtype}"
                         + (" (a MATLAB cell or struct?)" if array.dtype == object else ""))
    return array


def _as_features(array: np.ndarray, *, where: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # reported below as non-finite values
        out = np.ascontiguousarray(array, dtype=np.float32)
    bad_mask = ~np.isfinite(out)
    if bad_mask.any():
        rows = np.flatnonzero(bad_mask.any(axis=1))
        overflow = bool(np.isfinite(array).all()) if array.dtype.kind == "f" else False
        raise ValueError(
            f"{where} has {int(bad_mask.sum())} NaN or Inf values in {rows.size} rows (first "
            f"rows: {_first(rows)})"
            + ("; they overflow float32" if overflow else "")
            + "; fix or drop those items before hashing")
    return out


def _as_labels(array: np.ndarray, *, where: str) -> np.ndarray:
    values = np.unique(array)
    extra = values[(values != 0) & (values != 1)]
    if extra.size:
        hint = ""
        if np.isin(values, (-1, 1)).all():
            hint = " It looks like a {-1, +1} encoding: store (L > 0) instead."
        raise ValueError(f"{where} must be 0/1 multi-hot labels, found the values "
                         f"{extra[:_MAX_ROWS_LISTED].tolist()}.{hint}")
    return np.ascontiguousarray(array, dtype=np.uint8)


# ---- reading ----------------------------------------------------------------------------
_VERBS = ("does not", "is ", "has the", "misses", "cannot")


def _file_error(path: str, message: str) -> FeatureFileError:
    """``feature file 'p' does not exist ...`` / ``feature file 'p': I_tr has ...``."""
    separator = " " if message.startswith(_VERBS) else ": "
    return FeatureFileError(f"feature file {path!r}{separator}{message}")


def _read_npz(path: str) -> tuple[list[str], Any, Any, Any]:
    try:
        data = np.load(path, allow_pickle=False)
        keys = sorted(data.files)
    except Exception as error:  # zipfile and numpy raise many types on a corrupt file
        raise _file_error(path, f"is not a readable .npz file ({error}); write it with "
                                "numpy.savez or write_feature_file") from error

    def get(key):
        try:
            return data[key]
        except ValueError as error:  # object arrays need pickle
            raise _file_error(path, f"{key} is not a numeric array ({error})") from error

    def strings(key):
        try:
            value = data[key]
        except ValueError as error:
            raise _file_error(path, f"{key} must be an array of str ({error})") from error
        if value.dtype.kind != "U":
            raise _file_error(path, f"{key} must be an array of str, got dtype {value.dtype}")
        return [str(v) for v in value.reshape(-1)]

    return keys, get, strings, data.close


def _read_mat_v5(path: str) -> tuple[list[str], Any, Any, Any]:
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as error:
        raise _file_error(path, f"is not a readable MATLAB .mat file (v5 or v7.3): {error}") \
            from error
    keys = sorted(k for k in data if not k.startswith("__"))

    def strings(key):  # a char matrix (one name per row) or a cell array of names
        value = np.asarray(data[key])
        if value.dtype.kind == "U":
            return [str(v).rstrip(" \x00") for v in value.reshape(-1)]
        if value.dtype == object:
            names = []
            for cell in value.reshape(-1, order="F"):
                cell = np.asarray(cell)
                if cell.dtype.kind != "U" or cell.size > 1:
                    raise _file_error(path, f"{key} must hold one string per cell")
                names.append(str(cell.reshape(-1)[0]).rstrip(" \x00") if cell.size else "")
            return names
        raise _file_error(path, f"{key} must be a char matrix or a cell array of strings, got "
                                f"{value.dtype}")

    return keys, data.__getitem__, strings, lambda: None


def _h5_sparse(group) -> np.ndarray:
    """A MATLAB sparse matrix in a v7.3 file: a group with ``data``, ``ir`` (row indices),
    ``jc`` (column pointers) and the attribute ``MATLAB_sparse`` = number of rows."""
    import scipy.sparse

    num_rows = int(np.asarray(group.attrs["MATLAB_sparse"]).reshape(-1)[0])
    jc = np.asarray(group["jc"][()]).reshape(-1).astype(np.int64)
    num_cols = jc.size - 1
    if "data" in group:
        data = np.asarray(group["data"][()]).reshape(-1)
        ir = np.asarray(group["ir"][()]).reshape(-1).astype(np.int64)
    else:  # an all-zero sparse matrix stores no data
        data, ir = np.zeros(0), np.zeros(0, np.int64)
    return scipy.sparse.csc_matrix((data, ir, jc), shape=(num_rows, num_cols)).toarray()


def _read_mat_v73(path: str) -> tuple[list[str], Any, Any, Any]:
    try:
        import h5py

        h5 = h5py.File(path, "r")
    except Exception as error:
        raise _file_error(path, f"is not a readable MATLAB v7.3 (HDF5) .mat file: {error}") \
            from error
    keys = sorted(k for k in h5.keys() if not k.startswith("#"))

    def get(key):
        import h5py

        value = h5[key]
        if isinstance(value, h5py.Group):
            if "MATLAB_sparse" in value.attrs:
                return _h5_sparse(value)
            raise _file_error(path, f"{key} is a MATLAB struct, not a numeric matrix")
        kind = value.attrs.get("MATLAB_class", b"")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind in ("cell", "char", "struct"):
            raise _file_error(path, f"{key} is a MATLAB {kind}, not a numeric matrix")
        data = np.asarray(value[()])
        # HDF5 holds MATLAB's column-major arrays with their axes reversed (as MatFile.array)
        return data.transpose() if data.ndim > 1 else data

    def strings(key):
        from fjsph_jax.data.matfiles import MatFile

        try:
            with MatFile(path) as mat:
                rows = mat.strings(key)
        except ValueError as error:
            raise _file_error(path, f"{key} must be a char matrix or a cell array of strings "
                                    f"({error})") from error
        if any(len(r) > 1 for r in rows):
            raise _file_error(path, f"{key} must hold one string per cell")
        return [r[0] if r else "" for r in rows]

    return keys, get, strings, h5.close


def _open(path: str):
    """``(keys, get(key) -> array in MATLAB/numpy row-per-item order, strings(key) -> list of
    str, close)``."""
    from fjsph_jax.data.matfiles import is_v73

    if not os.path.exists(path):
        raise _file_error(path, "does not exist; pass the path of a .mat or .npz file holding "
                                + ", ".join(FEATURE_KEYS))
    if os.path.isdir(path):
        raise _file_error(path, "is a directory; pass the path of a .mat or .npz file")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        return _read_npz(path)
    if extension == ".mat":
        try:
            v73 = is_v73(path)
        except OSError as error:
            raise _file_error(path, f"cannot be read: {error}") from error
        if v73:
            return _read_mat_v73(path)
        return _read_mat_v5(path)
    raise _file_error(path, f"has the extension {extension or '(none)'!r}; feature files are "
                            ".mat (MATLAB v5 or v7.3) or .npz files")


def read_feature_file(path: str | os.PathLike) -> FeatureDataset:
    """Read the six-key layout (``I_tr, T_tr, L_tr, I_te, T_te, L_te``) of ``path``.

    Returns a :class:`FeatureDataset` with rows ``[tr; te]``: database = train = the tr
    rows (unless the file holds ``train_rows``), query = the te rows. All-zero label rows
    are dropped with a WARNING. Raises :class:`FeatureFileError` for anything else amiss.
    """
    path = os.fspath(path)
    keys, get, strings, close = _open(path)
    try:
        missing = [k for k in FEATURE_KEYS if k not in keys]
        if missing:
            raise _file_error(path, f"misses the keys {missing}; it holds {keys}. A feature "
                                    "file needs " + ", ".join(FEATURE_KEYS) + " (image "
                                    "features, text features and labels of the training/"
                                    "database items (tr) and of the queries (te))")
        arrays = {}
        for key in FEATURE_KEYS:
            try:
                array = _numeric(_densify(get(key)), where=key)
            except FeatureFileError:
                raise
            except ValueError as error:
                raise _file_error(path, str(error)) from error
            if array.ndim != 2:
                raise _file_error(path, f"{key} ({_KIND[key[0]]}) must be a 2-D matrix with one "
                                        f"row per item, got shape {array.shape}")
            arrays[key] = array
        train_rows = np.asarray(get(TRAIN_ROWS_KEY)) if TRAIN_ROWS_KEY in keys else None
        label_names = strings(LABEL_NAMES_KEY) if LABEL_NAMES_KEY in keys else None
    finally:
        close()
    num_classes = arrays["L_tr"].shape[1]
    if label_names is not None and len(label_names) != num_classes:
        raise _file_error(path, f"{LABEL_NAMES_KEY} has {len(label_names)} names but L_tr has "
                                f"{num_classes} label columns; they must agree")

    for split, split_keys in SPLIT_KEYS.items():
        counts = [arrays[k].shape[0] for k in split_keys]
        if len(set(counts)) != 1:
            detail = ", ".join(f"{k} has {n}" for k, n in zip(split_keys, counts))
            raise _file_error(path, f"the {split} keys disagree on the number of rows: {detail}; "
                                    "each needs one row per item (if the file stores items as "
                                    "columns, transpose those matrices)")
    for kind in "ITL":
        tr, te = arrays[f"{kind}_tr"], arrays[f"{kind}_te"]
        if tr.shape[1] != te.shape[1]:
            what = "label columns" if kind == "L" else "feature dimensions"
            raise _file_error(path, f"{kind}_tr has {tr.shape[1]} columns but {kind}_te has "
                                    f"{te.shape[1]}: the {what} of tr and te must agree")
    for key in FEATURE_KEYS:
        try:
            if key[0] == "L":
                arrays[key] = _as_labels(arrays[key], where=key)
            else:
                arrays[key] = _as_features(arrays[key], where=key)
        except ValueError as error:
            raise _file_error(path, str(error)) from error

    num_tr = arrays["L_tr"].shape[0]
    train = np.arange(num_tr, dtype=np.int64)
    if train_rows is not None:
        try:
            train = _check_sorted_indices(TRAIN_ROWS_KEY, np.asarray(train_rows).reshape(-1),
                                          num_tr)
        except ValueError as error:
            raise _file_error(path, f"{error} (train_rows are 0-based positions among the "
                                    "tr rows)") from error

    keep, skipped_rows = [], {}
    for key in ("L_tr", "L_te"):
        row_ok = arrays[key].any(axis=1)
        dropped = np.flatnonzero(~row_ok)
        if dropped.size:
            log.warning("feature file %r: %s: dropping %d items whose label row is all zero "
                        "(first rows: %s): they are relevant to no query", path, key,
                        dropped.size, _first(dropped))
            skipped_rows[key] = dropped.tolist()
        if not row_ok.any():
            raise _file_error(path, f"every row of {key} is all zero ({row_ok.size} rows): no "
                                    f"{'database' if key == 'L_tr' else 'query'} item has a "
                                    "label; check the file (labels are 0/1 multi-hot rows)")
        keep.append(row_ok)
    keep_all = np.concatenate(keep)
    parts = {"database": np.arange(num_tr, dtype=np.int64),
             "train": train,
             "query": np.arange(num_tr, keep_all.size, dtype=np.int64)}
    parts = _renumber(parts, keep_all)
    if parts["train"].size == 0:
        raise _file_error(path, f"every training row ({TRAIN_ROWS_KEY}) of L_tr is all zero")

    def stacked(kind):
        return np.concatenate([arrays[f"{kind}_tr"], arrays[f"{kind}_te"]])[keep_all]

    return FeatureDataset(stacked("I"), stacked("T"), stacked("L"), Splits(**parts),
                          source=path, skipped=int((~keep_all).sum()), skipped_rows=skipped_rows,
                          label_names=label_names)


# ---- writing ----------------------------------------------------------------------------
def feature_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write ``path`` in: ``format`` (checked against the extension), or the
    extension's (``.npz`` -> npz, ``.mat`` -> mat, i.e. MATLAB v5)."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if format is None:
        inferred = {".npz": "npz", ".mat": "mat"}.get(extension)
        if inferred is None:
            raise FeatureFileError(
                f"feature file {path!r}: the extension {extension or '(none)'!r} is not a "
                "feature file's; use .npz, or .mat (MATLAB v5; format='mat73' for v7.3)")
        return inferred
    if format not in FORMATS:
        raise FeatureFileError(f"format={format!r} is unknown; allowed: {FORMATS}")
    if extension != EXTENSIONS[format]:
        raise FeatureFileError(f"feature file {path!r}: format={format!r} writes "
                               f"{EXTENSIONS[format]} files; name the file *{EXTENSIONS[format]}")
    return format


def feature_arrays(dataset: FeatureDataset) -> dict[str, np.ndarray]:
    """The six keys of ``dataset`` (tr = database rows, te = query rows), plus
    ``train_rows`` when the training rows are a strict subset of the database and
    ``label_names`` (a list of str) when the dataset has them."""
    database, query = dataset.splits.database, dataset.splits.query
    out = {
        "I_tr": dataset.image_features[database], "T_tr": dataset.text_features[database],
        "L_tr": dataset.labels[database],
        "I_te": dataset.image_features[query], "T_te": dataset.text_features[query],
        "L_te": dataset.labels[query],
    }
    if not np.array_equal(dataset.splits.train, database):
        out[TRAIN_ROWS_KEY] = np.searchsorted(database, dataset.splits.train).astype(np.int64)
    if dataset.label_names is not None:
        out[LABEL_NAMES_KEY] = list(dataset.label_names)
    return out


def write_feature_file(path: str | os.PathLike, data: FeatureDataset | Mapping[str, Any], *,
                       format: str | None = None) -> str:
    """Write ``data`` (a FeatureDataset, or a mapping holding the six keys and optionally
    ``train_rows`` and ``label_names``) to ``path`` in the six-key layout; returns the format
    written.

    ``format``: ``"npz"``, ``"mat"`` (MATLAB v5, ``scipy.io.savemat``) or ``"mat73"``
    (MATLAB v7.3 / HDF5, :func:`fjsph_jax.data.matfiles.write_mat_v73`); default from the
    extension (``.mat`` means v5). Features are written as float32 (MATLAB ``single``);
    labels as uint8 in ``.npz`` and as double in ``.mat`` files (MATLAB cannot matrix-
    multiply integer classes, and ``L_te * L_tr'`` is how its code compares labels).
    Mappings are checked like a file being read (same errors). The file is written
    to a temporary name and renamed, so a failed write leaves no partial file.
    """
    path = os.fspath(path)
    fmt = feature_format(path, format)
    if isinstance(data, FeatureDataset):
        arrays = feature_arrays(data)
    elif isinstance(data, Mapping):
        missing = [k for k in FEATURE_KEYS if k not in data]
        if missing:
            raise FeatureFileError(f"cannot write {path!r}: the arrays miss the keys {missing}; "
                                   "a feature file needs " + ", ".join(FEATURE_KEYS))
        arrays = {k: data[k] for k in (*FEATURE_KEYS, TRAIN_ROWS_KEY, LABEL_NAMES_KEY)
                  if k in data}
        try:  # the same checks as reading: build the dataset the file will hold
            stacked = {
                kind: np.concatenate([_numeric(_densify(arrays[f"{kind}_tr"]), where=f"{kind}_tr"),
                                      _numeric(_densify(arrays[f"{kind}_te"]), where=f"{kind}_te")])
                for kind in "ITL"
            }
            num_tr = np.shape(arrays["L_tr"])[0]
            train = (np.arange(num_tr) if TRAIN_ROWS_KEY not in arrays
                     else np.asarray(arrays[TRAIN_ROWS_KEY]).reshape(-1))
            splits = Splits(query=np.arange(num_tr, stacked["L"].shape[0], dtype=np.int64),
                            database=np.arange(num_tr, dtype=np.int64),
                            train=np.asarray(train, np.int64))
            names = arrays.get(LABEL_NAMES_KEY)
            data = FeatureDataset.from_arrays(stacked["I"], stacked["T"], stacked["L"], splits,
                                              source=path,
                                              label_names=None if names is None else list(names))
        except ValueError as error:
            raise FeatureFileError(f"cannot write {path!r}: {error}") from error
        arrays = feature_arrays(data)
    else:
        raise TypeError(f"data must be a FeatureDataset or a mapping of arrays, got "
                        f"{type(data).__name__}")
    out = {}
    for key, value in arrays.items():
        if key == LABEL_NAMES_KEY:  # str array (.npz); a cell array of char rows (.mat)
            if fmt == "npz":
                out[key] = np.asarray(value, dtype=str)
            elif fmt == "mat":
                out[key] = np.asarray(value, dtype=object).reshape(-1, 1)
            else:
                out[key] = [[name] for name in value]
        elif key == TRAIN_ROWS_KEY:  # a column vector in MATLAB
            out[key] = np.asarray(value, np.int64).reshape((-1,) if fmt == "npz" else (-1, 1))
        elif key[0] == "L":
            out[key] = np.asarray(value, np.uint8 if fmt == "npz" else np.float64)
        else:
            out[key] = np.ascontiguousarray(value, np.float32)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        if fmt == "npz":
            with open(tmp, "wb") as f:
                np.savez(f, **out)
        elif fmt == "mat":
            import scipy.io

            with open(tmp, "wb") as f:
                scipy.io.savemat(f, out, format="5", do_compression=False, oned_as="column")
        else:
            from fjsph_jax.data.matfiles import write_mat_v73

            write_mat_v73(tmp, out)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return fmt
