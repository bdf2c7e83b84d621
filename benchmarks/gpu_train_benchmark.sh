#!/usr/bin/env bash
# FJSPH training throughput on one NVIDIA GPU (H100 / H200): ours (JAX) vs PyTorch at the
# real sizes, in one command that finishes inside 10 minutes, compilation included.
#
#   bash benchmarks/gpu_train_benchmark.sh [OUT_DIR]       # from the repository root
#
# Rows (benchmarks/train_suite.py, one process each, in this order so that the deadline
# cuts the least important ones): for ViT-B/16 (configs/mirflickr.py's tower) then
# ViT-B/32, each with the 12-layer CLIP text tower at configs/mirflickr.py's batch 128,
# 32 bits, bf16 compute with float32 weights: ours at mask 0, torch eager (AMP bf16),
# torch.compile (AMP bf16), ours at FLIP masks 0.5 and 0.75; then ours with cuDNN flash
# attention (attention=cudnn) for both; then the compile time of the text tower at 12 /
# 24 layers with and without scan_layers. No row starts after DEADLINE_S (default 420 s);
# a row is killed 60 s after the deadline at the latest.
#
# Writes OUT_DIR/train_gpu.json (the schema of launch/benchmark.py --suite=train, rewritten
# after every row, so a cut-short run keeps what it measured), train_gpu.log and
# parity.log (cuDNN vs XLA attention on the GPU, bf16).
#
# Rehearsal on a CPU machine (before device time is spent): REHEARSE_ON_CPU=1 runs the same
# steps with the smallest towers (micro), attention=dot_product_attention for the variant
# row and compile-time depths 1 and 2, bf16 compute as on the GPU, and skips the GPU check;
# benchmarks/rehearsal/sitecustomize.py makes the packages the device lacks (grain,
# tensorflow, tensorflow_datasets, faiss; ml_collections too with
# REHEARSE_NO_ML_COLLECTIONS=1, so the wheel path below runs) absent, as they are there:
#
#   REHEARSE_ON_CPU=1 REHEARSE_NO_ML_COLLECTIONS=1 PYTHON=python \
#     bash benchmarks/gpu_train_benchmark.sh /tmp/rehearsal
#
# Needs jax (CUDA), flax, optax, torch (CUDA), transformers, absl-py, ml_collections.
# A machine without ml_collections (a pure-Python wheel): put the wheel in .whl/
# (python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0)
# and it is installed from there into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu-train}}
DEADLINE_S=${DEADLINE_S:-420}
PY=${PYTHON:-python3}
REHEARSE=${REHEARSE_ON_CPU:-0}
SIZES=vit_b16,vit_b32 VARIANT=attention=cudnn LAYERS=12,24
if [ "$REHEARSE" = 1 ]; then
  SIZES=micro VARIANT=attention=dot_product_attention LAYERS=1,2
  echo "REHEARSE_ON_CPU=1: micro towers, no GPU needed (the rows are not measurements)"
fi
export REHEARSE
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [ "$REHEARSE" = 1 ]; then export PYTHONPATH="$(pwd)/benchmarks/rehearsal:$PYTHONPATH"; fi

if ! $PY -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY - <<'EOF' || exit 3
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "torch", "transformers", "absl", "ml_collections")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing} (see the header of this script)")
import flax, jax, torch, transformers
print("jax", jax.__version__, jax.devices(), "| flax", flax.__version__, "| torch", torch.__version__,
      torch.cuda.is_available() and torch.cuda.get_device_name(), "| transformers", transformers.__version__)
import os
if os.environ.get("REHEARSE") != "1" and (jax.default_backend() != "gpu" or not torch.cuda.is_available()):
    sys.exit("this script measures a GPU: jax or torch sees none")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

# cuDNN flash attention against the XLA path (bf16, the CLIP text tower: padding + causal
# mask): seconds; failures are reported, the benchmark runs regardless.
$PY - <<'EOF' 2>&1 | tee "$OUT_DIR/parity.log"
import dataclasses
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from fjsph_jax.models import registry
from fjsph_jax.models.text import TextTransformer
text = registry.text_config("text_base")
ids = np.random.RandomState(0).randint(1, 49000, (4, 77))
mask = (np.arange(77)[None] < np.array([[77], [20], [5], [50]])).astype(np.int32)
ids = jnp.asarray(ids * mask); mask = jnp.asarray(mask)
for name, make, args in (("text_base", lambda a: TextTransformer(dataclasses.replace(text, attention=a),
                                                                  rngs=nnx.Rngs(0), dtype=jnp.bfloat16), (ids, mask)),):
    outs = {}
    for attention in ("xla", "cudnn"):
        try:
            graphdef, state = nnx.split(make(attention))
            apply = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
            outs[attention] = np.asarray(apply(state, *args), np.float32)
        except Exception as error:  # noqa: BLE001
            print(f"{name} attention={attention}: FAILED {type(error).__name__}: {str(error)[:300]}")
    for attention, out in outs.items():
        if attention != "xla" and "xla" in outs:
            scale = np.abs(outs["xla"]).max()
            print(f"{name} attention={attention}: max |diff| vs xla {np.abs(out - outs['xla']).max():.4f} "
                  f"(output scale {scale:.2f})")
EOF

$PY launch/benchmark.py --suite=train --train_sizes="$SIZES" --masks=0,0.5,0.75 --dtype=bfloat16 \
  --impls=jax,torch_eager,torch_compile --steps=10 --warmup=3 --jax_variant="$VARIANT" \
  --compile_layers="$LAYERS" --deadline_s="$DEADLINE_S" --row_timeout_s=300 \
  --json="$OUT_DIR/train_gpu.json" 2>&1 | tee "$OUT_DIR/train_gpu.log"
