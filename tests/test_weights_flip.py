"""Tests for fjsph_jax.weights.t5x and .flip: the t5x reader and the FLIP importer.

There is no real FLIP checkpoint here, so tiny ones are written in the t5x layout FLIP's
code produces (facebookresearch/flip models_flip.py names; msgpack + zarr arrays). The
imported towers are checked against a float64 numpy transcription of FLIP's forward pass
(image and text, with and without patch masking, every clr pooling/bias option).
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from flax import serialization

from fjsph_jax.models import registry
from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import (
    CheckpointKeysError,
    UnsupportedCheckpointError,
    convert_checkpoint,
    load_pretrained,
    load_towers,
)
from fjsph_jax.weights.flip import flip_architecture, read_flip_params
from fjsph_jax.weights.params import expected_shapes
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


def _project(z, p, name):
    """FLIP's apply_projection_head + normalisation: z @ W (+ b), then z / (||z|| + 1e-8)."""
    z = z @ p[f"{name}/kernel"] + p.get(f"{name}/bias", 0.0)
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def flip_text_reference(p, ids, *, txt_avg_token=False):
    """z_txt: embed + pos, the encoder with no padding mask, token 0 (or the mean of all tokens)."""
    length = ids.shape[1]  # FLIP always feeds the full length; shorter rows are only for checks
    x = (
        p["txt_encoder/token_embedding/embedding"][ids]
        + p["txt_encoder/posembed_encoder/pos_embedding"][:, :length]
    )
    x = _encoder(x, p, "txt_encoder", TEXT_LAYERS, TEXT_HEADS)
    return _project(x.mean(axis=1) if txt_avg_token else x[:, 0], p, "txt_mlp1")


def flip_image_reference(p, pixels, *, img_avg_token=True, mask_ratio=0.0, mask_key=None):
    """z_img: conv patches + bias + pos[1:], FLIP's random_mask, [cls; kept], encoder (no ln_pre),
    mean of all tokens (or the class token)."""
    b = pixels.shape[0]
    patches = pixels.reshape(b, GRID, PATCH, GRID, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(b, GRID * GRID, -1) @ p["img_encoder/embedding/kernel"].reshape(-1, WIDTH)
    x = x + p["img_encoder/embedding/bias"] + p["img_encoder/posembed_encoder/pos_embedding"][:, 1:]
    if mask_ratio > 0:  # models_flip.random_mask: keep the int(L (1 - r)) smallest of uniform noise
        keep = int(x.shape[1] * (1 - mask_ratio))
        noise = np.asarray(jax.random.uniform(mask_key, x.shape[:2]))
        ids_keep = np.argsort(noise, axis=1)[:, :keep]
        x = np.take_along_axis(x, ids_keep[:, :, None], axis=1)
    x = np.concatenate([np.tile(p["img_encoder/cls"], (b, 1, 1)), x], axis=1)
    x = _encoder(x, p, "img_encoder", IMG_LAYERS, IMG_HEADS)
    return _project(x.mean(axis=1) if img_avg_token else x[:, 0], p, "img_mlp1")


def _float64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def _pixels_and_text(seed):
    rng = np.random.RandomState(seed)
    pixels = rng.randn(3, GRID * PATCH, GRID * PATCH, 3).astype(np.float32)
    ids = rng.randint(1, VOCAB, (3, CONTEXT)).astype(np.int32)
    ids[0, 5:] = 0  # FLIP pads with [PAD] = 0 to the full length and attends to the padding
    ids[1, 2:] = 0
    mask = (ids != 0).astype(np.int32)  # what a tokenizer returns; FLIP's tower ignores it
    return pixels, ids, mask


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
    arch, vision_params, text_params, origin = read_flip_params(write_flip(tmp_path, flip_params()))
    assert arch.vision == ViTConfig(
        GRID * PATCH,
        PATCH,
        WIDTH,
        IMG_LAYERS,
        IMG_HEADS,
        MLP,
        PROJ,
        act="gelu_tanh",
        pool="mean_all",
        eps=1e-6,
        ln_pre=False,
        proj_bias=False,
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
        mask_padding=False,
        proj_bias=False,
    )
    assert (arch.img_avg_token, arch.txt_avg_token, arch.img_proj_bias) == (True, False, False)
    assert arch.logit_scale == pytest.approx(math.log(100.0))  # clipped like FLIP's loss
    assert set(text_params) == set(expected_shapes("text", arch.text))
    assert set(vision_params) == set(expected_shapes("vision", arch.vision))  # no ln_pre
    np.testing.assert_array_equal(vision_params["position_embedding"][0], 0.0)  # cls: no position
    assert origin["vision"]["ln_post.scale"] == "img_encoder/Transformer/encoder_norm/scale"


def test_default_flip_checkpoint_matches_flip_forward(tmp_path):
    """img_avg_token=True, token-0 text attending to its padding: max |ours - FLIP| <= 1e-4."""
    params = flip_params(1)
    model, _ = load_pretrained(write_flip(tmp_path, params))
    pixels, ids, mask = _pixels_and_text(0)
    want_img = flip_image_reference(_float64(params), pixels)
    want_txt = flip_text_reference(_float64(params), ids)
    assert np.abs(np.asarray(model.encode_image(pixels)) - want_img).max() <= 1e-4
    assert np.abs(np.asarray(model.encode_text(ids, mask)) - want_txt).max() <= 1e-4
    # the padding is attended: row 1 without its 6 pad tokens (what masking them would give) differs
    unpadded = flip_text_reference(_float64(params), ids[:, :2])
    assert np.abs(unpadded[1] - want_txt[1]).max() > 1e-3
    # the masked forward is FLIP's random_mask with the same key, mean over cls + kept tokens
    key = jax.random.key(5)
    ours = np.asarray(model.encode_image(pixels, mask_ratio=0.5, mask_key=key))
    want = flip_image_reference(_float64(params), pixels, mask_ratio=0.5, mask_key=key)
    assert np.abs(ours - want).max() <= 1e-4 and np.abs(want - want_img).max() > 1e-3


def test_cls_pool_text_mean_and_projection_biases_match_flip_forward(tmp_path):
    """clr.img_avg_token=False, clr.txt_avg_token=True, clr.proj_out_bias=True."""
    rng = np.random.RandomState(7)
    params = dict(
        flip_params(2),
        **{
            "img_mlp1/bias": 0.5 * rng.randn(PROJ).astype(np.float32),
            "txt_mlp1/bias": 0.5 * rng.randn(PROJ).astype(np.float32),
        },
    )
    clr = {"img_avg_token": False, "txt_avg_token": True, "proj_out_bias": True}
    config = dict(FLIP_CONFIG, model=dict(FLIP_CONFIG["model"], clr=clr))
    towers = load_towers(write_flip(tmp_path, params, config))
    assert (towers.vision.pool, towers.text.pool) == ("cls", "mean_all")
    assert towers.vision.proj_bias and towers.text.proj_bias and towers.kind == "flip_t5x"
    model, _ = load_pretrained(towers.source)
    pixels, ids, mask = _pixels_and_text(1)
    want_img = flip_image_reference(_float64(params), pixels, img_avg_token=False)
    want_txt = flip_text_reference(_float64(params), ids, txt_avg_token=True)
    assert np.abs(np.asarray(model.encode_image(pixels)) - want_img).max() <= 1e-4
    assert np.abs(np.asarray(model.encode_text(ids, mask)) - want_txt).max() <= 1e-4


def test_converted_flip_keeps_the_flip_options(tmp_path):
    towers = convert_checkpoint(write_flip(tmp_path / "flip", flip_params()), str(tmp_path / "out"))
    again = load_towers(str(tmp_path / "out"))
    assert again.kind == "converted" and (again.vision, again.text) == (towers.vision, towers.text)
    assert not again.vision.ln_pre and not again.text.mask_padding


def test_unsupported_variants_are_all_named(tmp_path):
    params = flip_params()
    params["img_encoder/posembed_encoder/pos_embedding"] = np.zeros((1, 1 + 12, WIDTH), np.float32)
    model = {
        "model_img": {"transformer": {"num_heads": 5}, "use_cls_token": False},
        "model_txt": {"transformer": {"num_heads": 7}},
    }
    with pytest.raises(UnsupportedCheckpointError) as error:
        load_towers(write_flip(tmp_path, params, {"model": model}))
    message = str(error.value)
    assert "unsupported FLIP variant" in message
    for what in (
        "pos_embedding has shape (1, 13, 32)",
        "use_cls_token=False",
        "model_img.transformer.num_heads=5 does not divide the img_encoder width 32",
        "model_txt.transformer.num_heads=7 does not divide the txt_encoder width 24",
    ):
        assert what in message


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


def _shapes_only_flip(patch, width, layers, text_width, text_layers, proj):
    """FLIP parameters of real sizes as zero-stride broadcasts: shapes without memory."""

    def block(tower, w):
        shapes = {f"LayerNorm_{i}/{n}": (w,) for i in (0, 1) for n in ("scale", "bias")}
        for n in ("query", "key", "value", "out"):
            shapes[f"MultiHeadDotProductAttention_0/{n}/kernel"] = (w, w)
        shapes["MlpBlock_0/Dense_0/kernel"] = (w, 4 * w)
        return {f"{tower}/Transformer/encoderblock_00/{k}": v for k, v in shapes.items()}

    shapes = {
        "img_encoder/embedding/kernel": (patch, patch, 3, width),
        "img_encoder/cls": (1, 1, width),
        "img_encoder/posembed_encoder/pos_embedding": (1, 1 + (224 // patch) ** 2, width),
        "img_mlp1/kernel": (width, proj),
        "txt_encoder/token_embedding/embedding": (30523, text_width),
        "txt_encoder/posembed_encoder/pos_embedding": (1, 32, text_width),
        "txt_mlp1/kernel": (text_width, proj),
        **block("img_encoder", width),
        **block("txt_encoder", text_width),
    }
    params = {k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}
    for tower, count in (("img_encoder", layers), ("txt_encoder", text_layers)):
        for i in range(1, count):
            params[f"{tower}/Transformer/encoderblock_{i:02d}/LayerNorm_0/scale"] = params[
                f"{tower}/Transformer/encoderblock_00/LayerNorm_0/scale"
            ]
    return params


@pytest.mark.parametrize(
    "size, dims",
    [
        ("b16", (16, 768, 12, 512, 12, 512)),
        ("l16", (16, 1024, 24, 768, 12, 768)),
        ("h14", (14, 1280, 32, 1024, 24, 1024)),
    ],
)
def test_flip_presets_are_what_the_importer_derives(size, dims):
    """registry flip_vit_* / flip_text_* equal the configs read from FLIP checkpoints of those sizes."""
    text = {"b16": "base", "l16": "large", "h14": "huge"}[size]
    arch = flip_architecture(_shapes_only_flip(*dims), {}, source="shapes")
    assert arch.vision == registry.vision_config(f"flip_vit_{size}")
    assert arch.text == registry.text_config(f"flip_text_{text}")
