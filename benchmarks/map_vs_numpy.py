"""MAP@all at NUS-WIDE scale: fjsph_jax.metrics vs a plain numpy per-query loop.

Default workload (issue 5): 2,100 queries x 190,000 database items x 64-bit random codes
(about 2,900 items per distance value: ties everywhere) and 21-class multi-hot labels.

The baseline is the loop the PyTorch cross-modal hashing code bases use (DCMH-style
``calc_map``): per query, Hamming distances by a matmul, relevance by a label matmul, an
argsort, and AP from the positions of the relevant items. It uses a *stable* argsort (the
baselines' default quicksort leaves the order of ties unspecified, so their MAP is not
reproducible to the last digit); ours ranks ties by database index too, so the two MAPs
are asserted equal to 1e-8 (ours sums float32 per-item terms hits/rank with compensated
summation; the loop works in float64; the observed difference is ~5e-10).

The loop costs the same for every query, so by default it runs on the first
``--baseline-queries`` queries and its time is scaled to all queries (the MAP equality is
asserted on that subset); ``--baseline-queries 0`` runs the whole loop.

    python benchmarks/map_vs_numpy.py [--queries 2100] [--db 190000] [--baseline-queries 210]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (must configure JAX before fjsph_jax imports it)


def numpy_per_query_map(query_codes, db_codes, query_labels, db_labels) -> float:
    """MAP@all one query at a time (the baselines' loop, with a stable argsort)."""
    import numpy as np

    num_bits = query_codes.shape[1]
    db_codes_t = db_codes.astype(np.float32).T
    db_labels_t = db_labels.astype(np.float32).T
    total = 0.0
    for q in range(query_codes.shape[0]):
        relevant = (query_labels[q].astype(np.float32) @ db_labels_t) > 0
        num_relevant = int(relevant.sum())
        if num_relevant == 0:
            continue
        hamming = 0.5 * (num_bits - query_codes[q].astype(np.float32) @ db_codes_t)
        order = np.argsort(hamming, kind="stable")
        positions = np.flatnonzero(relevant[order]) + 1.0  # ranks of the relevant items
        total += np.mean(np.arange(1, num_relevant + 1) / positions)
    return total / query_codes.shape[0]


def nus_wide_like(num_queries: int, num_db: int, bits: int, classes: int, seed: int):
    """Random +-1 codes and multi-hot labels (~2.8 labels per item, at least one)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def labels(rows):
        multi_hot = (rng.random((rows, classes)) < 0.09).astype(np.int8)
        multi_hot[np.arange(rows), rng.integers(0, classes, rows)] = 1
        return multi_hot

    def codes(rows):
        return np.where(rng.random((rows, bits)) < 0.5, -1, 1).astype(np.int8)

    return codes(num_queries), codes(num_db), labels(num_queries), labels(num_db)


def run(num_queries, num_db, bits, classes, baseline_queries, repeats, seed) -> dict:
    from fjsph_jax import metrics, parallel

    query_codes, db_codes, query_labels, db_labels = nus_wide_like(
        num_queries, num_db, bits, classes, seed)
    subset = num_queries if baseline_queries in (0, None) else min(baseline_queries, num_queries)

    base_wall, base_cpu, base_map = common.timed(
        lambda: numpy_per_query_map(query_codes[:subset], db_codes, query_labels[:subset],
                                    db_labels), repeats=1)
    scale = num_queries / subset

    mesh = parallel.make_mesh()
    ours = lambda q, mesh: metrics.mean_average_precision(  # noqa: E731
        query_codes[:q], db_codes, query_labels[:q], db_labels, mesh=mesh)
    subset_map = ours(subset, mesh)
    compile_wall, _, _ = common.timed(lambda: ours(num_queries, mesh), repeats=1)
    wall, cpu, value = common.timed(lambda: ours(num_queries, mesh), repeats=repeats)
    common.timed(lambda: ours(num_queries, None), repeats=1)
    single_wall, single_cpu, single_value = common.timed(
        lambda: ours(num_queries, None), repeats=repeats)
    if abs(subset_map - base_map) > 1e-8 or abs(value - single_value) > 1e-8:
        raise AssertionError(
            f"MAP differs: ours {subset_map!r} vs numpy {base_map!r} on {subset} queries; "
            f"mesh {value!r} vs one device {single_value!r}")

    result = {
        "workload": {"queries": num_queries, "db": num_db, "bits": bits, "classes": classes},
        "numpy_loop": {"queries_timed": subset, "wall_s": base_wall * scale,
                       "cpu_s": base_cpu * scale, "per_query_ms": 1e3 * base_wall / subset,
                       "extrapolated": subset != num_queries},
        "ours_mesh": {"wall_s": wall, "cpu_s": cpu, "devices": len(mesh.devices.flat),
                      "first_call_s": compile_wall},
        "ours_one_device": {"wall_s": single_wall, "cpu_s": single_cpu},
        "map_all": value,
        "map_all_subset": {"ours": subset_map, "numpy": base_map},
        "speedup": base_wall * scale / wall,
        "speedup_one_device": base_wall * scale / single_wall,
    }
    how = f"extrapolated from the first {subset} queries" if subset != num_queries else "all queries"
    print(f"MAP@all, {num_queries} queries x {num_db} items x {bits} bits, {classes} classes")
    print(common.row(f"numpy per-query loop ({how})", base_wall * scale, base_cpu * scale))
    print(common.row(f"fjsph_jax.metrics ({len(mesh.devices.flat)} CPU devices)", wall, cpu))
    print(common.row("fjsph_jax.metrics (1 CPU device)", single_wall, single_cpu))
    print(f"  ratio numpy / ours: {result['speedup']:.1f}x (one device: "
          f"{result['speedup_one_device']:.1f}x); first call (compile) {compile_wall:.2f} s")
    print(f"  MAP@all {value:.12f}; on {subset} queries ours {subset_map:.12f} = numpy {base_map:.12f}")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=2100)
    parser.add_argument("--db", type=int, default=190_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--baseline-queries", type=int, default=210,
                        help="queries timed in the numpy loop (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=None, help="JAX CPU devices (default: cores)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    common.setup_cpu_devices(args.devices)
    result = run(args.queries, args.db, args.bits, args.classes, args.baseline_queries,
                 args.repeats, args.seed)
    result["machine"] = common.machine()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
