"""Tests for fjsph_jax.weights.hf_clip: config.json parsing, weight files, failure modes."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import (
    CheckpointFormatError,
    CheckpointKeysError,
    UnsupportedCheckpointError,
    load_towers,
)
from fjsph_jax.weights.hf_clip import hf_clip_configs

torch = pytest.importorskip("torch")
from fjsph_jax.weights.testing import save_tiny_hf_clip  # noqa: E402

VISION = dict(
    image_size=20,
    patch_size=10,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
)
TEXT = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=8,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(directory, transformers model) of one tiny CLIP checkpoint."""
    directory = str(tmp_path_factory.mktemp("hf") / "clip")
    model = save_tiny_hf_clip(
        directory, vision=VISION, text=TEXT, projection_dim=12, logit_scale=1.5
    )
    return directory, model


def _variant(saved, tmp_path, edit_weights=None, edit_config=None):
    directory = str(tmp_path / "variant")
    shutil.copytree(saved[0], directory)
    if edit_weights:
        path = os.path.join(directory, "model.safetensors")
        arrays = load_file(path)
        edit_weights(arrays)
        save_file(arrays, path)
    if edit_config:
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        edit_config(config)
        with open(path, "w") as f:
            json.dump(config, f)
    return directory


def test_configs_use_transformers_defaults_and_legacy_dicts():
    vision, text = hf_clip_configs(
        {"model_type": "clip", "text_config_dict": {"num_attention_heads": 4}}, source="x"
    )
    assert vision == ViTConfig(
        224, 32, 768, 12, 12, 3072, 512, act="quick_gelu", pool="cls", eps=1e-5
    )
    assert text == TextConfig(
        49408,
        77,
        512,
        12,
        4,
        2048,
        512,
        act="quick_gelu",
        causal=True,
        pool="eos",
        eos_token_id=49407,
        eps=1e-5,
    )


def test_legacy_eos_token_id_pools_at_argmax_and_activations_map():
    config = {
        "model_type": "clip",
        "projection_dim": 40,
        "text_config": {"eos_token_id": 2, "hidden_act": "gelu_pytorch_tanh"},
        "vision_config": {"hidden_act": "gelu", "image_size": [36, 36], "patch_size": 8},
    }
    vision, text = hf_clip_configs(config, source="x")
    assert (text.pool, text.eos_token_id, text.act, text.output_dim) == (
        "argmax",
        None,
        "gelu_tanh",
        40,
    )
    assert (vision.act, vision.image_size, vision.num_patches, vision.output_dim) == (
        "gelu",
        36,
        16,
        40,
    )


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "siglip"}, "unknown architecture model_type='siglip'"),
        (
            {"model_type": "clip", "vision_config": {"hidden_act": "relu"}},
            "hidden_act='relu' is not supported",
        ),
        ({"model_type": "clip", "vision_config": {"image_size": [224, 256]}}, "is not square"),
        ({"model_type": "clip", "vision_config": {"num_channels": 1}}, "num_channels=1"),
    ],
)
def test_unsupported_configs_raise(config, message):
    with pytest.raises(UnsupportedCheckpointError, match=message.replace("[", r"\[")):
        hf_clip_configs(config, source="x")


def test_loads_configs_weights_and_logit_scale(saved):
    directory, model = saved
    towers = load_towers(directory)
    assert towers.kind == "hf_clip" and towers.source == directory
    assert towers.vision == ViTConfig(
        20, 10, 16, 1, 2, 32, 12, act="quick_gelu", pool="cls", eps=1e-5
    )
    assert (towers.text.vocab_size, towers.text.pool, towers.text.eos_token_id) == (520, "eos", 519)
    assert towers.logit_scale == pytest.approx(float(model.logit_scale.detach()))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(
        towers.vision_params["transformer.blocks.0.attn.q_proj.kernel"],
        state["vision_model.encoder.layers.0.self_attn.q_proj.weight"].T,
    )
    np.testing.assert_array_equal(
        towers.vision_params["patch_embed.kernel"],
        state["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        towers.text_params["proj.kernel"], state["text_projection.weight"].T
    )


def test_pytorch_bin_and_sharded_safetensors_give_the_same_weights(saved, tmp_path):
    directory, model = saved
    reference = load_towers(directory)
    as_bin = str(tmp_path / "bin")
    os.makedirs(as_bin)
    shutil.copy(os.path.join(directory, "config.json"), as_bin)
    torch.save(model.state_dict(), os.path.join(as_bin, "pytorch_model.bin"))
    sharded = str(tmp_path / "sharded")
    os.makedirs(sharded)
    shutil.copy(os.path.join(directory, "config.json"), sharded)
    arrays = load_file(os.path.join(directory, "model.safetensors"))
    names = sorted(arrays)
    weight_map = {}
    for shard, part in (("a.safetensors", names[::2]), ("b.safetensors", names[1::2])):
        save_file({k: arrays[k] for k in part}, os.path.join(sharded, shard))
        weight_map.update({k: shard for k in part})
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    for other in (load_towers(as_bin), load_towers(sharded)):
        assert other.tokenizer is None  # no tokenizer files were copied
        for key, value in reference.text_params.items():
            np.testing.assert_array_equal(other.text_params[key], value)
        for key, value in reference.vision_params.items():
            np.testing.assert_array_equal(other.vision_params[key], value)


def test_missing_and_unexpected_keys_are_all_listed(saved, tmp_path):
    def edit(arrays):
        del arrays["vision_model.post_layernorm.weight"]
        del arrays["text_model.encoder.layers.0.mlp.fc2.bias"]
        arrays["vision_model.extra_head.weight"] = np.zeros(3, np.float32)

    with pytest.raises(CheckpointKeysError) as error:
        load_towers(_variant(saved, tmp_path, edit_weights=edit))
    assert error.value.missing == [
        "text_model.encoder.layers.0.mlp.fc2.bias",
        "vision_model.post_layernorm.weight",
    ]
    assert error.value.unexpected == ["vision_model.extra_head.weight"]
    assert "vision_model.extra_head.weight" in str(error.value) and "nothing was loaded" in str(
        error.value
    )


def test_config_with_more_layers_than_the_weights_lists_the_missing_block(saved, tmp_path):
    directory = _variant(
        saved, tmp_path, edit_config=lambda c: c["vision_config"].update(num_hidden_layers=2)
    )
    with pytest.raises(CheckpointKeysError) as error:
        load_towers(directory)
    assert len(error.value.missing) == 16  # 2 LayerNorms + 6 Linears, weight and bias each
    assert all(k.startswith("vision_model.encoder.layers.1.") for k in error.value.missing)


def test_shape_mismatch_names_both_keys(saved, tmp_path):
    directory = _variant(
        saved, tmp_path, edit_config=lambda c: c["text_config"].update(intermediate_size=48)
    )
    with pytest.raises(CheckpointKeysError) as error:
        load_towers(directory)
    names = [name for name, _, _ in error.value.mismatched]
    assert (
        "text:transformer.blocks.0.mlp.fc1.kernel (from text_model.encoder.layers.0.mlp.fc1.weight)"
        in names
    )
    assert (
        "text:transformer.blocks.0.mlp.fc1.bias (from text_model.encoder.layers.0.mlp.fc1.bias)",
        (32,),
        (48,),
    ) in (error.value.mismatched)


def test_directory_without_weights_lists_the_files_it_looked_for(saved, tmp_path):
    directory = str(tmp_path / "empty")
    os.makedirs(directory)
    shutil.copy(os.path.join(saved[0], "config.json"), directory)
    with pytest.raises(CheckpointFormatError, match="model.safetensors.*pytorch_model.bin"):
        load_towers(directory)
