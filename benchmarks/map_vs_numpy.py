"""MAP@all at NUS-WIDE scale: fjsph_jax.evaluation.metrics vs a plain numpy per-query loop.

Default workload (issue 5): 2,100 queries x 190,000 database items x 64-bit random codes
(about 2,900 items per distance value: ties everywhere) and 21-class multi-hot labels.

The baseline is the loop the PyTorch cross-modal hashing code bases use (DCMH-style
``calc_map``): per query, Hamming distances by a matmul, relevance by a label matmul, an
argsort, and AP from the positions of the relevant items. It uses a *stable* argsort (the
baselines' default quicksort leaves the order of ties unspecified, so their MAP is not
reproducible to the last digit); ours ranks ties by database index too, so the two MAPs
are asserted equal to 1e-8 (ours sums the per-item terms hits/rank in float64 on the host
path, compensated float32 in the device kernel; the loop works in float64).

Ours is timed as users call it (``method="auto"``: on CPU the host ranking of
:mod:`fjsph_jax.evaluation.metrics_host`, one thread per core; the mesh is passed but only the device
kernel uses it) and, for comparison, with ``method="device"`` (the counting kernel that
GPU/TPU runs use) on the same CPU mesh; both MAPs are asserted equal to 1e-8.

The loop costs the same for every query, so by default it runs on the first
``--baseline-queries`` queries and its time is scaled to all queries (the MAP equality is
asserted on that subset); ``--baseline-queries 0`` runs the whole loop.

    python benchmarks/map_vs_numpy.py [--queries 2100] [--db 190000] [--baseline-queries 210]
                                      [--no-device-kernel]
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


def run(num_queries, num_db, bits, classes, baseline_queries, repeats, seed,
        device_kernel=True) -> dict:
    from fjsph_jax import parallel
from fjsph_jax.evaluation import metrics, metrics_host

    query_codes, db_codes, query_labels, db_labels = nus_wide_like(
        num_queries, num_db, bits, classes, seed)
    subset = num_queries if baseline_queries in (0, None) else min(baseline_queries, num_queries)

    base_wall, base_cpu, base_map = common.timed(
        lambda: numpy_per_query_map(query_codes[:subset], db_codes, query_labels[:subset],
                                    db_labels), repeats=1)
    scale = num_queries / subset

    mesh = parallel.make_mesh()
    ours = lambda q, method: metrics.mean_average_precision(  # noqa: E731
        query_codes[:q], db_codes, query_labels[:q], db_labels, mesh=mesh, method=method)
    method = "host" if metrics._use_host_ranking("auto", mesh) else "device"
    subset_map = ours(subset, "auto")
    compile_wall, _, _ = common.timed(lambda: ours(num_queries, "auto"), repeats=1)
    wall, cpu, value = common.timed(lambda: ours(num_queries, "auto"), repeats=repeats)
    if abs(subset_map - base_map) > 1e-8:
        raise AssertionError(
            f"MAP differs: ours {subset_map!r} vs numpy {base_map!r} on {subset} queries")
    kernel = None
    if device_kernel and method != "device":
        common.timed(lambda: ours(num_queries, "device"), repeats=1)  # compilation
        kernel_wall, kernel_cpu, kernel_value = common.timed(
            lambda: ours(num_queries, "device"), repeats=1)
        if abs(kernel_value - value) > 1e-8:
            raise AssertionError(f"MAP differs: method {method} {value!r} vs device kernel "
                                 f"{kernel_value!r}")
        kernel = {"wall_s": kernel_wall, "cpu_s": kernel_cpu, "map_all": kernel_value,
                  "speedup": base_wall * scale / kernel_wall}

    threads = metrics_host.default_threads()
    result = {
        "workload": {"queries": num_queries, "db": num_db, "bits": bits, "classes": classes},
        "numpy_loop": {"queries_timed": subset, "wall_s": base_wall * scale,
                       "cpu_s": base_cpu * scale, "per_query_ms": 1e3 * base_wall / subset,
                       "extrapolated": subset != num_queries},
        "ours_mesh": {"wall_s": wall, "cpu_s": cpu, "devices": len(mesh.devices.flat),
                      "method": method, "host_threads": threads if method == "host" else None,
                      "first_call_s": compile_wall},
        "device_kernel_mesh": kernel,
        "map_all": value,
        "map_all_subset": {"ours": subset_map, "numpy": base_map},
        "speedup": base_wall * scale / wall,
    }
    how = f"extrapolated from the first {subset} queries" if subset != num_queries else "all queries"
    ours_name = (f"host ranking, {threads} threads" if method == "host"
                 else f"device kernel, {len(mesh.devices.flat)} devices")
    print(f"MAP@all, {num_queries} queries x {num_db} items x {bits} bits, {classes} classes")
    print(common.row(f"numpy per-query loop ({how})", base_wall * scale, base_cpu * scale))
    print(common.row(f"fjsph_jax.evaluation.metrics ({ours_name})", wall, cpu))
    if kernel is not None:
        print(common.row(f"  method='device' ({len(mesh.devices.flat)} CPU devices)",
                         kernel["wall_s"], kernel["cpu_s"]))
    print(f"  ratio numpy / ours: {result['speedup']:.1f}x"
          + (f" (device kernel: {kernel['speedup']:.1f}x)" if kernel is not None else "")
          + f"; first call (compile) {compile_wall:.2f} s")
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
    parser.add_argument("--no-device-kernel", action="store_true",
                        help="skip timing method='device' (the counting kernel) on CPU")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    common.setup_cpu_devices(args.devices)
    result = run(args.queries, args.db, args.bits, args.classes, args.baseline_queries,
                 args.repeats, args.seed, device_kernel=not args.no_device_kernel)
    result["machine"] = common.machine()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
