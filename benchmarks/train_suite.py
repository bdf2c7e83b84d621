"""Training throughput of FJSPH's step: ours (JAX) next to PyTorch, on one device.

    python launch/benchmark.py --suite=train [--quick] [--json=FILE]

Every row is one process (``python -m benchmarks.train_suite --row=JSON``), so that peak
memory is the row's own and nothing of one framework stays resident while the other
runs. A row builds the full FJSPH training step at one model size and batch and times it:

  jax            ours: ``fjsph_jax.methods.fjsph.step.make_train_step`` (the jitted,
                 donated step FJSPHMethod runs: towers with FLIP masking at
                 ``mask_ratio``, hash heads, interaction block, InfoNCE + in-batch
                 similarity + low-rank bank similarity + quantisation + balance + fused
                 terms, clipped AdamW with two learning rates, the bank's F/G update),
                 model from ``build.build_model``, state from ``method.create_train_state``
                 (built under jit, as FJSPHMethod does).
  torch_eager    ``benchmarks/torch_baseline.py``: transformers.CLIPModel towers of the
                 same sizes + the same heads and losses in torch, AdamW (fused on GPU).
                 AMP bf16 on GPU when the config computes in bf16, float32 on CPU.
  torch_compile  the same under ``torch.compile`` (default mode).

The baselines never mask (FLIP masking is ours). Both run with the code bank active (all
terms), on one random batch placed on the device once (input pipelines excluded; ours has
its own benchmark, docs/benchmarks.md), ``--warmup`` untimed steps (compilation included
there; reported separately as ``compile_s``), then ``--steps`` timed steps with one
device sync at the end: ``step_ms`` = wall / steps, ``examples_per_s`` = batch / step.

Peak memory: GPU: ``memory_stats()['peak_bytes_in_use']`` (JAX) and
``torch.cuda.max_memory_allocated()`` over the whole row process (weights, optimiser state,
activations); CPU: the process's peak RSS minus its RSS before the model was built
(``memory_source`` says which). CPU RSS includes the framework's allocator caches and
compiled code, so it is only indicative.

Model FLOPs (:func:`step_flops`), counted analytically for one step of B examples:

    per transformer stack with L layers, width D, MLP width M, T tokens per sequence:
        6 * P * T  +  12 * L * T^2 * D          P = L (4 D^2 + 2 D M)  matmul parameters
    (forward 2 P T + 4 L T^2 D: q/k/v/out and MLP matmuls, then QK^T and AV; backward
    twice the forward). Image tower: T = 1 + kept patches (FLIP masking shrinks T), plus
    the patch embedding 4 * (p^2 3 D) * N_patches (forward + weight gradient; no gradient
    to the pixels) and the projection 6 * D * d_out. Text tower: T = the context length
    (every position is computed, padding included) plus its projection; the token
    embedding is a gather (0 FLOPs). Hash heads 6 * (d H + H K) per example and head (3
    with the interaction block), interaction block as a stack with T = 2. Per batch:
    InfoNCE logits 6 B^2 d, in-batch similarity 6 B^2 K (and the fused head's), bank term
    12 B K^2.
    MFU = model FLOPs per step / step time / the device's dense bf16 peak
    (:data:`PEAK_FLOPS`); null on CPU (no agreed peak) and for float32 compute.

The count is cross-checked against XLA's own ``compiled.cost_analysis()['flops']`` of our
step (``xla_flops`` in the row; it also counts elementwise work and the optimiser).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any, NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

IMPLS = ("jax", "torch_eager", "torch_compile")
ROW_PREFIX = "TRAIN_SUITE_ROW "

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched against the device name.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)

# Model sizes. "base" keys are configs/*.py files; the rest are config overrides.
SIZES = {
    # Tests / CI: the smallest towers (1 block each).
    "micro": dict(base="default.py", vocab_size=128, num_train=64, num_classes=8, overrides={
        "model.vision": "vit_micro", "model.text": "text_micro", "model.feature_dim": 32,
        "model.hash_hidden_dim": 32, "bits": 16, "data.context_length": 12,
        "train.global_batch_size": 8, "loss.cluster_ks": (4, 8), "model.dtype": "float32"}),
    # The embedded demo's towers and batch (configs/default.py).
    "tiny": dict(base="default.py", vocab_size=512, num_train=2048, num_classes=24, overrides={}),
    # The benchmarks' real sizes: configs/mirflickr.py (ViT-B/16, text_base, batch 128, bf16).
    "vit_b32": dict(base="mirflickr.py", vocab_size=49408, num_train=10000, num_classes=24,
                    overrides={"model.vision": "vit_b32"}),
    "vit_b16": dict(base="mirflickr.py", vocab_size=49408, num_train=10000, num_classes=24,
                    overrides={"model.vision": "vit_b16"}),
}
# --quick: the demo's towers only (5 rows, each its own process with its own compilation,
# and the compile-time rows: 4.8-7.1 min wall, 2.9-3.6 min CPU on a shared 2-core CPU at
# load average 5-8; docs/benchmarks.md). "micro" is for the tests (--train_sizes=micro).
QUICK_SIZES = ("tiny",)
FULL_SIZES = ("vit_b32", "vit_b16")


# ------------------------------------------------------------------ configs and FLOPs


def load_config(size: str, *, batch_size: int | None = None, mask_ratio: float = 0.0,
                dtype: str | None = None, options: dict | None = None):
    """The config of a SIZES entry (its base file + overrides), with the row's settings."""
    import importlib.util

    spec_entry = SIZES[size]
    sys.path.insert(0, os.path.join(REPO_ROOT, "configs"))
    path = os.path.join(REPO_ROOT, "configs", spec_entry["base"])
    spec = importlib.util.spec_from_file_location(f"train_suite_{size}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    from fjsph_jax.configuration import apply_overrides

    settings = dict(spec_entry["overrides"])
    settings["model.mask_ratio"] = float(mask_ratio)
    settings["init.from_scratch"] = True
    settings["data.num_train"] = spec_entry["num_train"]
    if batch_size:
        settings["train.global_batch_size"] = int(batch_size)
    if dtype:
        settings["model.dtype"] = dtype
    for key, value in (options or {}).items():
        settings[f"model.{key}"] = value
    return apply_overrides(config, settings)


def tower_flops(width: int, layers: int, mlp_dim: int, tokens: int) -> float:
    """Forward + backward FLOPs of one sequence through a stack: 6 P T + 12 L T^2 D."""
    matmul_params = layers * (4 * width * width + 2 * width * mlp_dim)
    return 6.0 * matmul_params * tokens + 12.0 * layers * tokens**2 * width


def step_flops(model_config, *, batch: int, mask_ratio: float) -> dict:
    """Model FLOPs of one FJSPH training step (module docstring), by part."""
    from fjsph_jax.models.vit import num_kept_patches

    vision, text = model_config.vision, model_config.text
    d, k, hidden = model_config.feature_dim, model_config.bits, model_config.hash_hidden_dim
    patches = vision.num_patches
    kept = num_kept_patches(patches, mask_ratio) if mask_ratio > 0 else patches
    image = (4.0 * vision.patch_size**2 * 3 * vision.width * patches
             + tower_flops(vision.width, vision.layers, vision.mlp_dim, 1 + kept)
             + 6.0 * vision.width * (vision.output_dim or vision.width))
    txt = (tower_flops(text.width, text.layers, text.mlp_dim, text.context_length)
           + 6.0 * text.width * (text.output_dim or text.width))
    head_params = d * hidden + hidden * k if hidden else d * k
    interaction = model_config.interaction == "transformer"
    heads = 6.0 * head_params * (3 if interaction else 2)
    fusion = (tower_flops(d, model_config.interaction_layers, model_config.interaction_mlp_dim or 4 * d, 2)
              if interaction else 0.0)
    losses = 6.0 * batch**2 * d + 6.0 * batch**2 * k * (2 if interaction else 1) + 12.0 * batch * k**2
    parts = {"image_tower": batch * image, "text_tower": batch * txt,
             "heads_and_interaction": batch * (heads + fusion), "losses": losses}
    return {"total": sum(parts.values()), "parts": parts, "image_tokens": 1 + kept,
            "text_tokens": text.context_length}


def device_peak(name: str) -> float | None:
    for key, peak in PEAK_FLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def synthetic_batch(config, vocab_size: int, num_train: int, seed: int = 0) -> dict:
    """One host batch: uint8 images, right-padded token rows ending with the largest id
    (CLIP's end-of-text, so every text pool finds it), the first B training positions."""
    import numpy as np

    rng = np.random.RandomState(seed)
    batch = config.train.global_batch_size
    size, length = config.data.image_size, config.data.context_length
    lengths = rng.randint(min(5, length), length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.randint(1, vocab_size - 1, size=(batch, length)).astype(np.int32)
    ids[np.arange(batch), lengths - 1] = vocab_size - 1
    return {
        "images": rng.randint(0, 256, size=(batch, size, size, 3)).astype(np.uint8),
        "input_ids": (ids * mask).astype(np.int32),
        "attention_mask": mask,
        "index": np.arange(batch, dtype=np.int32) % num_train,
    }


def synthetic_labels(num_train: int, num_classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.RandomState(seed + 1)
    labels = (rng.rand(num_train, num_classes) < 2.0 / num_classes).astype(np.uint8)
    labels[np.arange(num_train), rng.randint(0, num_classes, num_train)] = 1
    return labels


def _dtype(spec: dict, cpu: bool) -> str | None:
    """The row's compute dtype: as asked, else float32 on CPU (both sides; bf16 matmuls
    are emulated there) and the config's (bf16 for the real sizes) on accelerators."""
    return spec.get("dtype") or ("float32" if cpu else None)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _similarity(config, labels):
    import jax

    from fjsph_jax import similarity

    return similarity.build_joint_similarity(
        labels, cluster_ks=tuple(config.loss.cluster_ks), eta=config.loss.eta,
        key=jax.random.PRNGKey(config.seed + 7), kmeans_iters=config.loss.kmeans_iters)


# ------------------------------------------------------------------ one row


class JaxStep(NamedTuple):
    """Ours, ready to lower: the jitted step and its arguments (:func:`jax_step`)."""

    step_fn: Any  # make_train_step(...): (state, batch, sim, active) -> (state, metrics)
    state: Any
    batch: dict
    sim: Any
    active: Any  # bank_active = 1: every loss term on
    config: Any
    model_config: Any


def jax_step(size: str, *, mask_ratio: float, dtype: str | None, batch_size: int | None = None,
             options: dict | None = None) -> JaxStep:
    """FJSPH's training step as ``FJSPHMethod`` builds it, at a :data:`SIZES` entry, on the
    first device: model shapes from ``build.build_model``, the state created under jit,
    one synthetic batch placed on the mesh."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fjsph_jax import parallel
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.methods.fjsph import method as method_lib
    from fjsph_jax.methods.fjsph.step import StepSettings, make_train_step

    entry = SIZES[size]
    config = load_config(size, batch_size=batch_size, mask_ratio=mask_ratio, dtype=dtype,
                         options=options)
    mesh = parallel.make_mesh(jax.devices()[:1])
    build_model = functools.partial(build.build_model, config, entry["vocab_size"], with_encoders=True,
                                    seed=config.seed)
    model = nnx.eval_shape(build_model)  # shapes only; the state is built under jit, as FJSPHMethod does
    graphdef, abstract_params = nnx.split(model)
    optimizer = build.build_optimizer(config, abstract_params, total_steps=1000)
    labels = synthetic_labels(entry["num_train"], entry["num_classes"])
    sim = method_lib.pad_similarity_for(_similarity(config, labels), mesh)
    state = method_lib.create_train_state(config, lambda: nnx.split(build_model())[1], (), optimizer,
                                          entry["num_train"], mesh, sim)
    step_fn = make_train_step(graphdef, optimizer, StepSettings.from_config(config, mesh=mesh),
                              method_lib.state_shardings(state, mesh), parallel.replicated(mesh))
    batch = parallel.global_batch(synthetic_batch(config, entry["vocab_size"], entry["num_train"]), mesh)
    return JaxStep(step_fn, state, batch, sim, jnp.float32(1.0), config, model.config)


def run_jax_row(spec: dict) -> dict:
    """Ours: the jitted FJSPH step (module docstring)."""
    import jax

    device = jax.devices()[0]
    base_rss = _rss_mb()
    start = time.perf_counter()
    step_fn, state, batch, sim, active, config, model_config = jax_step(
        spec["model"], mask_ratio=spec["mask_ratio"], dtype=_dtype(spec, device.platform == "cpu"),
        batch_size=spec.get("batch_size"), options=spec.get("options"))
    jax.block_until_ready(state)
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    compiled = step_fn.lower(state, batch, sim, active).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    xla_flops = float(cost.get("flops", float("nan"))) if cost else None
    start = time.perf_counter()
    for _ in range(spec["warmup"]):
        state, metrics = compiled(state, batch, sim, active)
    loss = float(jax.device_get(metrics["loss"]))
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        state, metrics = compiled(state, batch, sim, active)
    jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - start
    if not math.isfinite(float(jax.device_get(metrics["loss"]))):
        raise FloatingPointError(f"non-finite loss {metrics['loss']}")
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        peak, source = stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    else:
        peak, source = _peak_rss_mb() - base_rss, "host peak RSS delta"
    return _row(spec, config, model_config, wall=wall, device_name=device.device_kind, platform=device.platform,
                peak=peak, memory_source=source, compile_s=compile_s, warmup_s=warmup_s, build_s=build_s,
                xla_flops=xla_flops, loss=loss)


def run_torch_row(spec: dict) -> dict:
    """The PyTorch baseline (eager or torch.compile)."""
    import jax  # CPU only here (JAX_PLATFORMS=cpu): the similarity and bank statistics
    import numpy as np
    import torch

    from benchmarks import torch_baseline as tb
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.methods.fjsph import code_bank as bank_lib
    from fjsph_jax.methods.fjsph.step import StepSettings

    size = SIZES[spec["model"]]
    cuda = torch.cuda.is_available()
    config = load_config(spec["model"], batch_size=spec.get("batch_size"), mask_ratio=0.0,
                         dtype=_dtype(spec, not cuda))
    device = torch.device("cuda" if cuda else "cpu")
    amp = torch.bfloat16 if cuda and config.model.dtype == "bfloat16" else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base_rss = _rss_mb()
    start = time.perf_counter()
    model_config = build.model_config(config, size["vocab_size"], with_encoders=True)
    torch.manual_seed(config.seed)
    model = tb.TorchFJSPH(model_config).to(device)
    labels = synthetic_labels(size["num_train"], size["num_classes"])
    sim = _similarity(config, labels)
    bank = bank_lib.init_code_bank(size["num_train"], config.bits, jax.random.PRNGKey(config.seed))
    stats = tb.TorchBankStatistics.from_jax(bank_lib.bank_statistics(bank.codes, sim), device)
    tsim = tb.TorchSimilarity.from_jax(sim, device)
    tbank = tb.TorchBank.from_jax(bank, device)
    settings = StepSettings.from_config(config)
    trainer = tb.TorchTrainer(
        model, settings, encoder_lr=config.train.encoder_learning_rate, head_lr=config.train.learning_rate,
        weight_decay=config.train.weight_decay, grad_clip_norm=config.train.grad_clip_norm,
        compile=spec["impl"] == "torch_compile", autocast_dtype=amp)
    batch = tb.to_torch_batch(synthetic_batch(config, size["vocab_size"], size["num_train"]), device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = trainer.step(batch, tbank, tsim, stats, 1.0)  # compiles under torch.compile
    sync()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(max(spec["warmup"] - 1, 0)):
        metrics = trainer.step(batch, tbank, tsim, stats, 1.0)
    loss = float(metrics["loss"])
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        metrics = trainer.step(batch, tbank, tsim, stats, 1.0)
    sync()
    wall = time.perf_counter() - start
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"non-finite loss {metrics['loss']}")
    if cuda:
        peak, source = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        name, platform = torch.cuda.get_device_name(), "gpu"
    else:
        peak, source = _peak_rss_mb() - base_rss, "host peak RSS delta"
        name, platform = "cpu", "cpu"
    return _row(spec, config, model_config, wall=wall, device_name=name, platform=platform, peak=peak,
                memory_source=source, compile_s=compile_s, warmup_s=warmup_s, build_s=build_s, xla_flops=None,
                loss=loss, extra={"torch": torch.__version__, "amp": str(amp) if amp else None})


def _row(spec, config, model_config, *, wall, device_name, platform, peak, memory_source, compile_s, warmup_s,
         build_s, xla_flops, loss, extra=None) -> dict:
    batch = config.train.global_batch_size
    step_s = wall / spec["steps"]
    flops = step_flops(model_config, batch=batch, mask_ratio=spec["mask_ratio"])
    peak_flops = device_peak(device_name) if platform == "gpu" else None
    bf16 = config.model.dtype == "bfloat16"
    mfu = flops["total"] / step_s / peak_flops if (peak_flops and bf16) else None
    return {
        "impl": spec["impl"], "model": spec["model"], "mask_ratio": spec["mask_ratio"], "batch_size": batch,
        "examples_per_s": batch / step_s, "step_ms": 1e3 * step_s, "peak_memory_mb": peak, "mfu": mfu,
        "memory_source": memory_source, "device": device_name, "platform": platform,
        "dtype": config.model.dtype,
        "options": spec.get("options") or {}, "steps": spec["steps"], "warmup": spec["warmup"],
        "compile_s": compile_s, "warmup_s": warmup_s, "build_s": build_s,
        "model_flops_per_step": flops["total"], "model_flops_parts": flops["parts"],
        "image_tokens": flops["image_tokens"],
        "xla_flops_per_step": xla_flops,
        "analytic_over_xla_flops": (flops["total"] / xla_flops) if xla_flops else None,
        "peak_flops": peak_flops, "loss_after_warmup": loss, **(extra or {}),
    }


def compile_times(spec: dict) -> list[dict]:
    """Compile time of a text tower's value_and_grad at each depth, with and without scan."""
    import dataclasses as dc

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fjsph_jax.models import registry
    from fjsph_jax.models.text import TextTransformer

    base = registry.text_config(spec["text"], vocab_size=spec.get("vocab_size", 1000))
    length = base.context_length
    ids = jnp.asarray(np.random.RandomState(0).randint(1, base.vocab_size, (spec["batch"], length)), jnp.int32)
    mask = jnp.ones_like(ids)
    out = []
    for layers in spec["layers"]:
        for scan in (False, True):
            config = dc.replace(base, layers=layers, scan_layers=scan)
            model = TextTransformer(config, rngs=nnx.Rngs(0))
            graphdef, params = nnx.split(model)

            def loss(p):
                return jnp.mean(nnx.merge(graphdef, p)(ids, mask) ** 2)

            start = time.perf_counter()
            jax.jit(jax.value_and_grad(loss)).lower(params).compile()
            out.append({"tower": spec["text"], "layers": layers, "scan_layers": scan,
                        "compile_s": time.perf_counter() - start, "device": jax.devices()[0].device_kind})
    return out


def run_row(spec: dict) -> dict:
    if spec["impl"] == "compile_times":
        return {"compile_times": compile_times(spec)}
    if spec["impl"] == "jax":
        return run_jax_row(spec)
    if spec["impl"] in ("torch_eager", "torch_compile"):
        return run_torch_row(spec)
    raise ValueError(f"impl={spec['impl']!r}; allowed: {IMPLS}")


# ------------------------------------------------------------------ the suite


def _row_env(spec: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if spec["impl"].startswith("torch"):
        env["JAX_PLATFORMS"] = "cpu"  # JAX only computes the similarity there; the GPU is torch's
        # torch's OpenMP threads spin while they wait by default: on a shared, loaded CPU that
        # made its steps 10-100x slower here (a spinning thread holds a core the other one
        # needs). Passive waiting gives the baseline its best CPU numbers.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_in_subprocess(spec: dict, timeout_s: float) -> dict:
    """Runs one row in a fresh process; its result, or the row with an ``error``."""
    command = [sys.executable, "-m", "benchmarks.train_suite", "--row", json.dumps(spec)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=_row_env(spec), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**_stub(spec), "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(ROW_PREFIX):
            result = json.loads(line[len(ROW_PREFIX):])
            result["process_s"] = time.perf_counter() - start
            return result
    tail = (done.stderr or done.stdout)[-2000:]
    return {**_stub(spec), "error": f"exit {done.returncode}: {tail}"}


def _stub(spec: dict) -> dict:
    return {"impl": spec["impl"], "model": spec.get("model"), "mask_ratio": spec.get("mask_ratio"),
            "batch_size": spec.get("batch_size"), "examples_per_s": None, "step_ms": None,
            "peak_memory_mb": None, "mfu": None, "options": spec.get("options") or {}}


def plan(*, sizes, impls, masks, steps, warmup, batch_size=None, dtype=None, jax_variants=()) -> list[dict]:
    """Row specs in priority order (a deadline cuts the last ones): per size in the order
    given, ours at mask 0, the baselines, ours at the other masks; then the option
    variants of ours for every size."""
    rows, variants = [], []
    for size in sizes:
        common = dict(model=size, steps=steps, warmup=warmup, batch_size=batch_size, dtype=dtype)
        if "jax" in impls and 0.0 in masks:
            rows.append(dict(impl="jax", mask_ratio=0.0, **common))
        for impl in ("torch_eager", "torch_compile"):
            if impl in impls:
                rows.append(dict(impl=impl, mask_ratio=0.0, **common))
        if "jax" in impls:
            rows += [dict(impl="jax", mask_ratio=m, **common) for m in masks if m != 0.0]
            variants += [dict(impl="jax", mask_ratio=0.0, options=dict(v), **common) for v in jax_variants]
    return rows + variants


def ratios(rows: list[dict]) -> list[dict]:
    """Ours / baseline examples/s for every jax row against each torch row of its model."""
    out = []
    for ours in rows:
        if ours["impl"] != "jax" or not ours.get("examples_per_s"):
            continue
        for base in rows:
            if base["impl"].startswith("torch") and base["model"] == ours["model"] and base.get("examples_per_s"):
                out.append({"model": ours["model"], "mask_ratio": ours["mask_ratio"],
                            "options": ours.get("options") or {}, "baseline": base["impl"],
                            "speedup": ours["examples_per_s"] / base["examples_per_s"],
                            "memory_ratio": (ours["peak_memory_mb"] / base["peak_memory_mb"]
                                             if ours.get("peak_memory_mb") and base.get("peak_memory_mb") else None)})
    return out


def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def markdown(summary: dict) -> str:
    lines = ["| impl | model | options | mask | batch | examples/s | step ms | peak MB | MFU | compile s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        options = ",".join(f"{k}={v}" for k, v in (r.get("options") or {}).items()) or "-"
        lines.append(
            f"| {r['impl']} | {r['model']} | {options} | {r['mask_ratio']} | {_fmt(r.get('batch_size'), '{}')} | "
            f"{_fmt(r.get('examples_per_s'))} | {_fmt(r.get('step_ms'))} | {_fmt(r.get('peak_memory_mb'), '{:.0f}')} | "
            f"{_fmt(r.get('mfu'), '{:.1%}')} | {_fmt(r.get('compile_s'))} |"
            + (f" error: {r['error'][:80]!r}" if r.get("error") else ""))
    if summary["ratios"]:
        lines += ["", "| model | ours (mask, options) | vs | speed-up | memory ours/theirs |", "|---|---|---|---:|---:|"]
        for q in summary["ratios"]:
            options = ",".join(f"{k}={v}" for k, v in q["options"].items())
            lines.append(f"| {q['model']} | mask {q['mask_ratio']}{' ' + options if options else ''} | "
                         f"{q['baseline']} | {q['speedup']:.2f}x | {_fmt(q['memory_ratio'], '{:.2f}')} |")
    if summary.get("compile_times"):
        lines += ["", "| compile time: tower, layers | no scan (s) | scan_layers (s) |", "|---|---:|---:|"]
        by = {}
        for c in summary["compile_times"]:
            by.setdefault((c["tower"], c["layers"]), {})[c["scan_layers"]] = c["compile_s"]
        for (tower, layers), t in sorted(by.items()):
            lines.append(f"| {tower}, {layers} | {_fmt(t.get(False), '{:.2f}')} | {_fmt(t.get(True), '{:.2f}')} |")
    return "\n".join(lines)


def run(*, quick: bool, sizes=None, impls=IMPLS, masks=(0.0, 0.5, 0.75), steps=None, warmup=None,
        batch_size=None, dtype=None, jax_variants=(), compile_layers=None, json_path=None,
        row_timeout_s=900.0, deadline_s=None) -> dict:
    """Runs the suite (each row in its own process); prints the table; writes ``json_path``
    after every row (a cut-short run keeps what it measured)."""
    sizes = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    unknown = set(sizes) - set(SIZES)
    if unknown:
        raise ValueError(f"unknown sizes {sorted(unknown)}; allowed: {sorted(SIZES)}")
    bad = set(impls) - set(IMPLS)
    if bad:
        raise ValueError(f"unknown impls {sorted(bad)}; allowed: {list(IMPLS)}")
    steps = steps or (5 if quick else 20)
    warmup = warmup or (2 if quick else 3)
    specs = plan(sizes=sizes, impls=impls, masks=tuple(masks), steps=steps, warmup=warmup,
                 batch_size=batch_size, dtype=dtype, jax_variants=jax_variants)
    if compile_layers is None:  # 12 vs 24 blocks unscanned takes minutes on a CPU
        compile_layers = (2, 4) if quick else (12, 24)
    if compile_layers:
        specs.append(dict(impl="compile_times", text="text_micro" if quick else "text_base",
                          layers=list(compile_layers), batch=2, vocab_size=1000 if quick else 49408))
    start = time.perf_counter()
    summary = {"device": None, "machine": _machine(), "quick": quick, "rows": [], "ratios": [],
               "compile_times": [], "command": " ".join(sys.argv)}
    for spec in specs:
        elapsed = time.perf_counter() - start
        if deadline_s is not None and elapsed > deadline_s:
            if spec["impl"] != "compile_times":
                summary["rows"].append({**_stub(spec), "error": f"skipped: past the {deadline_s:.0f} s deadline"})
            continue
        timeout = row_timeout_s if deadline_s is None else max(30.0, min(row_timeout_s, deadline_s + 60 - elapsed))
        label = spec["impl"] + (f" {spec.get('model')} mask={spec.get('mask_ratio')} {spec.get('options') or ''}"
                                if spec["impl"] != "compile_times" else "")
        print(f"[train suite] {label} ...", flush=True)
        result = run_in_subprocess(spec, timeout)
        if spec["impl"] == "compile_times":
            summary["compile_times"] = result.get("compile_times", [])
            if result.get("error"):
                summary["compile_times_error"] = result["error"]
        else:
            summary["rows"].append(result)
            summary["device"] = summary["device"] or (result.get("device") if not result.get("error") else None)
            print(f"[train suite]   -> {_fmt(result.get('examples_per_s'))} examples/s, "
                  f"{_fmt(result.get('step_ms'))} ms/step" + (f"  ERROR {result['error'][-300:]}" if result.get("error") else ""),
                  flush=True)
        summary["ratios"] = ratios(summary["rows"])
        summary["wall_s"] = time.perf_counter() - start
        if json_path:
            _write(json_path, summary)
    summary["machine"]["load_average_end"] = os.getloadavg()
    summary["markdown"] = markdown(summary)
    print("\n" + summary["markdown"], flush=True)
    if json_path:
        _write(json_path, summary)
    return summary


def _write(path: str, summary: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _machine() -> dict:
    import platform

    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "load_average_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def _main() -> None:
    parser = argparse.ArgumentParser(description="One row of the train suite (internal).")
    parser.add_argument("--row", required=True, help="row spec as JSON")
    args = parser.parse_args()
    result = run_row(json.loads(args.row))
    print(ROW_PREFIX + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    _main()
