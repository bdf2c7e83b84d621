"""Tests for the public API of fjsph_jax.weights: format detection, conversion, FJSPH init."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

from fjsph_jax.methods.fjsph.model import FJSPH, FJSPHConfig
from fjsph_jax.weights import (
    CheckpointFormatError,
    CheckpointKeysError,
    PretrainedTowers,
    convert_checkpoint,
    fjsph_tower_configs,
    init_fjsph_from_pretrained,
    load_towers,
)
from fjsph_jax.weights.params import module_params

pytest.importorskip("torch")
from fjsph_jax.weights.testing import save_tiny_hf_clip  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("api") / "clip")
    save_tiny_hf_clip(
        directory,
        vision=dict(
            image_size=20,
            patch_size=10,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        text=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
        ),
        projection_dim=12,
        logit_scale=1.25,
    )
    return directory


@pytest.fixture(scope="module")
def towers(hf_dir):
    return load_towers(hf_dir)


def test_unknown_paths_name_the_formats_looked_for(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no such file or directory"):
        load_towers(str(tmp_path / "absent"))
    with pytest.raises(
        CheckpointFormatError, match="looked for.*convert.py.*transformers.*t5x.*OpenAI"
    ) as error:
        load_towers(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="weights.npz: not a checkpoint"):
        load_towers(str(tmp_path / "weights.npz"))


def test_pretrained_towers_refuse_params_that_do_not_match(towers):
    params = dict(towers.text_params)
    params.pop("ln_final.bias")
    with pytest.raises(CheckpointKeysError, match="text:ln_final.bias"):
        dataclasses.replace(towers, text_params=params)
    with pytest.raises(ValueError, match="kind='pt'"):
        dataclasses.replace(towers, kind="pt")


def test_convert_round_trip_keeps_weights_configs_and_tokenizer(hf_dir, towers, tmp_path):
    out = str(tmp_path / "converted")
    convert_checkpoint(hf_dir, out)
    assert sorted(os.listdir(out)) == ["merges.txt", "model_config.json", "params", "vocab.json"]
    again = load_towers(out)
    assert again.kind == "converted" and again.source == out
    assert (again.vision, again.text, again.logit_scale) == (
        towers.vision,
        towers.text,
        towers.logit_scale,
    )
    for mine, theirs in (
        (again.vision_params, towers.vision_params),
        (again.text_params, towers.text_params),
    ):
        assert sorted(mine) == sorted(theirs)
        for key in theirs:
            np.testing.assert_array_equal(mine[key], theirs[key])
    np.testing.assert_array_equal(
        again.tokenizer.encode(["the cat"], 8)[0], towers.tokenizer.encode(["the cat"], 8)[0]
    )
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        convert_checkpoint(hf_dir, out)


def test_cli_and_loading_safetensors_never_import_torch(hf_dir, tmp_path):
    out = str(tmp_path / "cli")
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["convert.py", "--checkpoint={hf_dir}", "--out={out}"]
        try:
            runpy.run_path("launch/convert.py", run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code
        from fjsph_jax.weights import load_pretrained
        for path in ({hf_dir!r}, {out!r}):
            model, tokenizer = load_pretrained(path)
            ids, mask = tokenizer.encode(["the cat"], 8)
            assert model.encode_text(ids, mask).shape == (1, 12)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converted hf_clip checkpoint" in result.stdout and result.stdout.strip().endswith("ok")


def _fjsph(vision, text, feature_dim=12, *, abstract=False):
    config = FJSPHConfig(
        vision=vision,
        text=text,
        feature_dim=feature_dim,
        bits=8,
        hash_hidden_dim=16,
        interaction="none",
    )
    if abstract:  # shapes only: enough for the checks that raise before copying anything
        return nnx.eval_shape(lambda: FJSPH(config, rngs=nnx.Rngs(0)))
    return FJSPH(config, rngs=nnx.Rngs(0))


def test_init_fjsph_from_pretrained_copies_towers_and_logit_scale(towers):
    vision, text = fjsph_tower_configs(towers, image_size=20, context_length=8)
    model = _fjsph(vision, text)
    heads_before = module_params(model.image_hash)
    init_fjsph_from_pretrained(model, towers)
    for mine, theirs in (
        (module_params(model.vision), towers.vision_params),
        (module_params(model.text), towers.text_params),
    ):
        for key, value in theirs.items():
            np.testing.assert_array_equal(mine[key], value)
    assert float(model.logit_scale[...]) == pytest.approx(1.25)
    for key, value in heads_before.items():  # the hash heads keep their initialisation
        np.testing.assert_array_equal(module_params(model.image_hash)[key], value)


def test_init_fjsph_lists_mismatching_fields_and_checks_data_sizes(towers):
    other = _fjsph(
        dataclasses.replace(towers.vision, image_size=30, heads=4), towers.text, abstract=True
    )
    with pytest.raises(
        ValueError, match="vision.image_size: model 30 vs checkpoint 20; vision.heads: model 4"
    ):
        init_fjsph_from_pretrained(other, towers)
    frozen = _fjsph(None, None, abstract=True)
    with pytest.raises(ValueError, match="needs an FJSPH with both encoders"):
        init_fjsph_from_pretrained(frozen, towers)
    with pytest.raises(ValueError, match="set data.image_size=20"):
        fjsph_tower_configs(towers, image_size=32)
    with pytest.raises(ValueError, match="data.context_length <= 8"):
        fjsph_tower_configs(towers, context_length=77)
    assert isinstance(towers, PretrainedTowers)


def test_clip_encoder_from_configs_logits_formula():
    from fjsph_jax.models.registry import text_config, vision_config
    from fjsph_jax.weights import CLIPEncoder

    model = CLIPEncoder.from_configs(
        vision_config("vit_micro"), text_config("text_micro"), rngs=nnx.Rngs(1), logit_scale=0.5
    )
    pixels = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    ids = np.array([[1, 5, 9, 2, 0], [1, 7, 2, 0, 0], [1, 2, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    image, text = np.asarray(model.encode_image(pixels)), np.asarray(model.encode_text(ids, mask))
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(model.logits(pixels, ids, mask)), np.exp(0.5) * image @ text.T, atol=1e-5
    )


def test_checkpoint_normalization_from_the_processor_file_or_the_format(towers, tmp_path):
    from fjsph_jax.weights import checkpoint_normalization
    from fjsph_jax.weights.pretrained import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    directory = tmp_path / "with_processor"
    directory.mkdir()
    (directory / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "crop_size": 20}'
    )
    with_file = dataclasses.replace(towers, source=str(directory), kind="hf_clip")
    assert checkpoint_normalization(with_file) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert checkpoint_normalization(dataclasses.replace(towers, source=str(bare))) is None
    openai = dataclasses.replace(towers, source=str(bare / "model.pt"), kind="openai_clip")
    assert checkpoint_normalization(openai) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    (bare / "preprocessor_config.json").write_text("{not json")
    assert checkpoint_normalization(dataclasses.replace(towers, source=str(bare))) is None


def test_build_warns_when_the_config_normalisation_differs(towers, tmp_path, caplog):
    import logging

    from tiny import tiny_config

    from fjsph_jax import encoders as build

    directory = tmp_path / "clip"
    directory.mkdir()
    (directory / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}'
    )
    checkpoint = dataclasses.replace(towers, source=str(directory), kind="hf_clip")
    config = tiny_config(**{"init.checkpoint": str(directory)})  # demo normalisation 0.5
    with caplog.at_level(logging.WARNING):
        assert build.check_normalization(config, checkpoint) is False
    assert "--config.data.image_mean='(0.1, 0.2, 0.3)'" in caplog.text
    assert "--config.data.image_std='(0.4, 0.5, 0.6)'" in caplog.text
    caplog.clear()
    config.data.image_mean, config.data.image_std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    with caplog.at_level(logging.WARNING):
        assert build.check_normalization(config, checkpoint) is True
    assert caplog.text == ""
