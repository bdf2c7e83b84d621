"""Faithfulness: the PyTorch pipeline and ours, trained the same way, reach the same MAP.

    python benchmarks/faithfulness.py --dataset=demo --seeds=0,1,2 [--json=FILE]
    python benchmarks/faithfulness.py --dataset=mirflickr_mini --seeds=0,1,2,3,4 \\
        [--manual_dir=../shared/data/mirflickr25k-mini]

For each seed, both sides start from the same weights and train on the same batches with
the same hyper-parameters, then both are evaluated by the same code (MAP@all i2t / t2i on
the dataset's query / database split):

* ours: ``FJSPHMethod`` exactly as ``launch/train.py`` runs it (``init_state``,
  ``before_step`` = the discrete code update every ``update_every`` steps,
  ``train_step`` = the jitted step, ``encode``), without the loop's checkpoints and logs;
* PyTorch: ``benchmarks/torch_baseline.py`` (transformers.CLIPModel towers + the same
  heads and losses in torch, ``torch.optim.AdamW``).

What is shared, and how:

* initial weights: our initial parameters (``state.params``) are copied into the torch
  model (``torch_baseline.load_fjsph_params``: the towers through the inverse of the
  transformers importer's key map, heads and interaction block by name); the initial code
  bank (B, F, G) too;
* batches: ``EpochBatcher(N, B, seed)`` positions, rows from the same in-memory loader;
* optimiser: AdamW (betas 0.9 / 0.999, eps 1e-8), weight decay on ndim >= 2 parameters,
  encoder / head learning rates, global-norm clipping, and the learning rate of update t
  read from the same optax warm-up + cosine schedule as ``build.build_optimizer``;
* the discrete code update of the bank and its statistics: the same JAX function
  (``step.code_update_and_statistics``) run on each side's own F, G, B;
* the similarity S (k-means over labels) and the evaluation code.

What differs from the full FJSPH recipe (``configs/default.py`` / ``mirflickr.py``):
no FLIP masking (``model.mask_ratio = 0``: the baseline never masks), float32 compute on
CPU on both sides, and smaller datasets / fewer epochs (the flags below; the demo uses
4,000 synthetic items instead of 22,000). Everything else (towers, heads, interaction
block, every loss term and weight, the code bank and its schedule) is the recipe's.

The two sides are not bit-identical (different kernels, summation orders); the script
reports, per seed, the loss of both sides over the first steps and the largest parameter
difference after the first update with a non-zero learning rate, then MAP of both and the
paired difference, and mean +- standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_suite._row_env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
if os.path.join(REPO_ROOT, "configs") not in sys.path:
    sys.path.insert(0, os.path.join(REPO_ROOT, "configs"))

DEFAULT_MIRFLICKR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "mirflickr25k-mini")

DATASETS = {
    # configs/default.py (the demo) on 4,000 scenes.
    "demo": dict(config="default.py", overrides={
        "data.num_items": 4000, "data.num_query": 500, "data.num_train": 3000, "train.num_epochs": 4,
        "train.warmup_steps": 20, "eval.batch_size": 500}),
    # The README's mini-MIRFlickr smoke settings (730 real pairs, small split: 73 / 657 / 438).
    "mirflickr_mini": dict(config="mirflickr.py", overrides={
        "data.split_protocol": "small", "data.loader": "memory", "model.vision": "vit_tiny",
        "model.text": "text_tiny", "data.image_size": 32, "data.context_length": 24,
        "model.feature_dim": 64, "model.hash_hidden_dim": 256, "loss.cluster_ks": (8, 16),
        "train.num_epochs": 20, "train.global_batch_size": 32, "train.warmup_steps": 20,
        "eval.batch_size": 256, "eval.top_k": 50}),
}


def make_config(dataset: str, seed: int, *, manual_dir: str | None = None, epochs: int | None = None):
    import importlib.util

    from fjsph_jax.configuration import apply_overrides

    entry = DATASETS[dataset]
    spec = importlib.util.spec_from_file_location(f"faithful_{dataset}",
                                                  os.path.join(REPO_ROOT, "configs", entry["config"]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = {**entry["overrides"], "seed": seed, "model.mask_ratio": 0.0, "model.dtype": "float32",
                "init.from_scratch": True}
    if dataset == "mirflickr_mini":
        settings["data.manual_dir"] = manual_dir or DEFAULT_MIRFLICKR
    if epochs:
        settings["train.num_epochs"] = epochs
    return apply_overrides(module.get_config(), settings)


def _schedule(config, peak_lr: float, total_steps: int):
    """The learning-rate schedule of ``build._adamw`` (warm-up then cosine to 1%)."""
    import optax

    warmup = min(config.train.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak_lr * 0.01)


def _torch_codes(torch_model, settings, load_rows, rows, batch_size: int):
    import numpy as np

    from benchmarks import torch_baseline as tb

    image, text = [], []
    for start in range(0, len(rows), batch_size):
        batch = tb.to_torch_batch(load_rows(rows[start:start + batch_size]), "cpu")
        u, v = tb.encode(torch_model, batch, settings)
        image.append(u.numpy())
        text.append(v.numpy())
    return {"image": np.concatenate(image), "text": np.concatenate(text)}


def _max_param_difference(torch_model, ours_model) -> float:
    from benchmarks import torch_baseline as tb

    want = tb.torch_state_from_fjsph(ours_model)
    got = torch_model.state_dict()
    return max(float((got[k] - v).abs().max()) for k, v in want.items())


def run_seed(dataset: str, seed: int, *, manual_dir=None, epochs=None, log=print) -> dict:
    """Trains both sides from one seed; returns MAPs, losses and divergence."""
    import jax
    import numpy as np
    import torch
    from flax import nnx

    from benchmarks import torch_baseline as tb
    from fjsph_jax import parallel
    from fjsph_jax.data.batches import EpochBatcher
    from fjsph_jax.evaluation import protocol
    from fjsph_jax.inputs import prepare_training_data
    from fjsph_jax.methods.fjsph.method import FJSPHMethod
    from fjsph_jax.methods.fjsph.step import code_update_and_statistics

    config = make_config(dataset, seed, manual_dir=manual_dir, epochs=epochs)
    mesh = parallel.make_mesh(jax.devices()[:1])
    workdir = tempfile.mkdtemp(prefix=f"faithful-{dataset}-{seed}-")
    data = prepare_training_data(config, workdir, mesh, input_kind="pixels")
    method = FJSPHMethod(config, data, mesh)
    state = method.init_state()
    ours = nnx.merge(method.graphdef, state.params)

    torch.manual_seed(seed)
    torch_model = tb.TorchFJSPH(ours.config)
    tb.load_fjsph_params(torch_model, ours)
    assert _max_param_difference(torch_model, ours) == 0.0
    total = method.total_steps
    trainer = tb.TorchTrainer(
        torch_model, method.settings, encoder_lr=config.train.encoder_learning_rate,
        head_lr=config.train.learning_rate, weight_decay=config.train.weight_decay,
        grad_clip_norm=config.train.grad_clip_norm,
        schedules={"encoder": _schedule(config, config.train.encoder_learning_rate, total),
                   "head": _schedule(config, config.train.learning_rate, total)})
    tbank = tb.TorchBank.from_jax(state.bank, "cpu")
    tsim = tb.TorchSimilarity.from_jax(method.sim, "cpu")
    tstats = tb.TorchBankStatistics.from_jax(state.bank_stats, "cpu")
    codes = config.codes
    update = jax.jit(lambda bank, sim: code_update_and_statistics(
        bank, sim, similarity_weight=codes.similarity_weight, quantization_weight=codes.quantization_weight,
        num_sweeps=codes.num_sweeps, floor=config.loss.similarity_floor))

    batcher = EpochBatcher(len(data.splits.train), config.train.global_batch_size, config.seed)
    losses, divergence = [], {}
    times = {"jax": 0.0, "torch": 0.0}
    first_lr_step = 1  # update 0 has learning rate 0 (warm-up from 0)
    for step in range(total):
        if step > 0 and step % method.update_every == 0:
            new_bank, new_stats = update(tbank.to_jax(), method.sim)
            tbank.codes = torch.as_tensor(np.array(new_bank.codes))
            tstats = tb.TorchBankStatistics.from_jax(new_stats, "cpu")
        state = method.before_step(state, step)
        positions = batcher.indices(step)
        host = data.load_rows(data.splits.train[positions])
        host["index"] = positions.astype(np.int32)
        start = time.perf_counter()
        state, metrics = method.train_step(state, parallel.global_batch(host, mesh), step)
        jax_loss = float(jax.device_get(metrics["loss"]))
        times["jax"] += time.perf_counter() - start
        start = time.perf_counter()
        torch_metrics = trainer.step(tb.to_torch_batch(host, "cpu"), tbank, tsim, tstats,
                                     float(step >= method.update_every))
        times["torch"] += time.perf_counter() - start
        losses.append((step, jax_loss, float(torch_metrics["loss"])))
        if step in (first_lr_step, 10, total - 1):
            divergence[step] = _max_param_difference(torch_model, nnx.merge(method.graphdef, state.params))
        if step % max(1, total // 8) == 0 or step == total - 1:
            log(f"  [{dataset} seed {seed}] step {step + 1}/{total}: loss ours {jax_loss:.5f} torch "
                f"{losses[-1][2]:.5f}")

    splits = data.splits
    q_labels, db_labels = data.labels[splits.query], data.labels[splits.database]
    convention = protocol.map_convention(config.eval, method.map_convention)
    results = {}
    for side in ("jax", "torch"):
        if side == "jax":
            query = method.encode(state, splits.query, role="query")
            database = method.encode(state, splits.database, role="database")
        else:
            query = _torch_codes(torch_model, method.settings, data.load_rows, splits.query, config.eval.batch_size)
            database = _torch_codes(torch_model, method.settings, data.load_rows, splits.database,
                                    config.eval.batch_size)
        evaluated = protocol.evaluate_codes(query, database, q_labels, db_labels, config.eval, code_format="pm1",
                                            convention=convention)
        results[side] = {d: evaluated[d]["map_all"] for d in ("i2t", "t2i")}
    chance = protocol.random_codes_baseline(len(splits.query), len(splits.database), config.bits, q_labels,
                                            db_labels, config.eval, seed=seed, code_format="pm1",
                                            code_dim=config.bits, convention=convention)
    return {
        "dataset": dataset, "seed": seed, "steps": total, "update_every": method.update_every,
        "split_sizes": splits.sizes(), "map_all": results,
        "chance_map_all": {d: chance[d]["map_all"] for d in ("i2t", "t2i")},
        "losses_first_steps": losses[:5], "losses_last": losses[-1],
        "max_abs_param_difference": {str(k): v for k, v in divergence.items()},
        "train_seconds": times,
    }


def summarize(runs: list[dict]) -> dict:
    import numpy as np

    out = {}
    for direction in ("i2t", "t2i"):
        jax_maps = np.array([r["map_all"]["jax"][direction] for r in runs])
        torch_maps = np.array([r["map_all"]["torch"][direction] for r in runs])
        diff = torch_maps - jax_maps
        out[direction] = {
            "jax_mean": float(jax_maps.mean()), "jax_std": float(jax_maps.std(ddof=1)) if len(runs) > 1 else 0.0,
            "torch_mean": float(torch_maps.mean()),
            "torch_std": float(torch_maps.std(ddof=1)) if len(runs) > 1 else 0.0,
            "diff_mean": float(diff.mean()), "diff_std": float(diff.std(ddof=1)) if len(runs) > 1 else 0.0,
            "max_abs_diff": float(np.abs(diff).max()),
        }
    return out


def markdown(dataset: str, runs: list[dict], summary: dict) -> str:
    lines = [f"| {dataset} seed | steps | ours i2t | torch i2t | ours t2i | torch t2i | chance | "
             "max param diff (first lr step / last) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        m, div = r["map_all"], r["max_abs_param_difference"]
        keys = sorted(div, key=int)
        lines.append(f"| {r['seed']} | {r['steps']} | {m['jax']['i2t']:.4f} | {m['torch']['i2t']:.4f} | "
                     f"{m['jax']['t2i']:.4f} | {m['torch']['t2i']:.4f} | {r['chance_map_all']['i2t']:.3f} | "
                     f"{div[keys[0]]:.1e} / {div[keys[-1]]:.1e} |")
    for d in ("i2t", "t2i"):
        s = summary[d]
        lines.append(f"| **{d} mean +- sd** | | ours {s['jax_mean']:.4f} +- {s['jax_std']:.4f} | "
                     f"torch {s['torch_mean']:.4f} +- {s['torch_std']:.4f} | torch - ours "
                     f"{s['diff_mean']:+.4f} +- {s['diff_std']:.4f} | (max abs {s['max_abs_diff']:.4f}) | | |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="demo")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="override the dataset's epochs")
    parser.add_argument("--manual_dir", default=None, help=f"mirflickr_mini files (default {DEFAULT_MIRFLICKR})")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    load = os.getloadavg()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        print(f"[faithfulness] {args.dataset} seed {seed}", flush=True)
        runs.append(run_seed(args.dataset, seed, manual_dir=args.manual_dir, epochs=args.epochs,
                             log=lambda m: print(m, flush=True)))
        summary = summarize(runs)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"dataset": args.dataset, "runs": runs, "summary": summary, "load_average_start": load,
                           "wall_s": time.perf_counter() - start}, f, indent=2, default=str)
    table = markdown(args.dataset, runs, summary)
    print("\n" + table, flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s; load average {load} -> {os.getloadavg()}", flush=True)
    return {"runs": runs, "summary": summary, "markdown": table}


if __name__ == "__main__":
    main()
