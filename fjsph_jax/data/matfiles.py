"""MATLAB ``.mat`` files as the cross-modal hashing baselines ship them, v5 and v7.3.

Two on-disk formats hold the same MATLAB arrays:

* **v5** (``scipy.io.savemat``, MATLAB's default up to 2 GB): ``scipy.io.loadmat`` returns
  arrays in MATLAB's own axis order, e.g. labels ``[N, C]``.
* **v7.3** (HDF5 behind a 512-byte header): HDF5 is row-major and MATLAB column-major,
  so ``h5py`` sees every array with its axes reversed (labels ``[C, N]``, a MATLAB image
  stack ``[H, W, 3, N]`` as ``[N, 3, W, H]``). Strings are ``uint16`` arrays with the
  attribute ``MATLAB_class = "char"``; cell arrays hold HDF5 object references.

:class:`MatFile` hides the difference: :meth:`MatFile.array` always returns MATLAB axis
order, :meth:`MatFile.strings` returns the text of char matrices and cell arrays row by
row, and :meth:`MatFile.image_stack` reads one image at a time from a 4-D stack in
either orientation without loading the stack. :func:`write_mat_v73` writes v7.3 files
(tests use it to produce the files DCMH-style baselines distribute).
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Sequence

import numpy as np

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MATLAB_CLASS = {  # numpy dtype -> MATLAB_class attribute
    np.dtype(np.float64): "double",
    np.dtype(np.float32): "single",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.int16): "int16",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.int32): "int32",
    np.dtype(np.uint64): "uint64",
    np.dtype(np.int64): "int64",
}


def is_v73(source: str | bytes) -> bool:
    """True if ``source`` (a path or the file's bytes) is an HDF5-based v7.3 file."""
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:1032])
    else:
        with open(source, "rb") as f:
            head = f.read(1032)
    return any(head[offset : offset + 8] == _HDF5_SIGNATURE for offset in (0, 512, 1024))


def _strip(text: str) -> str:
    """MATLAB char matrices pad rows with spaces (and sometimes NULs)."""
    return text.rstrip(" \x00")


class MatFile:
    """One ``.mat`` file (v5 or v7.3) opened for reading; use as a context manager.

    Args:
      source: a path, or the file's bytes (a zip member).
      description: how messages name the file (default: the path).
    """

    def __init__(self, source: str | bytes, *, description: str | None = None):
        self.description = description or (source if isinstance(source, str) else "<bytes>")
        self.v73 = is_v73(source)
        try:
            if self.v73:
                import h5py

                handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
                self._h5 = h5py.File(handle, "r")
                self._v5 = None
            else:
                import scipy.io

                handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
                self._v5 = scipy.io.loadmat(handle, chars_as_strings=True)
                self._h5 = None
        except Exception as error:  # scipy and h5py raise many types on a corrupt file
            raise ValueError(
                f"{self.description!r} is not a readable MATLAB .mat file (v5 or v7.3): {error}"
            ) from error

    def __enter__(self) -> "MatFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()

    def keys(self) -> list[str]:
        """Variable names stored in the file (MATLAB's bookkeeping entries left out)."""
        if self._h5 is not None:
            return sorted(k for k in self._h5.keys() if not k.startswith("#"))
        return sorted(k for k in self._v5 if not k.startswith("__"))

    def pick(self, names: Sequence[str]) -> str:
        """The first of ``names`` that the file holds; ValueError listing what it holds."""
        for name in names:
            if name in self.keys():
                return name
        raise ValueError(
            f"{self.description!r} has none of the variables {list(names)}; it holds {self.keys()}"
        )

    def _get(self, name: str):
        if name not in self.keys():
            raise ValueError(
                f"{self.description!r} has no variable {name!r}; it holds {self.keys()}"
            )
        return self._h5[name] if self._h5 is not None else self._v5[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of variable ``name`` in MATLAB axis order."""
        value = self._get(name)
        return tuple(reversed(value.shape)) if self._h5 is not None else tuple(value.shape)

    def array(self, name: str) -> np.ndarray:
        """Numeric variable ``name`` in MATLAB axis order (e.g. labels ``[N, C]``)."""
        value = self._get(name)
        if self._h5 is not None:
            data = value[()]
            return np.asarray(data).transpose() if np.ndim(data) > 1 else np.asarray(data)
        return np.asarray(value)

    def strings(self, name: str) -> list[list[str]]:
        """Text of ``name`` per row: a char matrix or string array gives ``[[s_0], [s_1], ...]``,
        a cell array gives one list per cell (the captions of one image, say)."""
        value = self._get(name)
        if self._h5 is not None:
            return _h5_rows(self._h5, value)
        return _v5_rows(value)

    def image_stack(self, name: str, num_items: int) -> "ImageStack":
        """A lazily read 4-D image variable with ``num_items`` images; see :class:`ImageStack`."""
        value = self._get(name)
        return ImageStack(
            value,
            num_items,
            reversed_axes=self._h5 is not None,
            description=f"{self.description}:{name}",
        )


# ---- strings -------------------------------------------------------------------------
def _v5_rows(value) -> list[list[str]]:
    array = np.asarray(value)
    if array.dtype.kind == "U":
        if array.ndim == 0:
            return [[_strip(str(array))]]
        if array.ndim == 2 and array.shape[0] == 1 and array.shape[1] != 1:
            array = array[0]
        return [[_strip(s)] for s in array.reshape(-1).tolist()]
    if array.dtype == object:
        cells = array.reshape(-1, order="F") if array.ndim > 1 else array
        return [_v5_cell_strings(cell) for cell in cells]
    raise ValueError(
        f"expected text (a char matrix or a cell array), got {array.dtype} {array.shape}"
    )


def _v5_cell_strings(cell) -> list[str]:
    array = np.asarray(cell)
    if array.dtype.kind == "U":
        return [_strip(s) for s in array.reshape(-1).tolist()]
    if array.dtype == object:
        return [s for inner in array.reshape(-1, order="F") for s in _v5_cell_strings(inner)]
    if array.size == 0:
        return []
    raise ValueError(f"cell holds {array.dtype} {array.shape}, expected text")


def _h5_class(dataset) -> str:
    value = dataset.attrs.get("MATLAB_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_char_rows(dataset) -> list[str]:
    codes = np.asarray(dataset[()])
    if dataset.attrs.get("MATLAB_empty", 0) or codes.size == 0:
        return [""]
    matrix = codes.transpose() if codes.ndim == 2 else codes.reshape(1, -1)  # MATLAB [rows, L]
    return [_strip("".join(map(chr, row.tolist()))) for row in matrix]


def _h5_rows(h5file, dataset) -> list[list[str]]:
    kind = _h5_class(dataset)
    if kind == "char":
        return [[row] for row in _h5_char_rows(dataset)]
    if kind == "cell":
        refs = np.asarray(dataset[()]).transpose().reshape(-1, order="F")
        return [_h5_cell_strings(h5file, h5file[ref]) for ref in refs]
    raise ValueError(f"expected text (MATLAB char or cell), got MATLAB class {kind!r}")


def _h5_cell_strings(h5file, dataset) -> list[str]:
    kind = _h5_class(dataset)
    if kind == "char":
        return _h5_char_rows(dataset)
    if kind == "cell":
        refs = np.asarray(dataset[()]).transpose().reshape(-1, order="F")
        return [s for ref in refs for s in _h5_cell_strings(h5file, h5file[ref])]
    raise ValueError(f"cell holds MATLAB class {kind!r}, expected text")


# ---- image stacks --------------------------------------------------------------------
class ImageStack:
    """Images ``[N, H, W, 3]`` of a 4-D MATLAB variable, read one at a time.

    In MATLAB order the stack has one axis of length ``num_items`` (N: the last one if
    several fit, DCMH's ``[H, W, 3, N]``), one of length 3 (colour) and two spatial axes
    taken as (H, W) in MATLAB order. v7.3 stacks are indexed on the HDF5 dataset directly,
    so only one image is in memory at a time.
    """

    def __init__(self, value, num_items: int, *, reversed_axes: bool, description: str):
        self._value = value
        self._reversed = reversed_axes
        shape = tuple(reversed(value.shape)) if reversed_axes else tuple(value.shape)
        if len(shape) != 4:
            raise ValueError(f"{description!r}: images must be a 4-D array, got shape {shape}")
        item_axes = [a for a in range(4) if shape[a] == num_items]
        if not item_axes:
            raise ValueError(
                f"{description!r}: no axis of the image array {shape} (MATLAB "
                f"order) has the number of rows of the labels ({num_items}); "
                "the files disagree"
            )
        self.item_axis = item_axes[-1]
        rest = [a for a in range(4) if a != self.item_axis]
        colour = [a for a in rest if shape[a] == 3]
        if not colour:
            raise ValueError(f"{description!r}: image array {shape} has no colour axis of size 3")
        self.colour_axis = colour[-1]
        self.spatial_axes = [a for a in rest if a != self.colour_axis]
        self.shape = shape
        self.description = description

    def __len__(self) -> int:
        return self.shape[self.item_axis]

    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``[H, W, 3]`` (values outside 0..255 are clipped)."""
        index = [slice(None)] * 4
        if self._reversed:
            index[3 - self.item_axis] = int(i)
            item = np.asarray(self._value[tuple(index)]).transpose()  # MATLAB order, N dropped
        else:
            index[self.item_axis] = int(i)
            item = np.asarray(self._value[tuple(index)])
        kept = [a for a in range(4) if a != self.item_axis]  # MATLAB axes of `item`
        order = [kept.index(a) for a in (*self.spatial_axes, self.colour_axis)]
        image = item.transpose(order)
        if image.dtype != np.uint8:
            scale = 255.0 if image.dtype.kind == "f" and image.size and image.max() <= 1.0 else 1.0
            image = np.clip(np.rint(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image)


# ---- writing v7.3 --------------------------------------------------------------------
def _v73_header() -> bytes:
    text = (
        "MATLAB 7.3 MAT-file, Platform: fjsph_jax, Created on: "
        f"{time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 ."
    ).encode()
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    return header.ljust(512, b"\x00")


def _char_matrix(rows: Sequence[str]) -> np.ndarray:
    """MATLAB char matrix ``[len(rows), L]`` (space padded) as HDF5 uint16 ``[L, rows]``."""
    width = max((len(r) for r in rows), default=0)
    codes = np.full((len(rows), max(width, 1)), ord(" "), dtype=np.uint16)
    for i, row in enumerate(rows):
        codes[i, : len(row)] = [ord(c) for c in row]
    return codes.transpose()


def _write_value(h5file, group, name: str, value: Any) -> None:
    import h5py

    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        dtype = np.dtype(np.uint8) if value.dtype == bool else value.dtype
        data = value.astype(dtype).transpose()
        dataset = group.create_dataset(name, data=data)
        dataset.attrs["MATLAB_class"] = np.bytes_(
            "logical" if value.dtype == bool else _MATLAB_CLASS[dtype]
        )
        return
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        dataset = group.create_dataset(name, data=_char_matrix(value))
        dataset.attrs["MATLAB_class"] = np.bytes_("char")
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
        return
    if isinstance(value, (list, tuple)):  # a 1 x N cell array
        refs_group = h5file.require_group("#refs#")
        refs = np.empty((len(value), 1), dtype=h5py.ref_dtype)  # HDF5 [N, 1] = MATLAB [1, N]
        for i, element in enumerate(value):
            element_name = f"{name}_{i}_{len(refs_group)}"
            _write_value(h5file, refs_group, element_name, element)
            refs[i, 0] = refs_group[element_name].ref
        dataset = group.create_dataset(name, data=refs)
        dataset.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    raise TypeError(
        f"cannot write {name!r} of type {type(value).__name__} to a .mat file; "
        "use numeric numpy arrays, lists of str, or lists of those (cells)"
    )


def write_mat_v73(path: str | os.PathLike, variables: dict[str, Any]) -> None:
    """Write ``variables`` to a MATLAB v7.3 (HDF5) file that MATLAB and :class:`MatFile` read.

    Numeric arrays are given in MATLAB axis order (stored reversed, as MATLAB does); a list
    of str becomes a char matrix (one row per string); any other list a 1 x N cell array.
    """
    import h5py

    with h5py.File(os.fspath(path), "w", userblock_size=512) as h5file:
        for name, value in variables.items():
            _write_value(h5file, h5file, name, value)
    with open(path, "r+b") as f:
        f.write(_v73_header())
