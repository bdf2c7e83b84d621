"""Tests for fjsph_jax.data.matfiles: MATLAB v5 and v7.3 read the same way."""

import h5py
import numpy as np
import pytest
import scipy.io

from fjsph_jax.data.matfiles import MatFile, is_v73, write_mat_v73


@pytest.fixture(params=["v5", "v73"])
def mat_path(request, tmp_path):
    """One file in each format holding the same variables (MATLAB axis order)."""
    labels = np.array([[0, 1, 1], [1, 0, 0]], np.float64)  # MATLAB [N=2, C=3]
    images = np.arange(4 * 5 * 3 * 2, dtype=np.uint8).reshape(4, 5, 3, 2)  # [H, W, 3, N]
    path = str(tmp_path / f"data-{request.param}.mat")
    if request.param == "v5":
        cells = np.empty(2, dtype=object)
        cells[0], cells[1] = ["first a", "first b"], ["second"]
        scipy.io.savemat(
            path,
            {
                "LAll": labels,
                "IAll": images,
                "index": ["/x/im1.jpg", "/y/im22.jpg"],
                "caption": cells,
            },
        )
    else:
        write_mat_v73(
            path,
            {
                "LAll": labels,
                "IAll": images,
                "index": ["/x/im1.jpg", "/y/im22.jpg"],
                "caption": [["first a", "first b"], ["second"]],
            },
        )
    return path, labels, images


def test_format_is_detected(mat_path):
    path, _, _ = mat_path
    assert is_v73(path) == path.endswith("v73.mat")
    with open(path, "rb") as f:
        assert is_v73(f.read()) == path.endswith("v73.mat")


def test_arrays_come_back_in_matlab_axis_order(mat_path):
    path, labels, images = mat_path
    with MatFile(path) as mat:
        assert mat.keys() == ["IAll", "LAll", "caption", "index"]
        np.testing.assert_array_equal(mat.array("LAll"), labels)
        assert mat.shape("IAll") == (4, 5, 3, 2)
        assert mat.pick(["category", "LAll"]) == "LAll"


def test_strings_and_cells(mat_path):
    path, _, _ = mat_path
    with MatFile(path) as mat:
        assert mat.strings("index") == [["/x/im1.jpg"], ["/y/im22.jpg"]]
        assert mat.strings("caption") == [["first a", "first b"], ["second"]]


def test_image_stack_reads_one_hwc_image(mat_path):
    path, _, images = mat_path
    with MatFile(path) as mat:
        stack = mat.image_stack("IAll", num_items=2)
        assert len(stack) == 2
        for i in range(2):
            np.testing.assert_array_equal(stack[i], images[..., i])  # [H, W, 3]


def test_v73_layout_on_disk_is_reversed(tmp_path):
    """What h5py sees is MATLAB's array with its axes reversed, as MATLAB writes it."""
    path = str(tmp_path / "x.mat")
    labels = np.arange(6, dtype=np.float64).reshape(2, 3)
    write_mat_v73(path, {"LAll": labels, "name": ["ab"]})
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["LAll"][()], labels.T)
        assert f["LAll"].attrs["MATLAB_class"] == b"double"
        assert f["name"].attrs["MATLAB_class"] == b"char"
        np.testing.assert_array_equal(f["name"][()].ravel(), [ord("a"), ord("b")])
    with open(path, "rb") as f:
        assert f.read(10) == b"MATLAB 7.3"


def test_nhwc_stack_saved_from_python_is_also_read(tmp_path):
    path = str(tmp_path / "nhwc.mat")
    images = np.random.default_rng(0).integers(0, 255, size=(2, 4, 6, 3), dtype=np.uint8)
    scipy.io.savemat(path, {"IAll": images})
    with MatFile(path) as mat:
        np.testing.assert_array_equal(mat.image_stack("IAll", 2)[1], images[1])


def test_errors_name_the_file_and_variable(tmp_path):
    path = str(tmp_path / "l.mat")
    scipy.io.savemat(path, {"label": np.eye(2)})
    with MatFile(path) as mat:
        with pytest.raises(ValueError, match=r"has none of the variables \['category'\].*label"):
            mat.pick(["category"])
        with pytest.raises(ValueError, match="no variable 'x'"):
            mat.array("x")
        with pytest.raises(ValueError, match="must be a 4-D array"):
            mat.image_stack("label", 2)
    scipy.io.savemat(path, {"IAll": np.zeros((2, 2, 3, 4), np.uint8)})
    with MatFile(path) as mat:
        with pytest.raises(ValueError, match="number of rows of the labels"):
            mat.image_stack("IAll", 5)
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="bad.mat.*not a readable MATLAB"):
        MatFile(str(bad))
