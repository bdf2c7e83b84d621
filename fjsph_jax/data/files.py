"""The files a user downloaded, seen as one tree: a directory plus the zip archives in it.

Users hold datasets extracted or still zipped (``mirflickr25k.zip`` next to an extracted
annotations folder, say). :class:`SourceFiles` indexes both once: every file under the
directory (up to ``MAX_DEPTH`` levels, hidden folders skipped) and every member of each
``*.zip`` directly inside it, by a POSIX path relative to the directory (a zip member
``mirflickr/im1.jpg`` of ``mirflickr25k.zip`` is ``mirflickr/im1.jpg``; files on disk
take precedence over zip members of the same path). Layout readers find files by path,
by basename or by a regular expression, and read bytes without extracting anything.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import threading
import zipfile
from typing import Iterable

MAX_DEPTH = 6  # directory levels indexed below the root
_SKIP_DIRS = ("fjsph_tfds",)  # our own build cache, if a user puts it under manual_dir


class MissingFilesError(FileNotFoundError):
    """Files a layout needs are absent; the message names them and where they were sought."""


class NotUtf8Error(ValueError):
    """A text file (or text argument) is not valid UTF-8; the message names where."""


UTF8_FIX = ("re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, with the "
            "file's real encoding after -f)")


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); :class:`NotUtf8Error`
    naming ``where``, the line, the byte and the fix for the first undecodable byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start:error.end]
        raise NotUtf8Error(
            f"{where} is not UTF-8 text: line {line} has the byte(s) {bad!r} "
            f"(offset {error.start}); {UTF8_FIX}") from None


def check_utf8_text(text: str, where: str) -> str:
    """``text`` unchanged if it is proper Unicode; :class:`NotUtf8Error` naming ``where`` if
    it holds bytes that were not UTF-8 (Python keeps them in argv / file names as surrogate
    escapes, which would otherwise fail later, far from their source)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise NotUtf8Error(
            f"{where} is not UTF-8 text (undecodable byte at character {error.start}); pass "
            "UTF-8, e.g. from a terminal whose locale is UTF-8 (LANG=C.UTF-8)") from None
    return text


class SourceFiles:
    """Read-only index over ``root`` (a directory) and the zip archives directly in it."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise MissingFilesError(f"directory {self.root!r} does not exist")
        self._entries: dict[str, tuple[str, str | None]] = {}  # rel path -> (file, member)
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._lock = threading.Lock()
        self._index_directory()
        self._index_zips()
        self._by_basename: dict[str, list[str]] = collections.defaultdict(list)
        for rel in sorted(self._entries):
            self._by_basename[rel.rsplit("/", 1)[-1]].append(rel)

    def _index_directory(self) -> None:
        root_depth = self.root.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            depth = dirpath.rstrip(os.sep).count(os.sep) - root_depth
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and d not in _SKIP_DIRS and depth < MAX_DEPTH
            ]
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                self._entries[rel] = (os.path.join(dirpath, name), None)

    def _index_zips(self) -> None:
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if not name.lower().endswith(".zip") or not os.path.isfile(path):
                continue
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as error:
                raise ValueError(
                    f"{path!r} is not a readable zip archive ({error}); download it again"
                ) from error
            self._zips[path] = archive
            for member in archive.namelist():
                if member.endswith("/") or member.startswith("__MACOSX/"):
                    continue
                self._entries.setdefault(member, (path, member))

    # ---- lookups ---------------------------------------------------------------
    def __contains__(self, rel: str) -> bool:
        return rel in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        """Every indexed relative path, sorted."""
        return sorted(self._entries)

    def by_basename(self, basename: str) -> list[str]:
        """Relative paths whose last component is ``basename`` (sorted)."""
        return list(self._by_basename.get(basename, ()))

    def find_one(self, basenames: Iterable[str]) -> str | None:
        """The shallowest path whose basename is one of ``basenames`` (first name wins a tie)."""
        candidates = [
            (rel.count("/"), order, rel)
            for order, name in enumerate(basenames)
            for rel in self._by_basename.get(name, ())
        ]
        return min(candidates)[2] if candidates else None

    def matching(self, pattern: str | re.Pattern) -> list[tuple[str, re.Match]]:
        """``(path, match)`` for every path that ``pattern`` matches with ``re.search``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        found = []
        for rel in self.paths():
            match = regex.search(rel)
            if match:
                found.append((rel, match))
        return found

    def describe(self, rel: str) -> str:
        """Where ``rel`` lives, for messages: an absolute path or ``archive.zip:member``."""
        if rel not in self._entries:
            return os.path.join(self.root, rel)
        path, member = self._entries[rel]
        return path if member is None else f"{path}:{member}"

    def local_path(self, rel: str) -> str | None:
        """Absolute path of ``rel`` if it is a file on disk (not inside a zip), else None."""
        path, member = self._entries.get(rel, (None, None))
        return path if path is not None and member is None else None

    # ---- reading ---------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """Bytes of ``rel``; MissingFilesError naming it if it is not indexed."""
        if rel not in self._entries:
            raise MissingFilesError(f"{os.path.join(self.root, rel)!r} does not exist")
        path, member = self._entries[rel]
        if member is None:
            with open(path, "rb") as f:
                return f.read()
        with self._lock:  # one archive handle is shared by the reader threads
            return self._zips[path].read(member)

    def read_text(self, rel: str) -> str:
        """``rel`` decoded as UTF-8, newlines normalised; :class:`NotUtf8Error` naming the
        file and line if it is not UTF-8 (nothing is replaced or dropped in silence)."""
        return decode_utf8(self.read_bytes(rel), self.describe(rel)).replace("\r\n", "\n")

    def read_lines(self, rel: str) -> list[str]:
        """Lines of ``rel`` without their line endings (a final empty line is dropped)."""
        text = self.read_text(rel)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    def fingerprint(self, rels: Iterable[str]) -> str:
        """A short hash of the paths, sizes and modification times of ``rels``."""
        digest = hashlib.sha256()
        for rel in sorted(set(rels)):
            path, member = self._entries[rel]
            if member is None:
                stat = os.stat(path)
                digest.update(f"{rel}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            else:
                info = self._zips[path].getinfo(member)
                digest.update(f"{rel}|{info.file_size}|{info.CRC}\n".encode())
        return digest.hexdigest()[:12]

    def close(self) -> None:
        for archive in self._zips.values():
            archive.close()
        self._zips.clear()


def require(files: SourceFiles, rels: dict[str, str | None], *, instructions: str) -> None:
    """Raise MissingFilesError if any value of ``rels`` (what -> path or None) is missing.

    The message lists each missing file by what it is, where it was sought, and ends with
    ``instructions`` (what to download and where to put it).
    """
    missing = [
        what if rel is None else f"{what} ({rel})"
        for what, rel in rels.items()
        if rel is None or rel not in files
    ]
    if missing:
        raise MissingFilesError(
            f"missing under {files.root!r}: {', '.join(missing)}.\n{instructions.strip()}"
        )
