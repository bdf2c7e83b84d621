"""Runs every retrieval benchmark side by side and prints the ratios.

    python benchmarks/run_all.py [--quick] [--json results.json]

``--quick`` shrinks the workloads (100 search queries, 210 metric queries) for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads (smoke run)")
    parser.add_argument("--devices", type=int, default=None, help="JAX CPU devices (default: cores)")
    parser.add_argument("--json", help="also write all results to this file")
    args = parser.parse_args(argv)
    common.setup_cpu_devices(args.devices)

    from benchmarks import map_vs_numpy, search_vs_faiss

    info = common.machine()
    print(f"machine: {info}\n")
    search = search_vs_faiss.run(
        num_queries=100 if args.quick else 1000, num_db=1_000_000, k=100, bits=64,
        repeats=3, seed=0)
    print()
    mean_ap = map_vs_numpy.run(
        num_queries=210 if args.quick else 2100, num_db=190_000, bits=64, classes=21,
        baseline_queries=21 if args.quick else 210, repeats=3, seed=0)
    print("\nsummary")
    print(f"  search: faiss.IndexBinaryFlat / HammingIndex = {search['speedup_vs_faiss']:.2f}x "
          f"(goal >= 1x)")
    print(f"  MAP@all: numpy loop / fjsph_jax.evaluation.metrics = {mean_ap['speedup']:.1f}x (goal >= 20x); "
          f"ours {mean_ap['ours_mesh']['wall_s']:.2f} s (goal < 2 s)")
    print(f"  load average (1 min) at the end: {common.machine().get('load_average_1min')}")
    results = {"machine": info, "search_vs_faiss": search, "map_vs_numpy": mean_ap}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
