"""Tests for fjsph_jax.evaluation.plots: valid, non-trivial PNG files and clear argument errors."""

import matplotlib
import numpy as np
import pytest

from fjsph_jax.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=5_000):
    with open(path, "rb") as handle:
        content = handle.read()
    assert content[:8] == PNG_SIGNATURE
    assert len(content) > min_bytes  # axes, labels, two lines and a legend, not a blank image


def test_plot_pr_curves_writes_png_in_new_folder(tmp_path):
    backend_before = matplotlib.rcParams["backend"]
    recall = np.linspace(0.0, 1.0, 9)
    curves = {
        "FJSPH": (list(1.0 - 0.5 * recall**2), list(recall)),
        "baseline": (np.full(9, 0.4), recall),
    }
    target = tmp_path / "nested" / "dir" / "pr.png"
    returned = plots.plot_pr_curves(curves, target, title="PR, 8 bits")
    assert returned == str(target)
    _assert_png(target)
    assert matplotlib.rcParams["backend"] == backend_before


def test_plot_precision_at_n_writes_png(tmp_path):
    ns = [1, 10, 50, 100, 500]
    curves = {
        "img->txt": (ns, [0.9, 0.85, 0.8, 0.7, 0.6]),
        "txt->img": (ns, [0.8, 0.8, 0.7, 0.6, 0.5]),
    }
    target = str(tmp_path / "out" / "p_at_n.png")
    assert plots.plot_precision_at_n(curves, target) == target
    _assert_png(target)


@pytest.mark.parametrize(
    "curves, message",
    [
        ({}, "non-empty dict"),
        ([(0.1, 0.2)], "non-empty dict"),
        ({"a": ([0.5, 0.4],)}, "must be a pair"),
        ({"a": ([0.5, 0.4], [0.1])}, "equal length"),
        ({"a": ([], [])}, "equal length"),
    ],
)
def test_invalid_curves_raise_value_error(tmp_path, curves, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_pr_curves(curves, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=message):
        plots.plot_precision_at_n(curves, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
