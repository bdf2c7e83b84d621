"""Every method on one protocol: the README's table of MAP, time and chance level.

    python launch/benchmark.py --suite=methods [--bits=16,32,64] [--quick] [--out=DIR]

Each row is one ``launch/train.py`` run (``fjsph_jax.training.loop.train_and_evaluate``)
on the embedded demo, in its own workdir under ``--out``, all on the same splits:

    jspsh          configs/jspsh.py: the demo's hand-crafted features
    fjsph-frozen   configs/default.py, frozen_encoder on the same hand-crafted features
    fjsph          configs/default.py: end to end on pixels and captions
    jdsh           configs/jdsh_demo.py: the hand-crafted features (when available)

Columns: MAP@all and MAP@50 (convention named; both conventions are in the JSON) for
image->text and text->image, the random-codes MAP@all (chance level), and the wall time
of the run (data, fitting or training, evaluation). A run whose workdir already holds
``results.json`` for the same config is read back instead of rerun (``--rerun`` forces).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "configs")


@dataclasses.dataclass(frozen=True)
class Row:
    """One method setting of the table: a config file and overrides."""

    name: str
    config_file: str
    overrides: dict
    inputs: str  # what the method reads, for the table


def _rows() -> list[Row]:
    rows = [
        Row("jspsh", "jspsh.py", {}, "hand-crafted features"),
        Row("fjsph-frozen", "default.py",
            {"train.mode": "frozen_encoder", "data.features": "handcrafted",
             "init.from_scratch": False},
            "hand-crafted features"),
        Row("fjsph", "default.py", {}, "pixels + captions"),
    ]
    if os.path.exists(os.path.join(CONFIGS, "jdsh_demo.py")):
        rows.append(Row("jdsh", "jdsh_demo.py", {}, "hand-crafted features"))
    return rows


QUICK = {  # seconds per run on a 2-core CPU: exercises every code path, measures nothing
    "data.num_items": 600, "data.num_query": 60, "data.num_train": 400,
    "data.num_validation": 50, "eval.batch_size": 128,
}
QUICK_BY_METHOD = {
    "jspsh": {"jspsh.cluster_ks": (8, 16), "jspsh.anchors": 200},
    "fjsph": {"train.num_epochs": 1, "train.global_batch_size": 64, "loss.cluster_ks": (4, 8),
              "model.vision": "vit_micro", "model.text": "text_micro", "model.feature_dim": 32,
              "model.hash_hidden_dim": 32, "train.warmup_steps": 2, "train.log_every_steps": 2},
    "jdsh": {"train.num_epochs": 1, "jdsh.text_hidden_dim": 64},
}


def load_config(row: Row, *, bits: int, split: str, quick: bool, top_k: int):
    """The row's config at ``bits`` with the suite's settings applied."""
    sys.path.insert(0, CONFIGS)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"bench_config_{row.name}", os.path.join(CONFIGS, row.config_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    settings = {"bits": bits, "eval.split": split, "eval.top_k": top_k, **row.overrides}
    if quick:
        settings.update(QUICK)
        settings.update(QUICK_BY_METHOD.get(row.name.split("-")[0], {}))
    from fjsph_jax.configuration import apply_overrides

    return apply_overrides(config, settings)


def _cached(workdir: str, fingerprint: str) -> dict | None:
    path = os.path.join(workdir, "results.json")
    marker = os.path.join(workdir, "benchmark.json")
    if not (os.path.exists(path) and os.path.exists(marker)):
        return None
    with open(marker) as f:
        meta = json.load(f)
    if meta.get("fingerprint") != fingerprint:
        return None
    with open(path) as f:
        results = json.load(f)
    results["wall_seconds"] = meta["wall_seconds"]
    return results


def run_row(row: Row, bits: int, *, out: str, split: str, quick: bool, top_k: int,
            rerun: bool, train: Callable | None = None) -> dict:
    """Runs (or reads back) one row at ``bits``; returns its results plus ``wall_seconds``."""
    from fjsph_jax.training.checkpointing import config_fingerprint
    from fjsph_jax.training.loop import train_and_evaluate

    config = load_config(row, bits=bits, split=split, quick=quick, top_k=top_k)
    workdir = os.path.join(out, f"{row.name}-{bits}")
    fingerprint = config_fingerprint(config)
    cached = None if rerun else _cached(workdir, fingerprint)
    if cached is not None:
        print(f"[{row.name} {bits} bits] read back from {workdir}", flush=True)
        return cached
    if rerun and os.path.isdir(workdir):
        import shutil

        shutil.rmtree(workdir)
    print(f"[{row.name} {bits} bits] running in {workdir}", flush=True)
    start = time.perf_counter()
    results = (train or train_and_evaluate)(config, workdir)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, "benchmark.json"), "w") as f:
        json.dump({"fingerprint": fingerprint, "wall_seconds": wall}, f)
    return {**results, "wall_seconds": wall}


def table_rows(results: list[tuple[Row, int, dict]]) -> list[dict]:
    """Flat records of the table (also written as JSON)."""
    records = []
    for row, bits, r in results:
        records.append({
            "method": row.name,
            "inputs": row.inputs,
            "bits": bits,
            "code": f"{r['code_format']} {r['code_dim']}-d",
            "map_convention": r["map_convention"],
            "top_k": r["top_k"],
            "i2t_map_all": r["i2t"]["map_all"],
            "t2i_map_all": r["t2i"]["map_all"],
            "i2t_map_at_k": r["i2t"]["map_at_k_by_convention"],
            "t2i_map_at_k": r["t2i"]["map_at_k_by_convention"],
            "chance_map_all": 0.5 * (r["random_codes"]["i2t"]["map_all"]
                                     + r["random_codes"]["t2i"]["map_all"]),
            "wall_seconds": r["wall_seconds"],
            "train_seconds": r.get("train_seconds"),
            "split": r["split"],
            "split_sizes": r["split_sizes"],
        })
    return records


def markdown(records: list[dict], convention: str) -> str:
    """The README table: MAP@50 in ``convention``."""
    k = records[0]["top_k"] if records else 50
    head = (f"| method | inputs | bits | codes | MAP@all i2t | MAP@all t2i | "
            f"MAP@{k} i2t ({convention}) | MAP@{k} t2i ({convention}) | chance MAP@all | "
            "wall time |")
    lines = [head, "|" + "---|" * 10]
    for r in records:
        lines.append(
            f"| {r['method']} | {r['inputs']} | {r['bits']} | {r['code']} | "
            f"{r['i2t_map_all']:.3f} | {r['t2i_map_all']:.3f} | "
            f"{r['i2t_map_at_k'][convention]:.3f} | {r['t2i_map_at_k'][convention]:.3f} | "
            f"{r['chance_map_all']:.3f} | {_duration(r['wall_seconds'])} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def run(*, bits_list=(16, 32, 64), methods=None, out: str, split: str = "test",
        quick: bool = False, top_k: int = 50, convention: str = "top_k",
        rerun: bool = False) -> dict:
    """Runs the suite; prints and returns ``{"rows": [...], "markdown": str}``."""
    rows = [r for r in _rows() if methods is None or r.name in methods]
    unknown = set(methods or ()) - {r.name for r in _rows()}
    if unknown:
        raise ValueError(f"unknown suite rows {sorted(unknown)}; available: "
                         f"{[r.name for r in _rows()]}")
    os.makedirs(out, exist_ok=True)
    results = []
    for row in rows:
        for bits in bits_list:
            results.append((row, bits, run_row(row, bits, out=out, split=split, quick=quick,
                                               top_k=top_k, rerun=rerun)))
    records = table_rows(results)
    table = markdown(records, convention)
    print("\n" + table, flush=True)
    summary = {"split": split, "quick": quick, "rows": records, "markdown": table}
    with open(os.path.join(out, "methods.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "methods.md"), "w") as f:
        f.write(table + "\n")
    return summary
