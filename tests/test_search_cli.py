"""launch/encode.py and launch/search.py on a trained tiny run, through subprocesses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_inference import evaluation_codes, tiny_trained_run

from fjsph_jax import code_database, inference

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(script, *args, cwd):
    command = [sys.executable, os.path.join(REPO_ROOT, "launch", script), *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # cwd is not the repo root: the scripts work from anywhere
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=str(cwd)
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def encoded(run, tmp_path_factory):
    """The database split encoded by the CLI (both modalities)."""
    out = tmp_path_factory.mktemp("cli") / "codes"
    done = _launch(
        "encode.py",
        f"--workdir={run}",
        "--split=database",
        "--modality=both",
        f"--out={out}",
        cwd=out.parent,
    )
    assert done.returncode == 0, done.stderr
    assert f"to {out}" in done.stdout
    return str(out)


def test_cli_codes_equal_evaluation_codes(run, encoded, tmp_path):
    database = code_database.CodeDatabase.load(encoded)
    meta = database.metadata
    assert meta["split"] == "database" and meta["bits"] == 16 and meta["checkpoint_step"] == 8
    assert meta["source_workdir"] == os.path.abspath(run)
    model = inference.TrainedModel.load(run)
    dataset, image, text = evaluation_codes(model.config, str(tmp_path), model.params, database.ids)
    assert len(database) == 224 and np.all(np.diff(database.ids) > 0)
    np.testing.assert_array_equal(database.codes("image"), image)
    np.testing.assert_array_equal(database.codes("text"), text)
    assert database.texts == [dataset.texts[i] for i in database.ids]
    np.testing.assert_array_equal(database.labels, dataset.labels[database.ids])
    assert database.label_names == dataset.label_names and database.image_paths is None

    # an image query (a database item saved as PNG) through the library: its own image
    # code is at distance 0; the default target for an image query is the text codes
    row = 11
    path = tmp_path / "query.png"
    Image.fromarray(dataset.images[database.ids[row]]).save(path)
    against, hits = code_database.search_text_or_image(
        database, model, image=str(path), against="image", k=len(database)
    )
    assert against == "image" and hits[0].distance == 0
    assert database.ids[row] in [h.id for h in hits if h.distance == 0]
    against, hits = code_database.search_text_or_image(database, model, image=str(path), k=3)
    assert against == "text" and len(hits) == 3


def test_cli_text_search_finds_the_item_at_distance_zero(encoded):
    database = code_database.CodeDatabase.load(encoded)
    row = 5
    query = database.texts[row]
    done = _launch(
        "search.py",
        f"--index={encoded}",
        f"--text={query}",
        "--against=text",
        f"--k={len(database)}",
        "--json",
        cwd=os.path.dirname(encoded),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["against"] == "text" and result["query"] == query
    hits = result["hits"]
    assert [h["rank"] for h in hits] == list(range(1, len(database) + 1))
    distances = [h["distance"] for h in hits]
    assert distances == sorted(distances) and distances[0] == 0
    item = database.ids[row]
    assert item in [h["id"] for h in hits if h["distance"] == 0]
    mine = next(h for h in hits if h["id"] == item)
    assert mine["text"] == query
    assert mine["labels"] == [n for n, on in zip(database.label_names, database.labels[row]) if on]
    # the same hits as the library's search with the database's own text code
    codes = database.codes("text")[row : row + 1]
    expected = database.search(codes, against="text", k=len(database))[0]
    assert [(h["id"], h["distance"]) for h in hits] == [(h.id, h.distance) for h in expected]


def test_cli_errors_exit_with_status_2(tmp_path):
    done = _launch("search.py", f"--index={tmp_path}", "--text=a dog", cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a code database" in done.stderr and "launch/encode.py" in done.stderr
