"""Top-k Hamming search: fjsph_jax.evaluation.index.HammingIndex vs faiss.IndexBinaryFlat.

Default workload (issue 5): 1,000 queries, top-100, over 1,000,000 random 64-bit codes.
Both get the same packed codes; both use every core (faiss: OpenMP threads; ours: one JAX
CPU device per core with the database rows split over them). Results are asserted equal:
identical distances, and for every distance value the same set of ids, except at the last
distance of a row, where the cut-off may keep different members of a tied group (faiss does
not break ties by id; ours does, lowest id first).

    python benchmarks/search_vs_faiss.py [--queries 1000] [--db 1000000] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (must configure JAX before fjsph_jax imports it)


def compare_with_faiss(distances, ids, faiss_distances, faiss_ids) -> dict:
    """Asserts equal results up to the order of ties; describes faiss's tie order."""
    import numpy as np

    if not np.array_equal(distances, faiss_distances):
        raise AssertionError("distances differ from faiss.IndexBinaryFlat")
    rows_unsorted_ties = rows_other_cutoff = 0
    for row in range(len(distances)):
        values = np.unique(distances[row])
        for value in values[:-1]:
            mask = distances[row] == value
            if set(ids[row][mask]) != set(faiss_ids[row][mask]):
                raise AssertionError(f"row {row}: different ids at distance {value}")
        if not np.array_equal(ids[row], faiss_ids[row]):
            rows_unsorted_ties += any(
                np.any(np.diff(faiss_ids[row][distances[row] == v]) < 0) for v in values)
            last = distances[row] == values[-1]
            rows_other_cutoff += set(ids[row][last]) != set(faiss_ids[row][last])
    return {"rows": len(distances),
            "rows_identical_to_faiss": int(sum(np.array_equal(a, b) for a, b in zip(ids, faiss_ids, strict=True))),
            "rows_where_faiss_ties_are_not_in_id_order": int(rows_unsorted_ties),
            "rows_where_faiss_keeps_other_tied_items_at_the_cutoff": int(rows_other_cutoff)}


def run(num_queries: int, num_db: int, k: int, bits: int, repeats: int, seed: int) -> dict:
    import faiss
    import numpy as np

    from fjsph_jax import parallel
    from fjsph_jax.evaluation.index import HammingIndex

    rng = np.random.default_rng(seed)
    db = rng.integers(0, 256, (num_db, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (num_queries, bits // 8), dtype=np.uint8)

    flat = faiss.IndexBinaryFlat(bits)
    flat.add(db)
    faiss_wall, faiss_cpu, (faiss_d, faiss_i) = common.timed(
        lambda: flat.search(queries, k), repeats=repeats)

    mesh = parallel.make_mesh()
    index = HammingIndex.from_codes(db, bits=bits, mesh=mesh)
    compile_wall, _, _ = common.timed(lambda: index.search(queries, k), repeats=1)
    ours_wall, ours_cpu, (ours_d, ours_i) = common.timed(
        lambda: index.search(queries, k), repeats=repeats)
    single = HammingIndex.from_codes(db, bits=bits)
    common.timed(lambda: single.search(queries, k), repeats=1)
    single_wall, single_cpu, (single_d, single_i) = common.timed(
        lambda: single.search(queries, k), repeats=repeats)
    assert np.array_equal(single_d, ours_d) and np.array_equal(single_i, ours_i)

    agreement = compare_with_faiss(ours_d, ours_i, faiss_d, faiss_i)
    result = {
        "workload": {"queries": num_queries, "db": num_db, "k": k, "bits": bits},
        "faiss_IndexBinaryFlat": {"wall_s": faiss_wall, "cpu_s": faiss_cpu,
                                  "threads": faiss.omp_get_max_threads()},
        "ours_mesh": {"wall_s": ours_wall, "cpu_s": ours_cpu, "devices": len(mesh.devices.flat),
                      "first_call_s": compile_wall},
        "ours_one_device": {"wall_s": single_wall, "cpu_s": single_cpu},
        "speedup_vs_faiss": faiss_wall / ours_wall,
        "speedup_vs_faiss_one_device": faiss_wall / single_wall,
        "agreement": agreement,
    }
    print(f"Top-{k} Hamming search, {num_queries} queries x {num_db} codes x {bits} bits")
    print(common.row(f"faiss.IndexBinaryFlat ({faiss.omp_get_max_threads()} threads)",
                     faiss_wall, faiss_cpu))
    print(common.row(f"HammingIndex ({len(mesh.devices.flat)} CPU devices)", ours_wall, ours_cpu))
    print(common.row("HammingIndex (1 CPU device)", single_wall, single_cpu))
    print(f"  ratio faiss / ours: {result['speedup_vs_faiss']:.2f}x "
          f"(one device: {result['speedup_vs_faiss_one_device']:.2f}x); first call "
          f"(compile) {compile_wall:.2f} s")
    print(f"  results equal up to tie order: {agreement}")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--db", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=None, help="JAX CPU devices (default: cores)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    common.setup_cpu_devices(args.devices)
    result = run(args.queries, args.db, args.k, args.bits, args.repeats, args.seed)
    result["machine"] = common.machine()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
