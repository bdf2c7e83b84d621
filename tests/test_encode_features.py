"""launch/encode.py --features: feature files of a config's or a run's towers, or the
hand-crafted features, through subprocesses, against direct computations."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from test_inference import tiny_trained_run
from tiny import apply_overrides, default

from fjsph_jax import encoders, features, inference, parallel
from fjsph_jax.binary import sign_pm
from fjsph_jax.data.feature_files import FEATURE_KEYS, feature_arrays, read_feature_file
from fjsph_jax.data.handcrafted import handcrafted_features
from fjsph_jax.data.sources import load_dataset, load_splits
from fjsph_jax.data.tokenizer import WordTokenizer
from fjsph_jax.methods.fjsph import build

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/tiny.py's towers on 64 items; batches of 24: two full ones and a padded one
OVERRIDES = {
    "data.num_items": 64,
    "data.num_query": 16,
    "data.num_train": 32,
    "data.context_length": 12,
    "model.vision": "vit_micro",
    "model.text": "text_micro",
    "model.feature_dim": 32,
    "eval.batch_size": 24,
}
CONFIG_FLAGS = [
    f"--config={os.path.join(REPO_ROOT, 'configs', 'default.py')}",
    *(f"--config.{key}={value}" for key, value in OVERRIDES.items()),
]


def _encode(*args, cwd):
    command = [sys.executable, os.path.join(REPO_ROOT, "launch", "encode.py"), *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(cwd))


def _config(**extra):
    return apply_overrides(default.get_config(), **OVERRIDES, **extra)


def _direct_features(config, model, tokenizer):
    """compute_features over every row, as the CLI should have run it."""
    dataset = load_dataset(config.data, seed=config.seed)
    ids, mask = tokenizer.encode(dataset.texts, config.data.context_length)
    computed = features.compute_features(
        model, {"images": dataset.images, "input_ids": ids, "attention_mask": mask},
        image_mean=tuple(config.data.image_mean), image_std=tuple(config.data.image_std),
        batch_size=64, mesh=parallel.make_mesh())
    return dataset, computed


def _check_rows(stored, dataset, splits, computed):
    for part, rows in (("tr", splits.database), ("te", splits.query)):
        np.testing.assert_allclose(stored[f"I_{part}"], computed["image_features"][rows],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stored[f"T_{part}"], computed["text_features"][rows],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(stored[f"L_{part}"], dataset.labels[rows])


@pytest.fixture(scope="module")
def config_mode(tmp_path_factory):
    """The CLI's .npz for --config (no checkpoint: the towers of config.seed)."""
    out = tmp_path_factory.mktemp("features") / "tiny.npz"
    done = _encode(f"--features={out}", *CONFIG_FLAGS, cwd=out.parent)
    assert done.returncode == 0, done.stderr
    return out, done


def test_config_mode_writes_the_towers_features_of_every_split(config_mode):
    out, done = config_mode
    config = _config()
    dataset = load_dataset(config.data, seed=config.seed)
    splits = load_splits(config.data, dataset)
    with np.load(out) as data:
        stored = {k: data[k] for k in data.files}
    assert sorted(stored) == sorted([*FEATURE_KEYS, "train_rows", "label_names"])
    assert stored["I_tr"].shape == (48, 32) and stored["T_te"].shape == (16, 32)
    assert stored["L_tr"].shape == (48, 12) and stored["I_tr"].dtype == np.float32
    np.testing.assert_array_equal(stored["train_rows"],
                                  np.searchsorted(splits.database, splits.train))
    assert stored["label_names"].tolist() == dataset.label_names
    tokenizer = WordTokenizer.from_texts([dataset.texts[i] for i in splits.train])
    model = encoders.build_encoders(config, tokenizer.vocab_size, seed=config.seed)
    _, computed = _direct_features(config, model, tokenizer)
    _check_rows(stored, dataset, splits, computed)
    # what it said: a note on the random towers, progress, and a one-line summary
    assert "config.init.checkpoint is empty" in done.stderr
    assert "encoding synthetic: 64/64 rows (100%" in done.stderr
    (summary,) = done.stdout.strip().splitlines()
    assert f"to {out} (npz)" in summary and "tr = database 48 rows (train 32)" in summary
    assert "te = query 16 rows; image dim 32, text dim 32, 12 label columns" in summary
    back = read_feature_file(out)
    assert back.splits.sizes() == {"query": 16, "database": 48, "train": 32}


def test_config_mode_with_a_pretrained_checkpoint_uses_its_towers_and_tokenizer(tmp_path):
    pytest.importorskip("torch")
    from fjsph_jax.weights.testing import save_tiny_hf_clip

    checkpoint = str(tmp_path / "clip")
    save_tiny_hf_clip(
        checkpoint,
        vision=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64),
        text=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=16),
        projection_dim=32)
    out = tmp_path / "clip.npz"
    done = _encode(f"--features={out}", *CONFIG_FLAGS, f"--config.init.checkpoint={checkpoint}",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"tower features (checkpoint {checkpoint})" in done.stdout
    config = _config(**{"init.checkpoint": checkpoint})
    towers = encoders.load_pretrained_towers(config)
    model = encoders.build_encoders(config, towers.text.vocab_size, seed=config.seed,
                                    towers=towers)
    dataset, computed = _direct_features(config, model, towers.tokenizer)
    with np.load(out) as data:
        _check_rows(data, dataset, load_splits(config.data, dataset), computed)


def test_handcrafted_features_to_matlab_v73(tmp_path):
    out = tmp_path / "hand.mat"
    done = _encode(f"--features={out}", "--handcrafted", "--mat73", *CONFIG_FLAGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hand-crafted features of 'synthetic'" in done.stdout and "(mat v7.3)" in done.stdout
    with open(out, "rb") as f:
        assert b"MATLAB 7.3 MAT-file" in f.read(128)
    config = _config()
    dataset = load_dataset(config.data, seed=config.seed)
    expected = handcrafted_features(dataset, load_splits(config.data, dataset))
    got = feature_arrays(read_feature_file(out))
    for key, value in feature_arrays(expected).items():
        if key == "label_names":
            assert got[key] == value
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_frozen_run_workdir_uses_its_towers_or_its_cached_features(config_mode, tmp_path):
    """A frozen_encoder run's towers are those of its config.seed: the same features as
    --config; a features cache the run wrote is used as it is."""
    config = _config(**{"train.mode": "frozen_encoder"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config.to_json_best_effort(indent=2))
    dataset = load_dataset(config.data, seed=config.seed)
    splits = load_splits(config.data, dataset)
    WordTokenizer.from_texts([dataset.texts[i] for i in splits.train]).save(
        run / "tokenizer.json")
    out = tmp_path / "frozen.npz"
    done = _encode(f"--workdir={run}", f"--features={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"the frozen towers of run {run}" in done.stdout
    with np.load(out) as mine, np.load(config_mode[0]) as theirs:
        for key in FEATURE_KEYS:
            np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-5, atol=1e-5)

    loaded = inference.load_config(str(run))
    cache = run / f"features-{features.features_fingerprint(loaded, 64)}.npz"
    fake = {"image_features": np.arange(64 * 3, dtype=np.float32).reshape(64, 3),
            "text_features": np.ones((64, 5), np.float32)}
    np.savez(cache, **fake)
    done = _encode(f"--workdir={run}", f"--features={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "using the run's cached tower features" in done.stderr
    with np.load(out) as mine:
        np.testing.assert_array_equal(mine["I_te"], fake["image_features"][splits.query])
        assert mine["T_tr"].shape == (48, 5)


def test_end_to_end_run_workdir_writes_its_trained_towers_features(tmp_path_factory, tmp_path):
    run = tiny_trained_run(tmp_path_factory)
    out = tmp_path / "trained.mat"
    done = _encode(f"--workdir={run}", f"--features={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "checkpoint step 8" in done.stdout and "(mat)" in done.stdout
    stored = feature_arrays(read_feature_file(out))
    trained = inference.TrainedModel.load(run)
    config = trained.config
    model = build.build_model(config, trained.tokenizer.vocab_size, with_encoders=True,
                              seed=config.seed)
    nnx.update(model, trained.params)
    dataset, computed = _direct_features(config, model, trained.tokenizer)
    splits = load_splits(config.data, dataset)
    assert stored["I_tr"].shape == (224, config.model.feature_dim)
    _check_rows(stored, dataset, splits, computed)
    # the run's hash heads on these features give the run's codes of the database items
    codes = trained.encode_rows("image", {"images": dataset.images}, splits.database)
    from_features = np.asarray(sign_pm(model.hash_image(stored["I_tr"])))
    assert np.mean(codes != from_features) < 0.005


@pytest.mark.parametrize(
    "args,message",
    [
        (["--features=x.txt", *CONFIG_FLAGS], "--features='x.txt' must name a .npz or .mat"),
        (["--features=x.npz"], "pass exactly one of --workdir=RUN"),
        (["--features=x.npz", "--workdir=nowhere", *CONFIG_FLAGS], "pass exactly one of"),
        (["--features=x.npz", "--workdir=nowhere"], "nowhere' is not a training workdir"),
        (["--features=x.npz", "--mat73", *CONFIG_FLAGS], "--mat73 writes MATLAB v7.3 .mat"),
        (["--features=x.npz", "--split=query", *CONFIG_FLAGS], "--split is for code databases"),
        (["--features=x.npz", "--step=3", *CONFIG_FLAGS], "--step picks a checkpoint"),
        (["--handcrafted", "--workdir=nowhere"], "--handcrafted goes with --features"),
        (["--features=x.npz", *CONFIG_FLAGS, "--config.data.features=handcrafted"],
         "pass --handcrafted to write those, or --config.data.features=''"),
        (["--features=x.npz", *CONFIG_FLAGS, "--config.data.features=f.mat"],
         "already is a feature file"),
        (["--features=x.npz", "--handcrafted", "--step=2", *CONFIG_FLAGS],
         "--handcrafted uses no towers"),
        ([], "pass --workdir=RUN"),
    ],
)
def test_user_mistakes_are_one_line_with_status_2(tmp_path, args, message):
    done = _encode(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not os.listdir(tmp_path)
