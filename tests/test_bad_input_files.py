"""Bad input files: text that is not UTF-8 is refused naming the file and line (never
replaced in silence), skipped rows are named in the WARNING (the first few, then the
count), label values name their line, and a checkpoint whose reader package is missing
names the file and the `pip install`.

The dataset cases damage a 40-row copy of the real MIRFlickr mini dataset
(/work/shared/data/mirflickr25k-mini) when it is there, else of generated rows.
"""
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from fjsph_jax import cli
from fjsph_jax.data import layouts, mirflickr, testing
from fjsph_jax.data.files import NotUtf8Error, SourceFiles

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = "/work/shared/data/mirflickr25k-mini"
ROWS = 40


@pytest.fixture
def text_files(tmp_path):
    """A MIRFlickr text-file layout of ``ROWS`` rows under ``tmp_path / "src"``."""
    src = tmp_path / "src"
    if os.path.isdir(MINI):
        (src / "mirflickr").mkdir(parents=True)
        for name in ("all_imgs.txt", "all_tags.txt", "all_labels.txt", "label_names.txt"):
            with open(os.path.join(MINI, name), "rb") as f:
                lines = f.read().split(b"\n")
            (src / name).write_bytes(b"\n".join(lines[:ROWS if name != "label_names.txt"
                                                      else None]) + b"\n")
        for path in (src / "all_imgs.txt").read_text().split():
            shutil.copy(os.path.join(MINI, path), src / path)
    else:
        testing.write_text_files(str(src), testing.make_rows(ROWS, 24, seed=3))
    return src


def _read(src):
    """Reads and cleans the layout under ``src``: (kept rows, report)."""
    files = SourceFiles(src)
    layout, found = layouts.detect_layout(files, mirflickr.LAYOUTS, instructions="")
    pairs = layout.read(files, found, layouts.ReadOptions(), mirflickr.default_label_names)
    kept, report = layouts.clean_items(pairs, workers=2)
    return list(kept), report


def _set_line(path, number, content: bytes):
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = content
    path.write_bytes(b"\n".join(lines))


def test_tags_that_are_not_utf8_are_refused_naming_file_and_line(text_files):
    _set_line(text_files / "all_tags.txt", 7, b"caf\xe9,plage")  # Latin-1, not UTF-8
    with pytest.raises(NotUtf8Error) as error:
        _read(text_files)
    line = cli.one_line(error.value)
    assert "all_tags.txt is not UTF-8 text: line 7 has the byte(s) b'\\xe9'" in line
    assert "iconv" in line and isinstance(error.value, cli.user_errors())


def test_a_search_query_that_is_not_utf8_is_refused_on_the_command_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("FJSPH_TRACEBACK", None)
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "search.py"),
                           f"--index={tmp_path}", b"--text=caf\xe9"],
                          capture_output=True, env=env, timeout=300, cwd=str(tmp_path))
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 2, stderr[-2000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: NotUtf8Error: --text is not UTF-8 text")
    assert "LANG=C.UTF-8" in line and "Traceback" not in stderr


def test_skipped_rows_are_named_in_the_warning(text_files, caplog):
    paths = (text_files / "all_imgs.txt").read_text().split()
    for path in paths[:7]:  # 7 missing images: 5 named, "and 2 more"
        os.remove(text_files / path)
    (text_files / paths[8]).write_bytes(b"not a jpeg")
    _set_line(text_files / "all_tags.txt", 10, b" ")  # row 10: empty text
    _set_line(text_files / "all_labels.txt", 11, b" ".join([b"0"] * 24))  # no label
    with caplog.at_level(logging.WARNING):
        kept, report = _read(text_files)
    warnings = {r.getMessage().split(": ")[2].split(" (")[0]: r.getMessage()
                for r in caplog.records if "skipped" in r.getMessage()}
    missing = warnings[layouts.SKIP_MISSING_IMAGE]
    assert f"skipped 7 of {ROWS} rows" in missing and missing.endswith(", and 2 more)")
    assert all(p in missing for p in paths[:5]) and paths[5] not in missing
    assert paths[8] in warnings[layouts.SKIP_UNREADABLE_IMAGE]
    stem = lambda path: os.path.splitext(os.path.basename(path))[0]  # noqa: E731
    assert warnings[layouts.SKIP_EMPTY_TEXT].endswith(f"({stem(paths[9])})")
    assert warnings[layouts.SKIP_NO_LABEL].endswith(f"({stem(paths[10])})")
    assert len(kept) == report.kept == ROWS - sum(report.skipped.values())


@pytest.mark.parametrize("content, expected", [
    (b"0 1 2" + b" 0" * 21, "all_labels.txt line 5: labels must be 0/1 (multi-hot), found "
                           "the value 2"),
    (b"0 1 x" + b" 0" * 21, "all_labels.txt line 5: not numbers"),
    (b"0 1", "all_labels.txt line 5 has 2 values, line 1 has 24"),
])
def test_label_values_name_their_line(text_files, content, expected):
    _set_line(text_files / "all_labels.txt", 5, content)
    with pytest.raises(ValueError, match=re.escape(expected)):
        _read(text_files)


def test_a_concept_list_line_that_is_not_a_number_is_named(tmp_path):
    testing.write_mirflickr_official(str(tmp_path / "src"), testing.make_rows(4, 24),
                                     mirflickr.CONCEPTS, zipped=False)
    (concept,) = [p for p in (tmp_path / "src").rglob("dog.txt")]
    concept.write_text("1\nim2\n")
    with pytest.raises(ValueError, match=r"dog.txt line 2: 'im2' is not an image number"):
        _read(tmp_path / "src")


@pytest.mark.parametrize("suffix, module, install", [
    (".safetensors", "safetensors", "pip install safetensors"),
    (".pt", "torch", "pip install 'fjsph-jax[torch]'"),
])
def test_a_checkpoint_whose_reader_is_not_installed(tmp_path, monkeypatch, suffix, module,
                                                    install):
    from fjsph_jax import weights

    path = tmp_path / f"clip{suffix}"
    path.write_bytes(b"\0" * 64)
    for name in list(sys.modules):  # the import fails as if the package were absent
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(weights.CheckpointFormatError) as error:
        weights.load_towers(str(path))
    line = cli.one_line(error.value)
    assert str(path) in line and install in line and "not installed" in line
    assert isinstance(error.value, cli.user_errors())  # one line, exit status 2
