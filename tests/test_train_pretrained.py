"""Training starts from a transformers-written CLIP checkpoint (config.init.checkpoint)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fjsph_jax import encoders  # noqa: E402
from fjsph_jax.methods.fjsph import build  # noqa: E402
from fjsph_jax.data.preprocess import normalize_images  # noqa: E402
from fjsph_jax.weights import load_pretrained  # noqa: E402
from fjsph_jax.weights.testing import save_tiny_hf_clip  # noqa: E402
from tiny import tiny_config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_clip"))
    save_tiny_hf_clip(directory, vision=VISION, text=TEXT, projection_dim=32)
    return directory


def test_model_towers_start_from_the_checkpoint(checkpoint):
    config = tiny_config(**{"init.checkpoint": checkpoint})
    towers = encoders.load_pretrained_towers(config)
    model = build.build_model(config, towers.text.vocab_size, with_encoders=True, seed=0,
                              towers=towers)
    reference, tokenizer = load_pretrained(checkpoint)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pixels = normalize_images(images, (0.5,) * 3, (0.5,) * 3)
    ours = model.image_features(pixels)
    ours = ours / np.linalg.norm(ours, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours, reference.encode_image(pixels), atol=1e-5)
    ids, mask = tokenizer.encode(["the cat", "a dog and the cat"], 12)
    text = model.text_features(ids, mask)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    np.testing.assert_allclose(text, reference.encode_text(ids, mask), atol=1e-5)
    assert float(model.logit_scale[...]) == pytest.approx(float(reference.logit_scale[...]))


def test_launch_with_checkpoint_reaches_the_dataset_step(checkpoint, tmp_path):
    command = [
        sys.executable, os.path.join(REPO_ROOT, "launch", "train.py"),
        "--config=" + os.path.join(REPO_ROOT, "configs", "mirflickr.py"),
        f"--config.init.checkpoint={checkpoint}", f"--workdir={tmp_path}",
        "--config.data.image_size=32", "--config.data.context_length=12",
        "--config.model.feature_dim=32",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "dataset 'mirflickr' not found" in done.stderr
    assert "docs/datasets.md" in done.stderr


def test_feature_dim_must_match_the_checkpoint(checkpoint):
    config = tiny_config(**{"init.checkpoint": checkpoint, "model.feature_dim": 48})
    towers = encoders.load_pretrained_towers(config)
    with pytest.raises(ValueError, match="feature_dim=48 must equal the projection dim 32"):
        encoders.tower_configs(config, towers.text.vocab_size, towers)
