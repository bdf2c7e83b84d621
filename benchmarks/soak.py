"""Soak test of the shared loop: thousands of tiny steps with periodic checkpoints and
evaluation; host memory (RSS) and step time must stay flat.

    python benchmarks/soak.py                      # 4,000 steps, ~5 minutes on 2 cores
    python benchmarks/soak.py --steps=5000 --checkpoint_every=250 --eval_every=500 \\
        --devices=2 --json=/tmp/soak.json

The run is configs/tiny.py (FJSPH, 64 training rows, batch 16, a code-bank update every 3
steps) on the hand-crafted demo features (a tiny model: projections + hash heads), through
``training.loop.train_and_evaluate`` exactly as launch/train.py runs it: metrics.jsonl
every ``--log_every`` steps (each record carries ``host_rss_mib`` and ``step_seconds``, the
wall time per step with evaluation excluded; the soak adds ``cpu_seconds_per_step``, the
process CPU time per step between records), an async orbax checkpoint every
``--checkpoint_every`` steps (2 kept), an evaluation every ``--eval_every`` steps.

Prints RSS and step time as the records arrive, then the drift: the first and the last
quarter of the records after a warm-up (the first 10% of steps: compilation, first saves),
RSS as their mean and step time as their median, and least-squares slopes per 1,000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def _slope_per_1000(xs, ys) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def drift(records: list[dict], warmup_fraction: float = 0.1) -> dict:
    """RSS (MiB) and step time (ms) at the start and the end of the run, after the warm-up.

    Start / end are the first and the last quarter of the records after the warm-up
    steps: RSS their mean, step time their median (robust to the load of a shared
    machine); the slopes are least-squares fits over every record after the warm-up.
    """
    train = [r for r in records if "host_rss_mib" in r]
    last_step = train[-1]["step"]
    steady = [r for r in train if r["step"] > warmup_fraction * last_step]
    window = max(1, len(steady) // 4)
    head, tail = steady[:window], steady[-window:]
    out = {"records": len(steady), "window_records": window,
           "from_step": steady[0]["step"], "to_step": steady[-1]["step"]}
    steady = [r for r in steady if "cpu_seconds_per_step" in r] or steady
    head, tail = steady[:window], steady[-window:]
    metrics = [("host_rss_mib", "rss_mib", 1.0, statistics.fmean),
               ("step_seconds", "step_ms", 1000.0, statistics.median)]
    if "cpu_seconds_per_step" in steady[0]:
        metrics.append(("cpu_seconds_per_step", "cpu_ms_per_step", 1000.0, statistics.median))
    for key, name, scale, centre in metrics:
        start = centre([r[key] * scale for r in head])
        end = centre([r[key] * scale for r in tail])
        out[f"{name}_start"] = round(start, 3)
        out[f"{name}_end"] = round(end, 3)
        out[f"{name}_change"] = round(end - start, 3)
        out[f"{name}_change_pct"] = round(100.0 * (end - start) / start, 2)
        out[f"{name}_slope_per_1000_steps"] = round(
            _slope_per_1000([r["step"] for r in steady], [r[key] * scale for r in steady]), 4)
    out["rss_mib_first_record"] = round(train[0]["host_rss_mib"], 1)
    out["rss_mib_max"] = round(max(r["host_rss_mib"] for r in train), 1)
    return out


class _Tail(threading.Thread):
    """Prints every ``every``-th training record of metrics.jsonl as it is written."""

    def __init__(self, path: str, every: int):
        super().__init__(daemon=True)
        self.path, self.every, self.stop = path, every, threading.Event()

    def run(self) -> None:
        seen, train_records = 0, 0
        while not self.stop.wait(1.0):
            if not os.path.exists(self.path):
                continue
            with open(self.path) as f:
                lines = f.read().splitlines()
            for line in lines[seen:]:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    break  # being written: read it next time
                seen += 1
                if "host_rss_mib" in r:
                    train_records += 1
                    if train_records % self.every == 0:
                        cpu = r.get("cpu_seconds_per_step", float("nan")) * 1000
                        print(f"  step {r['step']:>6}: rss {r['host_rss_mib']:8.1f} MiB, "
                              f"step {1000 * r['step_seconds']:7.2f} ms (cpu {cpu:6.2f} ms), "
                              f"loss {r['loss']:.4f}", flush=True)
                elif "eval_i2t_map_all" in r:
                    print(f"  step {r['step']:>6}: eval i2t MAP {r['eval_i2t_map_all']:.4f}, "
                          f"t2i MAP {r['eval_t2i_map_all']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--checkpoint_every", type=int, default=250)
    parser.add_argument("--eval_every", type=int, default=500)
    parser.add_argument("--devices", type=int, default=1, help="CPU devices of the mesh")
    parser.add_argument("--print_every", type=int, default=10, help="records between lines")
    parser.add_argument("--workdir", default="", help="default: a temporary directory")
    parser.add_argument("--json", default="", help="also write the summary here")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    from benchmarks.common import machine
    from fjsph_jax.configuration import apply_overrides
    from fjsph_jax.training import loop

    sys.path.insert(0, os.path.join(REPO_ROOT, "configs"))
    import tiny

    config = apply_overrides(tiny.get_config(), {
        "train.mode": "frozen_encoder",
        "data.features": "handcrafted",
        "train.max_steps": args.steps,
        "train.log_every_steps": args.log_every,
        "train.checkpoint_every_steps": args.checkpoint_every,
        "train.max_checkpoints_to_keep": 2,
        "eval.every_steps": args.eval_every,
    })
    # Process CPU time per step next to the wall time: on a shared machine the wall time
    # follows the load, the CPU time much less.
    from fjsph_jax.training import logs

    write, last = logs.MetricsLog.write, {}

    def write_with_cpu(self, record):
        if "step_seconds" in record:
            cpu, step = time.process_time(), record["step"]
            if last:
                record["cpu_seconds_per_step"] = (cpu - last["cpu"]) / (step - last["step"])
            last.update(cpu=cpu, step=step)
        return write(self, record)

    logs.MetricsLog.write = write_with_cpu
    workdir = args.workdir or tempfile.mkdtemp(prefix="fjsph-soak-")
    print(f"soak: {args.steps} steps in {workdir} on {args.devices} CPU device(s); "
          f"checkpoint every {args.checkpoint_every}, eval every {args.eval_every}", flush=True)
    tail = _Tail(os.path.join(workdir, "metrics.jsonl"), args.print_every)
    tail.start()
    started = time.perf_counter()
    results = loop.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - started
    tail.stop.set()
    tail.join()

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    summary = {
        "steps": args.steps,
        "wall_seconds": round(wall, 1),
        "checkpoints_written": args.steps // args.checkpoint_every,
        "evaluations": sum(1 for r in records if "eval_i2t_map_all" in r),
        "final_i2t_map_all": round(results["i2t"]["map_all"], 4),
        **drift(records),
        "machine": machine(),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
