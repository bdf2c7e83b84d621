"""Which precision FJSPH's training step computes its matrix products in, read from its HLO.

    python -m benchmarks.hlo_dtype_audit --size=vit_b16 --mask=0 --dtype=bfloat16

A check that needs no accelerator: the step (``make_train_step``, as
``benchmarks/train_suite.py`` builds it) is lowered, not run, and every
``stablehlo.dot_general`` and ``stablehlo.convolution`` of the forward and backward pass is
grouped by its operand element types. FLOPs per op, from the shapes in the StableHLO text:

    dot_general   2 * prod(result shape) * prod(lhs contracting dims)
    convolution   2 * prod(result shape) * prod(rhs shape) / (rhs output-feature size
                  * feature_group_count)

With ``model.dtype = bfloat16`` the towers' products should all be bf16 and the float32
ones only the losses' small products (InfoNCE logits are computed from bf16 embeddings cast
to float32, the similarity terms on [B, K] codes): ``bf16_share`` is the bf16 fraction of
all matrix-product FLOPs. Lowering ViT-B/16 + text_base takes about 30 s on a CPU (the
state is built for real: about 2 GB of host memory).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

_OP = re.compile(r"stablehlo\.(dot_general|convolution)\b")
_TENSOR = re.compile(r"tensor<([^>]*)>")


def _shape_and_type(spec: str) -> tuple[tuple[int, ...], str]:
    *dims, element = spec.split("x")
    return tuple(int(d) for d in dims), element


def _signature(line: str):
    """(operand shapes and types, result shape and type) of one op's line."""
    operands, _, result = line.rpartition(" -> ")
    operand_types = [_shape_and_type(s) for s in _TENSOR.findall(operands.rpartition(" : ")[2])]
    result_types = [_shape_and_type(s) for s in _TENSOR.findall(result)]
    return operand_types, result_types[0]


def op_flops(line: str) -> tuple[str, tuple[str, ...], float]:
    """``(op, operand element types, FLOPs)`` of a dot_general or convolution line."""
    op = _OP.search(line).group(1)
    operands, (out_shape, _) = _signature(line)
    types = tuple(element for _, element in operands)
    if op == "dot_general":
        contracting = re.search(r"contracting_dims = \[([\d, ]*)\] x", line)
        lhs_dims = [int(d) for d in contracting.group(1).split(",") if d.strip()] if contracting else []
        lhs_shape = operands[0][0]
        return op, types, 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_dims)
    rhs_shape = operands[1][0]
    labels = re.search(r"\]x\[([^\]]*)\]->", line).group(1).split(",")
    out_features = rhs_shape[[label.strip() for label in labels].index("o")]
    groups = re.search(r"feature_group_count = (\d+)", line)
    groups = int(groups.group(1)) if groups else 1
    return op, types, 2.0 * math.prod(out_shape) * math.prod(rhs_shape) / (out_features * groups)


def audit(stablehlo_text: str) -> dict:
    """Matrix products of a StableHLO module grouped by ``op:operand types``.

    Returns ``{"groups": {key: {"count", "flops", "largest_operand"}}, "total_flops",
    "bf16_share"}`` (``bf16_share``: FLOPs of products whose operands are all bf16 / all).
    """
    groups = collections.defaultdict(lambda: {"count": 0, "flops": 0.0, "largest_operand": 0})
    for line in stablehlo_text.splitlines():
        if not _OP.search(line) or " -> " not in line:
            continue
        op, types, flops = op_flops(line)
        operands, _ = _signature(line)
        group = groups[f"{op}:{','.join(types)}"]
        group["count"] += 1
        group["flops"] += flops
        group["largest_operand"] = max(group["largest_operand"],
                                       max(math.prod(shape) for shape, _ in operands))
    total = sum(g["flops"] for g in groups.values())
    bf16 = sum(g["flops"] for key, g in groups.items() if set(key.split(":")[1].split(",")) == {"bf16"})
    return {"groups": dict(groups), "total_flops": total, "bf16_share": bf16 / total if total else None}


def lowered_step_text(size: str, *, mask_ratio: float = 0.0, dtype: str = "bfloat16") -> str:
    """StableHLO of the FJSPH training step at a ``train_suite.SIZES`` entry (one device),
    built as the benchmark's jax rows build it (:func:`train_suite.jax_step`)."""
    from benchmarks import train_suite

    built = train_suite.jax_step(size, mask_ratio=mask_ratio, dtype=dtype)
    return built.step_fn.lower(built.state, built.batch, built.sim, built.active).as_text()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="vit_b16", help="a benchmarks/train_suite.py SIZES entry")
    parser.add_argument("--mask", type=float, default=0.0, help="FLIP mask ratio")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    result = audit(lowered_step_text(args.size, mask_ratio=args.mask, dtype=args.dtype))
    print(f"{args.size}, mask {args.mask}, compute dtype {args.dtype}: "
          f"{result['total_flops'] / 1e9:.1f} GFLOP of matrix products per step, "
          f"bf16 share {result['bf16_share']:.5f}")
    print("| op: operand types | count | GFLOP | share | largest operand (elements) |")
    print("|---|---:|---:|---:|---:|")
    for key, group in sorted(result["groups"].items(), key=lambda kv: -kv[1]["flops"]):
        print(f"| {key} | {group['count']} | {group['flops'] / 1e9:.3f} | "
              f"{group['flops'] / result['total_flops']:.5f} | {group['largest_operand']:,} |")


if __name__ == "__main__":
    main()
