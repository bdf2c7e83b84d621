"""The cross-modal retrieval protocol: codes in, ``results.json`` and plots out.

Query items are coded by one modality and ranked against the database coded by the
other: image->text (``i2t``: image query codes vs text database codes) and text->image
(``t2i``). Whoever made the codes, they arrive in one of two formats:

* ``"pm1"``: int8 ``[M, K]`` in {-1, +1}, ranked by Hamming distance (FJSPH, JDSH);
* ``"sparse"``: {0, 1} ``[M, D]`` with exactly ``r`` ones per row, ranked by inner
  product, descending (JSPSH).

Ties are broken by database index in both. MAP@K comes under the convention
``eval_config.map_convention`` (``top_k``: JSPSH ``mAP.m``, DJSRH/JDSH
``calculate_top_map``; ``dcmh``: DCMH/DCHMT ``calc_map_k``), and both conventions are
recorded next to it. ``random_codes`` repeats the evaluation with uniformly random codes of
the same format and shapes: the chance level of the split.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from fjsph_jax.evaluation import metrics, plots

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}
CODE_FORMATS = ("pm1", "sparse")


def map_convention(eval_config, default: str) -> str:
    """``eval_config.map_convention``, or ``default`` (the method's) when it is empty."""
    convention = eval_config.get("map_convention", "") if hasattr(eval_config, "get") else ""
    return convention or default


def evaluate_codes(
    query_codes: Mapping[str, np.ndarray],
    db_codes: Mapping[str, np.ndarray],
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    eval_config,
    *,
    code_format: str = "pm1",
    convention: str = "top_k",
) -> dict:
    """``{'i2t': {...}, 't2i': {...}}`` of :func:`metrics.evaluate_retrieval` results.

    Args:
      query_codes, db_codes: ``{"image": [M, D], "text": [M, D]}`` in ``code_format``.
      query_labels, db_labels: multi-hot ``[Q, C]`` / ``[N, C]``.
      eval_config: ``config.eval`` (``top_k``, ``precision_ns``, ``query_chunk``).
      code_format: ``"pm1"`` or ``"sparse"``.
      convention: the MAP@K convention reported as ``map_at_k``.
    """
    if code_format not in CODE_FORMATS:
        raise ValueError(f"code_format={code_format!r}; allowed: {CODE_FORMATS}")
    out = {}
    for name, (q_mod, db_mod) in DIRECTIONS.items():
        out[name] = metrics.evaluate_retrieval(
            query_codes[q_mod],
            db_codes[db_mod],
            query_labels,
            db_labels,
            top_k=eval_config.top_k,
            ns=tuple(eval_config.precision_ns),
            query_chunk=eval_config.query_chunk,
            code_format=code_format,
            convention=convention,
        )
    return out


def random_codes(num_rows: int, code_dim: int, bits: int, code_format: str, rng) -> np.ndarray:
    """Uniformly random codes: ±1 int8 ``[M, K]``, or ``[M, D]`` 0/1 with ``bits`` ones
    at uniformly random positions (``sparse``)."""
    if code_format == "pm1":
        return np.where(rng.random((num_rows, code_dim)) < 0.5, -1, 1).astype(np.int8)
    order = np.argsort(rng.random((num_rows, code_dim)), axis=1)[:, :bits]
    codes = np.zeros((num_rows, code_dim), np.uint8)
    np.put_along_axis(codes, order, 1, axis=1)
    return codes


def random_codes_baseline(
    num_query: int,
    num_db: int,
    bits: int,
    query_labels,
    db_labels,
    eval_config,
    *,
    seed: int,
    code_format: str = "pm1",
    code_dim: int | None = None,
    convention: str = "top_k",
) -> dict:
    """The same evaluation with uniformly random codes of the same format: the chance level."""
    rng = np.random.default_rng(seed)
    dim = bits if code_dim is None else code_dim
    draw = lambda n: random_codes(n, dim, bits, code_format, rng)  # noqa: E731
    q = {"image": draw(num_query), "text": draw(num_query)}
    d = {"image": draw(num_db), "text": draw(num_db)}
    return evaluate_codes(
        q, d, query_labels, db_labels, eval_config, code_format=code_format, convention=convention
    )


def write_results(workdir: str, results: dict) -> dict:
    """Writes ``results.json`` and PR / P@N plots (PNG) into ``workdir``; returns the paths."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    title = results.get("method_title", "codes")
    curves = {f"{d} ({title})": results[d] for d in DIRECTIONS}
    curves.update({f"{d} (random codes)": results["random_codes"][d] for d in DIRECTIONS})
    bits = results["bits"]
    sparse = results.get("code_format") == "sparse"
    pr = plots.plot_pr_curves(
        {k: (v["pr_curve"]["precision"], v["pr_curve"]["recall"]) for k, v in curves.items()},
        os.path.join(workdir, "pr_curve.png"),
        title=(f"{title}: PR curve over inner-product thresholds, {bits} ones"
               if sparse else f"{title}: Hamming-radius PR curve, {bits} bits"),
    )
    pn = plots.plot_precision_at_n(
        {k: (v["precision_at_n"]["ns"], v["precision_at_n"]["values"]) for k, v in curves.items()},
        os.path.join(workdir, "precision_at_n.png"),
        title=f"{title}: precision@N, {bits} bits",
    )
    return {"results": path, "pr_curve": pr, "precision_at_n": pn}


def format_table(results: dict) -> str:
    """The MAP table printed at the end of a run; MAP@K names its convention."""
    has_k = "map_at_k" in results["i2t"]
    k = results.get("top_k")
    convention = results.get("map_convention", "top_k")
    k_header = f"MAP@{k} ({convention})"
    header = f"{'':<22}{'MAP@all':>10}" + (f"{k_header:>22}" if has_k else "")
    title = results.get("method_title", "codes")
    split = results.get("split", "test")
    lines = [f"MAP on the {split} queries, {results['bits']} bits", header]
    for label, block in ((title, results), ("random codes", results["random_codes"])):
        for d in DIRECTIONS:
            row = f"{label + ' ' + d:<22}{block[d]['map_all']:>10.4f}"
            if has_k:
                row += f"{block[d]['map_at_k']:>22.4f}"
            lines.append(row)
    return "\n".join(lines)
