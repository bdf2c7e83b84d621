"""Evaluation plumbing: padded encoding, random-code chance level, results files, table."""
import json

import jax
import numpy as np
from flax import nnx

from fjsph_jax import parallel
from fjsph_jax.evaluation import protocol as evaluate
from fjsph_jax.methods.fjsph import build
from fjsph_jax.methods.fjsph import method as fjsph_method
from fjsph_jax.methods.fjsph.step import StepSettings
from tiny import tiny_config


def test_encode_rows_pads_and_matches_direct_encoding():
    config = tiny_config(**{"train.mode": "frozen_encoder"})
    model = build.build_model(config, vocab_size=10, with_encoders=False, seed=0)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    inputs = {"image_features": rng.standard_normal((21, 32)).astype(np.float32),
              "text_features": rng.standard_normal((21, 32)).astype(np.float32)}
    rows = np.array([20, 3, 7, 0, 11])
    encode = fjsph_method.make_encode_fn(graphdef, StepSettings.from_config(config))
    mesh = parallel.make_mesh()
    image_codes, text_codes = fjsph_method.encode_rows(encode, params, inputs, rows, batch_size=3,
                                                   mesh=mesh)  # padded to 8 per batch
    assert image_codes.shape == (5, 16) and image_codes.dtype == np.int8
    direct = np.where(np.asarray(model.hash_image(inputs["image_features"][rows])) >= 0, 1, -1)
    np.testing.assert_array_equal(image_codes, direct)
    direct_t = np.where(np.asarray(model.hash_text(inputs["text_features"][rows])) >= 0, 1, -1)
    np.testing.assert_array_equal(text_codes, direct_t)


def _labels(n, seed):
    labels = (np.random.default_rng(seed).random((n, 5)) < 0.3).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    return labels


def test_random_codes_sit_near_the_chance_level(tmp_path):
    config = tiny_config()
    q_labels, db_labels = _labels(40, 1), _labels(300, 2)
    results = evaluate.random_codes_baseline(40, 300, 16, q_labels, db_labels, config.eval,
                                             seed=0)
    chance = np.mean((q_labels @ db_labels.T) > 0)
    for direction in ("i2t", "t2i"):
        assert abs(results[direction]["map_all"] - chance) < 0.1


def test_write_results_and_table(tmp_path):
    config = tiny_config()
    q_labels, db_labels = _labels(30, 3), _labels(100, 4)
    codes = {m: np.where(q_labels[:, :1] > 0, 1, -1).repeat(16, 1).astype(np.int8)
             for m in ("image", "text")}
    db = {m: np.where(db_labels[:, :1] > 0, 1, -1).repeat(16, 1).astype(np.int8)
          for m in ("image", "text")}
    results = {"bits": 16, "top_k": config.eval.top_k}
    results.update(evaluate.evaluate_codes(codes, db, q_labels, db_labels, config.eval))
    results["random_codes"] = evaluate.random_codes_baseline(30, 100, 16, q_labels, db_labels,
                                                             config.eval, seed=0)
    paths = evaluate.write_results(str(tmp_path), results)
    assert json.loads((tmp_path / "results.json").read_text())["bits"] == 16
    for key in ("pr_curve", "precision_at_n"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = evaluate.format_table(results)
    assert "MAP@all" in table and f"MAP@{config.eval.top_k}" in table
    assert f"{results['i2t']['map_all']:.4f}" in table
