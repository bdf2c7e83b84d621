"""`python launch/benchmark.py --suite=train` runs ours and the PyTorch baseline and writes
the JSON schema of docs/benchmarks.md (the quick suite's smallest configuration: micro
towers, one timed step per side, on CPU)."""

import json
import os
import subprocess
import sys

import jax
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"impl", "model", "mask_ratio", "batch_size", "examples_per_s", "step_ms", "peak_memory_mb", "mfu"}


def test_quick_train_suite_runs_both_sides_and_writes_the_schema(tmp_path):
    out = tmp_path / "train.json"
    command = [
        sys.executable, os.path.join(REPO, "launch", "benchmark.py"), "--suite=train", "--quick",
        "--train_sizes=micro", "--impls=jax,torch_eager", "--masks=0", "--steps=1", "--warmup=1",
        "--compile_layers=", f"--json={out}",
    ]
    # Every row is its own process: give them this session's XLA flags (conftest) and its
    # persistent compilation cache, so that a rerun compiles nothing.
    env = dict(os.environ,
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "speed-up" in done.stdout  # the printed table has the ratios
    summary = json.loads(out.read_text())
    assert summary["device"] == "cpu"
    rows = summary["rows"]
    assert [r["impl"] for r in rows] == ["jax", "torch_eager"]
    for row in rows:
        assert ROW_KEYS <= set(row), set(row)
        assert not row.get("error"), row.get("error")
        assert row["model"] == "micro" and row["mask_ratio"] == 0.0 and row["batch_size"] == 8
        assert row["examples_per_s"] > 0 and row["step_ms"] > 0
        assert row["mfu"] is None  # no CPU peak
        assert row["model_flops_per_step"] > 0
    assert rows[0]["xla_flops_per_step"] > 0
    (ratio,) = summary["ratios"]
    assert ratio["baseline"] == "torch_eager" and ratio["speedup"] > 0
