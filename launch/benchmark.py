"""Benchmarks from one command: `python launch/benchmark.py --suite=methods`.

Suites:
  methods   every method on the embedded demo at --bits (default 16,32,64), both
            directions: MAP@all, MAP@50 (convention named), wall time, chance level;
            prints the README table and writes methods.json / methods.md into --out.
  train     FJSPH's training step in our JAX code next to a PyTorch implementation
            (transformers.CLIPModel towers + the same heads and losses, eager and
            torch.compile) on the same device: examples/s, step time, peak memory, MFU,
            the ratios ours / PyTorch; ours with FLIP masking at --masks. Default sizes
            ViT-B/32 and ViT-B/16 + text_base at configs/mirflickr.py's batch;
            --quick: the demo's tiny towers on CPU in minutes. --json=FILE writes
            {"device", "rows": [{"impl", "model", "mask_ratio", "batch_size",
            "examples_per_s", "step_ms", "peak_memory_mb", "mfu", ...}], "ratios", ...}.
            See benchmarks/train_suite.py.

`--quick` shrinks every run to seconds (for CI); `--split=validation` evaluates on
validation queries carved from the training rows (use it for tuning).
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402

from fjsph_jax import cli  # noqa: E402

_SUITE = flags.DEFINE_enum("suite", "methods", ["methods", "train"], "Which benchmark suite to run.")
_BITS = flags.DEFINE_list("bits", ["16", "32", "64"], "Code lengths.")
_METHODS = flags.DEFINE_list("methods", None, "Rows to run (default: all available), e.g. "
                             "jspsh,fjsph-frozen,fjsph,jdsh.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default runs/benchmark-<suite>).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation"], "Evaluation queries.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes: seconds per run (CI smoke test).")
_CONVENTION = flags.DEFINE_enum("map_convention", "top_k", ["top_k", "dcmh"],
                                "MAP@K convention of the printed table (the JSON has both).")
_RERUN = flags.DEFINE_bool("rerun", False, "Rerun rows whose results are already in --out.")
# --suite=train
_JSON = flags.DEFINE_string("json", None, "train: write the results as JSON to this file.")
_TRAIN_SIZES = flags.DEFINE_list("train_sizes", None, "train: model sizes (default vit_b32,vit_b16; "
                                 "--quick: tiny); any of micro, tiny, vit_b32, vit_b16.")
_IMPLS = flags.DEFINE_list("impls", ["jax", "torch_eager", "torch_compile"], "train: implementations.")
_MASKS = flags.DEFINE_list("masks", ["0", "0.5", "0.75"], "train: FLIP mask ratios of ours.")
_STEPS = flags.DEFINE_integer("steps", None, "train: timed steps per row (default 20; --quick 5).")
_WARMUP = flags.DEFINE_integer("warmup", None, "train: untimed steps first (default 3; --quick 2).")
_BATCH = flags.DEFINE_integer("batch_size", None, "train: global batch (default: the config's).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "train: compute dtype (default: float32 on CPU, the config's elsewhere).")
_VARIANTS = flags.DEFINE_multi_string("jax_variant", [], "train: extra rows of ours at mask 0 with "
                                      "model options, e.g. attention=cudnn or scan_layers=True,remat=dots.")
_COMPILE_LAYERS = flags.DEFINE_list("compile_layers", None, "train: depths of the compile-time "
                                    "measurement, with and without scan_layers (default 12,24; --quick "
                                    "2,4); empty to skip.")
_DEADLINE = flags.DEFINE_float("deadline_s", None, "train: start no row after this many seconds.")
_ROW_TIMEOUT = flags.DEFINE_float("row_timeout_s", 900.0, "train: limit per row (its own process).")


def _parse_variant(text: str) -> dict:
    """'attention=cudnn,scan_layers=True' -> {'attention': 'cudnn', 'scan_layers': True}."""
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = {"True": True, "False": False}.get(value.strip(), value.strip())
    return options


def _train_suite() -> None:
    from benchmarks import train_suite

    train_suite.run(
        quick=_QUICK.value, sizes=_TRAIN_SIZES.value, impls=tuple(_IMPLS.value),
        masks=tuple(float(m) for m in _MASKS.value), steps=_STEPS.value, warmup=_WARMUP.value,
        batch_size=_BATCH.value, dtype=_DTYPE.value,
        jax_variants=tuple(_parse_variant(v) for v in _VARIANTS.value),
        compile_layers=(None if _COMPILE_LAYERS.value is None
                        else tuple(int(n) for n in _COMPILE_LAYERS.value)),
        json_path=_JSON.value,
        row_timeout_s=_ROW_TIMEOUT.value, deadline_s=_DEADLINE.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _SUITE.value == "train":
        try:
            _train_suite()
        except ValueError as error:
            if not cli.is_user_error(error):
                raise
            cli.fail(error)
        return
    try:
        bits = tuple(int(b) for b in _BITS.value)
    except ValueError:
        print(f"error: --bits={','.join(_BITS.value)} must be integers such as 16,32,64",
              file=sys.stderr)
        sys.exit(2)
    out = _OUT.value or os.path.join(REPO_ROOT, "runs", f"benchmark-{_SUITE.value}")
    from benchmarks import methods_table

    try:
        methods_table.run(bits_list=bits, methods=_METHODS.value, out=out, split=_SPLIT.value,
                          quick=_QUICK.value, convention=_CONVENTION.value, rerun=_RERUN.value)
    except ValueError as error:
        if not cli.is_user_error(error):
            raise
        cli.fail(error)


if __name__ == "__main__":
    app.run(main)
