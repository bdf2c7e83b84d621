"""Tests for fjsph_jax.data.files: one index over a directory and the zips in it."""

import os
import zipfile

import pytest

from fjsph_jax.data.files import MissingFilesError, SourceFiles, require


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("on disk\nline 2\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "y.txt").write_text("hidden")
    with zipfile.ZipFile(tmp_path / "pack.zip", "w") as z:
        z.writestr("inner/y.txt", "from zip\r\n")
        z.writestr("a/x.txt", "shadowed by the file on disk")
        z.writestr("inner/", "")
    return tmp_path


def test_directory_and_zip_members_share_one_index(tree):
    files = SourceFiles(str(tree))
    assert files.paths() == ["a/x.txt", "inner/y.txt", "pack.zip"]
    assert files.read_text("a/x.txt") == "on disk\nline 2\n"  # the disk file wins
    assert files.read_lines("inner/y.txt") == ["from zip"]
    assert files.by_basename("y.txt") == ["inner/y.txt"]
    assert files.find_one(["nope.txt", "x.txt"]) == "a/x.txt"
    assert [p for p, _ in files.matching(r"(^|/)y\.txt$")] == ["inner/y.txt"]
    assert files.describe("inner/y.txt") == os.path.join(str(tree), "pack.zip") + ":inner/y.txt"
    assert files.local_path("a/x.txt") == os.path.join(str(tree), "a", "x.txt")
    assert files.local_path("inner/y.txt") is None


def test_fingerprint_changes_with_content(tree):
    before = SourceFiles(str(tree)).fingerprint(["a/x.txt", "inner/y.txt"])
    (tree / "a" / "x.txt").write_text("changed, and longer than before")
    assert SourceFiles(str(tree)).fingerprint(["a/x.txt", "inner/y.txt"]) != before


def test_missing_files_are_named(tree):
    files = SourceFiles(str(tree))
    with pytest.raises(MissingFilesError, match=r"(?s)labels \(all_labels.txt\).*Download it"):
        require(
            files, {"images": "a/x.txt", "labels": "all_labels.txt"}, instructions="Download it"
        )
    with pytest.raises(MissingFilesError, match="nothing.txt"):
        files.read_bytes("nothing.txt")
    with pytest.raises(MissingFilesError, match="does not exist"):
        SourceFiles(str(tree / "absent"))
