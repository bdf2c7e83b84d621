"""PNG plots of retrieval curves: precision-recall and precision@N, one line per method.

Figures are built with matplotlib's object-oriented API on an explicit Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never through ``pyplot``: the
global backend and the user's interactive session are left untouched, and no figure is
registered with pyplot's figure manager (nothing to close, nothing leaks).

Inputs match :func:`fjsph_jax.evaluation.metrics.evaluate_retrieval`::

    result = evaluate_retrieval(...)
    pr, pn = result["pr_curve"], result["precision_at_n"]
    plot_pr_curves({"FJSPH": (pr["precision"], pr["recall"])}, "out/pr.png")
    plot_precision_at_n({"FJSPH": (pn["ns"], pn["values"])}, "out/p_at_n.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_FIGURE_SIZE_INCHES = (6.0, 4.5)
_DPI = 120


def _check_curves(curves: Any, argument: str, first: str, second: str) -> dict[str, tuple]:
    """Validates ``{name: (first [L], second [L])}`` with L >= 1; returns numpy pairs."""
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise ValueError(
            f"{argument} must be a non-empty dict mapping a method name to ({first}, {second})."
        )
    checked = {}
    for name, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{argument}[{name!r}] must be a pair ({first}, {second}).")
        first_values = np.asarray(pair[0], dtype=np.float64)
        second_values = np.asarray(pair[1], dtype=np.float64)
        if (
            first_values.ndim != 1
            or first_values.shape != second_values.shape
            or first_values.size == 0
        ):
            raise ValueError(
                f"{argument}[{name!r}]: {first} and {second} must be non-empty 1-D sequences "
                f"of equal length, got shapes {first_values.shape} and {second_values.shape}."
            )
        checked[str(name)] = (first_values, second_values)
    return checked


def _save(figure: Figure, path: str | os.PathLike) -> str:
    """Writes ``figure`` as a PNG at ``path`` (parent folders created); returns the path."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    FigureCanvasAgg(figure).print_figure(path, format="png", dpi=_DPI)
    return path


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    """A figure with one gridded axes carrying the title and axis labels."""
    figure = Figure(figsize=_FIGURE_SIZE_INCHES, layout="tight")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, linestyle=":", alpha=0.7)
    return figure, axes


def plot_pr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "Precision-recall (Hamming radius)",
) -> str:
    """Plots precision (y) against recall (x), one marked line per method.

    Args:
      curves: ``{method name: (precision [L], recall [L])}``, e.g. the ``K + 1`` points
        of :func:`fjsph_jax.evaluation.metrics.precision_recall_curve` (radii 0..K).
      path: output PNG path; missing parent folders are created.
      title: figure title.

    Returns:
      ``path`` as a string.
    """
    checked = _check_curves(curves, "curves", "precision", "recall")
    figure, axes = _new_axes(title, "Recall", "Precision")
    for name, (precision, recall) in checked.items():
        axes.plot(recall, precision, marker="o", markersize=3, label=name)
    axes.set_xlim(0.0, 1.02)
    axes.set_ylim(0.0, 1.02)
    axes.legend(loc="best")
    return _save(figure, path)


def plot_precision_at_n(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "Precision@N",
) -> str:
    """Plots mean precision of the top N (y) against N (x), one marked line per method.

    Args:
      curves: ``{method name: (ns [L], precision values [L])}``, e.g. the ``ns`` and
        ``values`` of :func:`fjsph_jax.evaluation.metrics.evaluate_retrieval`'s ``precision_at_n``.
      path: output PNG path; missing parent folders are created.
      title: figure title.

    Returns:
      ``path`` as a string.
    """
    checked = _check_curves(curves, "curves", "ns", "values")
    figure, axes = _new_axes(title, "N (number of top-ranked items)", "Precision@N")
    for name, (ns, values) in checked.items():
        axes.plot(ns, values, marker="o", markersize=3, label=name)
    axes.set_ylim(0.0, 1.02)
    axes.legend(loc="best")
    return _save(figure, path)
