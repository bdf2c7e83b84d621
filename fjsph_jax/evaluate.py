"""Encode -> codes -> metrics, plots and ``results.json``.

Protocol: query items are encoded by one modality and ranked against the database
encoded by the other: image->text (``i2t``: image query codes vs text database codes)
and text->image (``t2i``). Codes are ``sign_pm(h)`` of the hash heads' tanh outputs
(``+1`` at 0, never 0). ``random_codes`` repeats the evaluation with uniformly random
codes of the same shapes: the chance level of the split.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fjsph_jax import metrics, parallel, plots
from fjsph_jax.codes import sign_pm
from fjsph_jax.step import StepSettings, tower_features

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}


def make_encode_fn(graphdef, settings: StepSettings) -> Callable:
    """Jitted ``(params, batch) -> (image_codes, text_codes)`` int8 ``[B, K]`` (no masking)."""

    @jax.jit
    def encode(params, batch):
        model = nnx.merge(graphdef, params)
        f_img, f_txt = tower_features(model, batch, settings, None, train=False)
        return sign_pm(model.hash_image(f_img)), sign_pm(model.hash_text(f_txt))

    return encode


def encode_rows(
    encode_fn: Callable,
    params,
    source,
    rows: np.ndarray,
    *,
    batch_size: int,
    mesh,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of dataset ``rows`` for both modalities: int8 ``[len(rows), K]`` each.

    ``source`` is a mapping of ``[N, ...]`` model inputs or a row loader
    (:mod:`fjsph_jax.data.loaders`, e.g. the streamed dataset). Batches are padded to a
    fixed size (a multiple of the device count, so one compilation) and split over the
    mesh; each host loads its slice.
    """
    image, text = parallel.map_batches(
        lambda batch: encode_fn(params, batch), source, rows, batch_size=batch_size, mesh=mesh
    )
    return image, text


def evaluate_codes(
    query_codes: Mapping[str, np.ndarray],
    db_codes: Mapping[str, np.ndarray],
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    eval_config,
) -> dict:
    """``{'i2t': {...}, 't2i': {...}}`` of :func:`metrics.evaluate_retrieval` results."""
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
        )
    return out


def random_codes_baseline(
    num_query: int, num_db: int, bits: int, query_labels, db_labels, eval_config, *, seed: int
) -> dict:
    """The same evaluation with uniformly random ``{-1,+1}`` codes (chance level)."""
    rng = np.random.default_rng(seed)
    draw = lambda n: np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)  # noqa: E731
    q = {"image": draw(num_query), "text": draw(num_query)}
    d = {"image": draw(num_db), "text": draw(num_db)}
    return evaluate_codes(q, d, query_labels, db_labels, eval_config)


def write_results(workdir: str, results: dict) -> dict:
    """Writes ``results.json`` and PR / P@N plots (PNG) into ``workdir``; returns the paths."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    curves = {f"{d} (FJSPH)": results[d] for d in DIRECTIONS}
    curves.update({f"{d} (random codes)": results["random_codes"][d] for d in DIRECTIONS})
    bits = results["bits"]
    pr = plots.plot_pr_curves(
        {k: (v["pr_curve"]["precision"], v["pr_curve"]["recall"]) for k, v in curves.items()},
        os.path.join(workdir, "pr_curve.png"),
        title=f"Hamming-radius PR curve, {bits} bits",
    )
    pn = plots.plot_precision_at_n(
        {k: (v["precision_at_n"]["ns"], v["precision_at_n"]["values"]) for k, v in curves.items()},
        os.path.join(workdir, "precision_at_n.png"),
        title=f"Precision@N, {bits} bits",
    )
    return {"results": path, "pr_curve": pr, "precision_at_n": pn}


def format_table(results: dict) -> str:
    """The MAP table printed at the end of a run."""
    has_k = "map_at_k" in results["i2t"]
    k = results.get("top_k")
    header = f"{'':<16}{'MAP@all':>10}" + (f"{f'MAP@{k}':>10}" if has_k else "")
    lines = [f"MAP at {results['bits']} bits", header]
    for label, block in (("FJSPH", results), ("random codes", results["random_codes"])):
        for d in DIRECTIONS:
            row = f"{label + ' ' + d:<16}{block[d]['map_all']:>10.4f}"
            if has_k:
                row += f"{block[d]['map_at_k']:>10.4f}"
            lines.append(row)
    return "\n".join(lines)


def sign_codes(outputs) -> np.ndarray:
    """int8 {-1,+1} codes of continuous outputs (host helper for banks)."""
    return np.asarray(sign_pm(jnp.asarray(outputs)))
