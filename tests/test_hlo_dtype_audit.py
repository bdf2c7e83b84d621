"""benchmarks/hlo_dtype_audit.py: FLOPs read from StableHLO lines, and the bf16 step's
matrix products (micro towers, lowered on CPU) are bf16 and add up to the MFU numerator."""

import pytest

from benchmarks import hlo_dtype_audit as audit_lib
from benchmarks import train_suite
from fjsph_jax.methods.fjsph import build

DOT = ("%0 = stablehlo.dot_general %arg0, %arg1, batching_dims = [0] x [0], contracting_dims = [2] x [2], "
       "precision = [DEFAULT, DEFAULT] : (tensor<2x3x4xbf16>, tensor<2x5x4xbf16>) -> tensor<2x3x5xbf16>")
CONV = ("%0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], "
        "window = {stride = [4, 4], pad = [[0, 0], [0, 0]]} {batch_group_count = 1 : i64, "
        "feature_group_count = 1 : i64} : (tensor<2x8x8x3xf32>, tensor<4x4x3x6xf32>) -> tensor<2x2x2x6xf32>")


def test_op_flops_of_a_batched_dot_and_a_patch_convolution():
    # [2 batches] x [3 x 4] @ [4 x 5]: 2 * (2 * 3 * 5) * 4
    assert audit_lib.op_flops(DOT) == ("dot_general", ("bf16", "bf16"), 240.0)
    # 2 images, 2 x 2 output positions, 6 filters of 4 x 4 x 3: 2 * 48 * 48
    assert audit_lib.op_flops(CONV) == ("convolution", ("f32", "f32"), 4608.0)
    result = audit_lib.audit("\n".join([DOT, "%1 = stablehlo.add %0, %0 : tensor<2x3x5xbf16>", CONV]))
    assert result["total_flops"] == 240.0 + 4608.0
    assert result["bf16_share"] == pytest.approx(240.0 / 4848.0)
    assert result["groups"]["convolution:f32,f32"]["largest_operand"] == 2 * 8 * 8 * 3


@pytest.mark.parametrize("mask_ratio", [0.5])  # masked: the kept-token count enters the FLOPs
def test_bf16_step_computes_the_towers_in_bf16_and_its_flops_are_the_analytic_count(mask_ratio):
    result = audit_lib.audit(audit_lib.lowered_step_text("micro", mask_ratio=mask_ratio, dtype="bfloat16"))
    config = train_suite.load_config("micro", mask_ratio=mask_ratio, dtype="bfloat16")
    model_config = build.model_config(config, train_suite.SIZES["micro"]["vocab_size"], with_encoders=True)
    analytic = train_suite.step_flops(model_config, batch=config.train.global_batch_size, mask_ratio=mask_ratio)
    # The MFU numerator (train_suite.step_flops) is the step's own matrix-product count.
    assert result["total_flops"] == pytest.approx(analytic["total"], rel=0.005)
    assert result["bf16_share"] > 0.99
    batch = config.train.global_batch_size
    smallest_activation = batch * min(model_config.text.context_length, 1 + model_config.vision.num_patches // 2) * min(
        model_config.vision.width, model_config.text.width)
    for key, group in result["groups"].items():
        if key.endswith("f32,f32"):  # the losses' products only: nothing of a tower's size
            assert group["largest_operand"] < smallest_activation, (key, group)


def test_float32_step_has_no_bf16_products():
    result = audit_lib.audit(audit_lib.lowered_step_text("micro", dtype="float32"))
    assert result["bf16_share"] == 0.0 and result["total_flops"] > 0
