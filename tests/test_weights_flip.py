"""Tests for fjsph_jax.weights.t5x and .flip: the t5x reader and the FLIP key map.

There is no real FLIP checkpoint here, so tiny ones are written in the t5x layout FLIP's
code produces (facebookresearch/flip models_flip.py names; msgpack + zarr arrays). The key
map is checked against a numpy transcription of FLIP's forward pass.
"""

import json
import math
import os

import numpy as np
import pytest
from flax import nnx, serialization

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import CheckpointKeysError, UnsupportedCheckpointError, load_towers
from fjsph_jax.weights.flip import read_flip_params
from fjsph_jax.weights.params import build_tower, expected_shapes
from fjsph_jax.weights.t5x import find_t5x_checkpoint, read_t5x_params, write_t5x_checkpoint

PATCH, GRID, WIDTH, MLP, IMG_LAYERS, IMG_HEADS = 4, 3, 32, 48, 2, 2
VOCAB, CONTEXT, TEXT_WIDTH, TEXT_MLP, TEXT_LAYERS, TEXT_HEADS = 50, 8, 24, 40, 1, 4
PROJ = 16
FLIP_CONFIG = {
    "model": {
        "model_img": {"transformer": {"num_heads": IMG_HEADS}},
        "model_txt": {"transformer": {"num_heads": TEXT_HEADS}},
    }
}


def _block(rng, prefix, width, mlp):
    p = {}
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        p[f"{prefix}/{ln}/scale"] = 1 + 0.1 * rng.randn(width)
        p[f"{prefix}/{ln}/bias"] = 0.1 * rng.randn(width)
    for name in ("query", "key", "value", "out"):
        p[f"{prefix}/MultiHeadDotProductAttention_0/{name}/kernel"] = rng.randn(
            width, width
        ) / np.sqrt(width)
        p[f"{prefix}/MultiHeadDotProductAttention_0/{name}/bias"] = 0.1 * rng.randn(width)
    p[f"{prefix}/MlpBlock_0/Dense_0/kernel"] = rng.randn(width, mlp) / np.sqrt(width)
    p[f"{prefix}/MlpBlock_0/Dense_0/bias"] = 0.1 * rng.randn(mlp)
    p[f"{prefix}/MlpBlock_0/Dense_1/kernel"] = rng.randn(mlp, width) / np.sqrt(mlp)
    p[f"{prefix}/MlpBlock_0/Dense_1/bias"] = 0.1 * rng.randn(width)
    return p


def flip_params(seed=0):
    """Random parameters of a tiny FLIP model, flat t5x keys."""
    rng = np.random.RandomState(seed)
    p = {
        "img_encoder/embedding/kernel": rng.randn(PATCH, PATCH, 3, WIDTH)
        / np.sqrt(3 * PATCH * PATCH),
        "img_encoder/embedding/bias": 0.1 * rng.randn(WIDTH),
        "img_encoder/cls": 0.02 * rng.randn(1, 1, WIDTH),
        # Row 0 is FLIP's unused class-token row; random here to show it is ignored.
        "img_encoder/posembed_encoder/pos_embedding": rng.randn(1, 1 + GRID * GRID, WIDTH),
        "img_encoder/Transformer/encoder_norm/scale": 1 + 0.1 * rng.randn(WIDTH),
        "img_encoder/Transformer/encoder_norm/bias": 0.1 * rng.randn(WIDTH),
        "txt_encoder/token_embedding/embedding": rng.randn(VOCAB, TEXT_WIDTH),
        "txt_encoder/posembed_encoder/pos_embedding": 0.1 * rng.randn(1, CONTEXT, TEXT_WIDTH),
        "txt_encoder/Transformer/encoder_norm/scale": 1 + 0.1 * rng.randn(TEXT_WIDTH),
        "txt_encoder/Transformer/encoder_norm/bias": 0.1 * rng.randn(TEXT_WIDTH),
        "img_mlp1/kernel": rng.randn(WIDTH, PROJ) / np.sqrt(WIDTH),
        "txt_mlp1/kernel": rng.randn(TEXT_WIDTH, PROJ) / np.sqrt(TEXT_WIDTH),
        "logit_scale": np.array([5.0]),  # above log(100): FLIP clips it
    }
    for i in range(IMG_LAYERS):
        p.update(_block(rng, f"img_encoder/Transformer/encoderblock_{i:02d}", WIDTH, MLP))
    for i in range(TEXT_LAYERS):
        p.update(_block(rng, f"txt_encoder/Transformer/encoderblock_{i:02d}", TEXT_WIDTH, TEXT_MLP))
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def write_flip(directory, params, config=FLIP_CONFIG, step=100):
    write_t5x_checkpoint(params, str(directory), step=step, tensorstore_min_size=256)
    if config is not None:
        (directory / "flip_config.json").write_text(json.dumps(config))
    return str(directory)


# ---- a numpy transcription of FLIP's forward pass (models_flip.py, t5x/layers.py) ----
def _ln(x, p, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p[f"{prefix}/scale"] + p[f"{prefix}/bias"]


def _encoder(x, p, tower, layers, heads):
    for i in range(layers):
        b = f"{tower}/Transformer/encoderblock_{i:02d}"
        y = _ln(x, p, f"{b}/LayerNorm_0")
        batch, length, width = y.shape
        attn = f"{b}/MultiHeadDotProductAttention_0"
        q, k, v = (
            (y @ p[f"{attn}/{n}/kernel"] + p[f"{attn}/{n}/bias"]).reshape(batch, length, heads, -1)
            for n in ("query", "key", "value")
        )
        logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        x = x + out @ p[f"{attn}/out/kernel"] + p[f"{attn}/out/bias"]
        y = _ln(x, p, f"{b}/LayerNorm_1")
        h = y @ p[f"{b}/MlpBlock_0/Dense_0/kernel"] + p[f"{b}/MlpBlock_0/Dense_0/bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # flax nn.gelu
        x = x + h @ p[f"{b}/MlpBlock_0/Dense_1/kernel"] + p[f"{b}/MlpBlock_0/Dense_1/bias"]
    return _ln(x, p, f"{tower}/Transformer/encoder_norm")


def flip_text_reference(p, ids):
    x = (
        p["txt_encoder/token_embedding/embedding"][ids]
        + p["txt_encoder/posembed_encoder/pos_embedding"]
    )
    z = _encoder(x, p, "txt_encoder", TEXT_LAYERS, TEXT_HEADS)[:, 0] @ p["txt_mlp1/kernel"]
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def flip_image_reference(p, pixels, ln_pre):
    """FLIP's image tower with cls pooling, plus an ln_pre (FLIP has none) after the concat."""
    b = pixels.shape[0]
    patches = pixels.reshape(b, GRID, PATCH, GRID, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(b, GRID * GRID, -1) @ p["img_encoder/embedding/kernel"].reshape(-1, WIDTH)
    x = x + p["img_encoder/embedding/bias"] + p["img_encoder/posembed_encoder/pos_embedding"][:, 1:]
    x = np.concatenate([np.tile(p["img_encoder/cls"], (b, 1, 1)), x], axis=1)
    x = _ln(x, ln_pre, "ln_pre")
    z = _encoder(x, p, "img_encoder", IMG_LAYERS, IMG_HEADS)[:, 0] @ p["img_mlp1/kernel"]
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


# ---- t5x ----
def test_t5x_round_trip_inline_and_tensorstore_latest_step(tmp_path):
    params = flip_params()
    write_t5x_checkpoint(
        {k: v + 1 for k, v in params.items()}, str(tmp_path), step=50, tensorstore_min_size=256
    )
    file = write_t5x_checkpoint(params, str(tmp_path), step=100, tensorstore_min_size=256)
    step_dir = os.path.dirname(file)
    zarr_dirs = [n for n in os.listdir(step_dir) if n.startswith("target.")]
    assert "target.txt_encoder.token_embedding.embedding" in zarr_dirs  # 1200 elements: tensorstore
    assert "target.img_encoder.cls" not in zarr_dirs  # 32 elements: inline in the msgpack
    assert find_t5x_checkpoint(str(tmp_path)) == file
    for where in (str(tmp_path), step_dir, file):
        read = read_t5x_params(where)
        assert sorted(read) == sorted(params)
        for key, value in params.items():
            np.testing.assert_array_equal(read[key], value)


def test_t5x_reads_legacy_and_gcs_tensorstore_specs(tmp_path):
    params = {
        "a/big": np.arange(300, dtype=np.float32).reshape(3, 100),
        "a/small": np.ones(2, np.float32),
    }
    file = write_t5x_checkpoint(params, str(tmp_path), tensorstore_min_size=256)
    with open(file, "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    spec = contents["optimizer"]["target"]["a"]["big"]
    legacy = dict(spec, path=spec["kvstore"]["path"], kvstore={"driver": "file"})
    gcs = dict(
        spec, path=spec["kvstore"]["path"], kvstore={"driver": "gcs", "bucket": "t5x-dummy-bucket"}
    )
    for variant in (legacy, gcs):
        contents["optimizer"]["target"]["a"]["big"] = variant
        with open(file, "wb") as f:
            f.write(serialization.msgpack_serialize(contents))
        np.testing.assert_array_equal(read_t5x_params(str(tmp_path))["a/big"], params["a/big"])


# ---- FLIP ----
def test_architecture_is_derived_from_tensors_and_flip_config(tmp_path):
    arch, vision_params, text_params = read_flip_params(write_flip(tmp_path, flip_params()))
    assert arch.vision == ViTConfig(
        GRID * PATCH,
        PATCH,
        WIDTH,
        IMG_LAYERS,
        IMG_HEADS,
        MLP,
        PROJ,
        act="gelu_tanh",
        pool="cls",
        eps=1e-6,
    )
    assert arch.text == TextConfig(
        VOCAB,
        CONTEXT,
        TEXT_WIDTH,
        TEXT_LAYERS,
        TEXT_HEADS,
        TEXT_MLP,
        PROJ,
        act="gelu_tanh",
        causal=False,
        pool="first",
        eps=1e-6,
    )
    assert (arch.img_avg_token, arch.txt_avg_token, arch.img_proj_bias) == (True, False, False)
    assert arch.logit_scale == pytest.approx(math.log(100.0))  # clipped like FLIP's loss
    assert set(text_params) == set(expected_shapes("text", arch.text))
    assert set(vision_params) == set(expected_shapes("vision", arch.vision)) - {
        "ln_pre.scale",
        "ln_pre.bias",
    }


def test_load_towers_names_every_unsupported_flip_feature(tmp_path):
    directory = write_flip(tmp_path / "default", flip_params())
    with pytest.raises(UnsupportedCheckpointError) as error:
        load_towers(directory)
    message = str(error.value)
    assert "unsupported FLIP variant" in message
    assert all(s in message for s in ("no ln_pre", "clr.img_avg_token=True", "attends to padding"))
    config = dict(FLIP_CONFIG, model=dict(FLIP_CONFIG["model"], clr={"img_avg_token": False}))
    params = dict(flip_params(), **{"txt_mlp1/bias": np.zeros(PROJ, np.float32)})
    with pytest.raises(UnsupportedCheckpointError) as error:
        load_towers(write_flip(tmp_path / "cls", params, config))
    assert "img_avg_token" not in str(error.value) and "proj_out_bias=True" in str(error.value)


def test_missing_unexpected_keys_and_unknown_heads_are_reported(tmp_path):
    params = flip_params()
    del params["img_encoder/Transformer/encoderblock_01/LayerNorm_1/bias"]
    params["img_encoder/Transformer/encoderblock_01/extra/kernel"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointKeysError) as error:
        load_towers(write_flip(tmp_path / "keys", params))
    assert error.value.missing == ["img_encoder/Transformer/encoderblock_01/LayerNorm_1/bias"]
    assert error.value.unexpected == ["img_encoder/Transformer/encoderblock_01/extra/kernel"]
    with pytest.raises(UnsupportedCheckpointError, match="width 32.*flip_config.json"):
        load_towers(write_flip(tmp_path / "heads", flip_params(), config=None))


def test_text_key_map_matches_flip_forward(tmp_path):
    params = flip_params(1)
    arch, _, text_params = read_flip_params(write_flip(tmp_path, params))
    tower = build_tower("text", arch.text, text_params, source="test")
    ids = np.random.RandomState(0).randint(1, VOCAB, (3, CONTEXT)).astype(np.int32)
    ids[0, 5:] = 0  # FLIP pads with [PAD] = 0 and attends to it: all-ones attention mask
    ours = np.asarray(nnx.jit(lambda t, i, m: t(i, m))(tower, ids, np.ones_like(ids)))
    ours = ours / np.linalg.norm(ours, axis=-1, keepdims=True)
    want = flip_text_reference({k: v.astype(np.float64) for k, v in params.items()}, ids)
    assert np.abs(ours - want).max() <= 1e-4


def test_image_key_map_folds_patch_bias_and_matches_flip_forward_given_an_ln_pre(tmp_path):
    params = flip_params(2)
    arch, vision_params, _ = read_flip_params(write_flip(tmp_path, params))
    np.testing.assert_array_equal(vision_params["position_embedding"][0], 0.0)
    rng = np.random.RandomState(3)
    ln_pre = {"ln_pre/scale": 1 + 0.1 * rng.randn(WIDTH), "ln_pre/bias": 0.1 * rng.randn(WIDTH)}
    full = dict(
        vision_params,
        **{"ln_pre.scale": ln_pre["ln_pre/scale"], "ln_pre.bias": ln_pre["ln_pre/bias"]},
    )
    tower = build_tower("vision", arch.vision, full, source="test")
    pixels = rng.randn(2, GRID * PATCH, GRID * PATCH, 3).astype(np.float32)
    ours = np.asarray(nnx.jit(lambda t, x: t(x))(tower, pixels))
    ours = ours / np.linalg.norm(ours, axis=-1, keepdims=True)
    want = flip_image_reference(
        {k: v.astype(np.float64) for k, v in params.items()}, pixels, ln_pre
    )
    assert np.abs(ours - want).max() <= 1e-4
