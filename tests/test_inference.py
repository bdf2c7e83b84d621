"""Loading a trained workdir and encoding: the codes evaluation gives, in both train modes."""

import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from tiny import tiny_config

from fjsph_jax import inference, inputs, parallel
from fjsph_jax.methods.fjsph import build
from fjsph_jax.methods.fjsph import method as fjsph_method
from fjsph_jax.training import loop as train
from fjsph_jax.training.checkpointing import Checkpointer
from fjsph_jax.data import images as images_lib
from fjsph_jax.data.sources import load_dataset
from fjsph_jax.methods.fjsph.step import StepSettings


def tiny_trained_run(tmp_path_factory) -> str:
    """A finished tiny end-to-end run (tests/tiny.py), trained once per test session and
    shared with tests/test_search_cli.py. One checkpoint, at the end (step 8): saves are
    slow on a loaded CPU."""
    workdir = tmp_path_factory.getbasetemp() / "inference-tiny-run"
    if not (workdir / "results.json").exists():
        train.train_and_evaluate(tiny_config(**{"train.checkpoint_every_steps": 8}), str(workdir))
    return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def evaluation_codes(config, workdir, params, rows):
    """What training's evaluation computes for ``rows``: fjsph_method.encode_rows on the row
    loader prepare_training_data builds (pixels and tokens, or the cached frozen features),
    and the dataset itself."""
    mesh = parallel.make_mesh()
    data = inputs.prepare_training_data(
        config, workdir, mesh, input_kind=fjsph_method.FJSPHMethod.input_kind(config))
    vocab_size = data.vocab_size
    dataset = load_dataset(config.data, seed=config.seed)
    abstract = nnx.eval_shape(
        lambda: build.build_model(
            config, vocab_size, with_encoders=config.train.mode == "end_to_end", seed=config.seed
        )
    )
    graphdef, _ = nnx.split(abstract)
    encode_fn = fjsph_method.make_encode_fn(graphdef, StepSettings.from_config(config))
    image, text = fjsph_method.encode_rows(
        encode_fn, params, data.load_rows, rows, batch_size=64, mesh=mesh
    )
    return dataset, image, text


def test_end_to_end_run_encodes_like_evaluation(run, tmp_path):
    model = inference.TrainedModel.load(run)
    assert model.step == 8 and model.bits == 16 and model.image_size == 32
    saved, _ = Checkpointer(
        os.path.join(run, "checkpoints"), max_to_keep=2, save_interval_steps=4
    ).restore_untyped(8)
    restored = jax.tree.leaves(jax.device_get(model.params))
    assert len(restored) == len(jax.tree.leaves(saved["params"])) > 20
    for a, b in zip(restored, jax.tree.leaves(saved["params"])):
        np.testing.assert_array_equal(a, b)

    rows = np.arange(0, 256, 3)  # 86 items: one full batch of 64 and a padded one
    dataset, image, text = evaluation_codes(model.config, str(tmp_path), model.params, rows)
    texts = [dataset.texts[i] for i in rows]
    got_text = model.encode_texts(texts, batch_size=64)
    got_image = model.encode_images(dataset.images[rows], batch_size=64)
    assert got_text.dtype == np.int8 and got_text.shape == (len(rows), 16)
    np.testing.assert_array_equal(got_text, text)
    np.testing.assert_array_equal(got_image, image)
    assert set(np.unique(got_image)) == {-1, 1}
    # one query at a time (another batch shape) gives the same code
    np.testing.assert_array_equal(model.encode_texts(texts[5]), text[5:6])
    # an image file (PNG, lossless) encodes like its pixels
    path = tmp_path / "item.png"
    Image.fromarray(dataset.images[rows[7]]).save(path)
    np.testing.assert_array_equal(model.encode("image", [str(path)]), image[7:8])
    with pytest.raises(ValueError, match="modality must be one of"):
        model.encode("audio", texts[:1])


def test_frozen_encoder_run_rebuilds_the_towers(tmp_path):
    """Heads-only checkpoint + towers rebuilt from the seed = codes from training's cached
    features (prepare_training_data computes and caches them exactly as a frozen run does)."""
    config = tiny_config(**{"train.mode": "frozen_encoder", "model.interaction": "none"})
    workdir = str(tmp_path / "frozen")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    mesh = parallel.make_mesh()
    data = inputs.prepare_training_data(  # writes tokenizer.json
        config, workdir, mesh, input_kind=fjsph_method.FJSPHMethod.input_kind(config))
    tokenizer, vocab_size = data.tokenizer, data.vocab_size
    heads = build.build_model(config, vocab_size, with_encoders=False, seed=123)  # not the seed
    _, params = nnx.split(heads)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=1, save_interval_steps=1
    )
    checkpointer.save(3, {"params": params}, {"step": 3}, force=True)
    checkpointer.close()

    model = inference.TrainedModel.load(workdir)
    assert model.step == 3 and model.tokenizer == tokenizer
    rows = np.arange(1, 256, 4)
    dataset, image, text = evaluation_codes(config, workdir, params, rows)
    np.testing.assert_array_equal(model.encode_texts([dataset.texts[i] for i in rows]), text)
    np.testing.assert_array_equal(model.encode_images(dataset.images[rows]), image)


def test_encode_in_batches_pads_and_keeps_order():
    mesh = parallel.make_mesh()
    x = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
    got = inference.encode_in_batches(
        jax.jit(lambda batch: batch["x"] * 2 + batch["y"][:, None]),
        {"x": x, "y": np.arange(21)},
        batch_size=5,
        mesh=mesh,
    )  # 5 -> 8 rows per call on 8 devices, 3 calls
    np.testing.assert_array_equal(got, x * 2 + np.arange(21)[:, None])


def test_prepare_images_resizes_reads_files_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(inference.prepare_images(small, 8), small)  # already 8 x 8
    big = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    resized = inference.prepare_images([big, small[0]], 8, "squash")
    assert resized.shape == (2, 8, 8, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[0], images_lib.resize_image(big, 8, "squash"))
    np.testing.assert_array_equal(resized[1], small[0])
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    np.testing.assert_array_equal(
        inference.prepare_images(str(path), 8), images_lib.resize_image(big, 8, "center_crop")[None]
    )
    with pytest.raises(ValueError, match=r"images must be \[N, H, W, 3\]"):
        inference.prepare_images(big, 8)
    with pytest.raises(ValueError, match=r"images\[0\] must be uint8"):
        inference.prepare_images(big[None].astype(np.float32), 8)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        inference.prepare_images([str(tmp_path / "missing.jpg")], 8)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="is not an image"):
        inference.prepare_images([str(tmp_path / "text.jpg")], 8)


def test_missing_workdir_parts_are_named(tmp_path):
    with pytest.raises(inference.RunNotFoundError, match="is not a training workdir"):
        inference.TrainedModel.load(str(tmp_path))
    (tmp_path / "config.json").write_text(tiny_config().to_json_best_effort())
    with pytest.raises(inference.RunNotFoundError, match="tokenizer.json"):
        inference.TrainedModel.load(str(tmp_path))
    assert isinstance(inference.load_config(str(tmp_path)).data.image_mean, list)
    with pytest.raises(inference.RunNotFoundError, match="holds no checkpoint"):
        inference.latest_step(str(tmp_path))
