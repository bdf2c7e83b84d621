"""The file layouts the cross-modal hashing baselines ship, read into :class:`SourcePairs`.

A *layout* is a set of files that together describe N image-text-label rows. The readers
here are shared by the datasets (MIRFlickr-25K, NUS-WIDE, MS-COCO); each dataset module
adds its official layout and names the layouts it accepts, in detection order:

* :class:`TextFilesLayout` (MITH / DCHMT "cleaned" release): ``all_imgs.txt`` (an image
  path per line), ``all_tags.txt`` (comma-separated tags; the text is the tags joined by
  spaces) or ``all_txts.txt`` (COCO: ``;``-separated sentences), ``all_labels.txt``
  (space-separated 0/1 per label), optionally ``label_names.txt``.
* :class:`IndexMatLayout` (DCHMT / MITH ``.mat``): ``index.mat`` (key ``index``: image
  paths, absolute paths of the machine that wrote them, resolved under the image root),
  ``caption.mat`` (key ``caption``: a string per row, or a cell of captions per row) or
  ``caption.txt`` (a line per row), ``label.mat`` (key ``category`` in DCHMT's files,
  ``label`` in MITH's; ``[N, C]``).
* :class:`DcmhMatLayout` (DCMH and its successors): ``<prefix>-iall.mat`` (``IAll``, the
  images as a 4-D uint8 stack, MATLAB ``[H, W, 3, N]``), ``<prefix>-yall.mat`` (``YAll``,
  bag-of-words ``[N, D]`` over the tag vocabulary) and ``<prefix>-lall.mat`` (``LAll``,
  ``[N, C]``), v5 or v7.3. The text is the vocabulary words of the non-zero columns,
  read from a vocabulary file if one is present (``TagList.txt``, ``common_tags.txt``
  ...), else the tokens ``tag<j>``.

Reading a layout checks that its files agree on the row count (ValueError naming the files
otherwise); it does not decode images. :func:`clean_items` then drops, with a count per
reason, rows with an empty text, no positive label, or a missing or unreadable image.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from fjsph_jax.data import images as images_lib
from fjsph_jax.data.files import MissingFilesError, SourceFiles
from fjsph_jax.data.matfiles import ImageStack, MatFile

# Reasons a source row is not kept (the keys of the skip counts).
SKIP_EMPTY_TEXT = "empty text"
SKIP_NO_LABEL = "no positive label"
SKIP_MISSING_IMAGE = "image file missing"
SKIP_UNREADABLE_IMAGE = "unreadable or corrupt image"
SKIPS_NAMED = 5  # the WARNING of a skip reason names this many rows, then the count

VOCABULARY_FILES = (
    "TagList.txt",
    "TagList1k.txt",
    "tag_list.txt",
    "vocabulary.txt",
    "tag_names.txt",
    "common_tags.txt",
)


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """One source row before cleaning.

    Attributes:
      key: a stable id of the row in the source, e.g. ``"im17"`` or ``"row 16"``.
      captions: the row's texts (one for tag datasets, several for COCO).
      labels: uint8 multi-hot ``[C]``.
      read_image: returns the encoded image bytes; raises FileNotFoundError if missing.
      image_name: the image as messages name it.
    """

    key: str
    captions: tuple[str, ...]
    labels: np.ndarray
    read_image: Callable[[], bytes]
    image_name: str


@dataclasses.dataclass
class SourcePairs:
    """The rows of one layout, in source order, and what reading them skipped."""

    layout: str
    label_names: list[str]
    items: list[SourceItem]
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, name: str) -> None:
        """Counts a row dropped while reading the layout, and remembers the first names."""
        count_skip(self.skipped, self.skipped_names, reason, name)


def count_skip(skipped: collections.Counter, names: dict[str, list[str]], reason: str,
               name: str) -> None:
    """``skipped[reason] += 1``; ``name`` kept in ``names[reason]`` while it holds fewer
    than :data:`SKIPS_NAMED` names (what the skip WARNING lists)."""
    skipped[reason] += 1
    listed = names.setdefault(reason, [])
    if len(listed) < SKIPS_NAMED:
        listed.append(name)


def describe_skips(layout: str, source_rows: int, skipped: collections.Counter,
                   names: dict[str, list[str]]) -> list[str]:
    """One line per skip reason: the count, the reason, the first rows by name and how many
    more, e.g. ``text_files: skipped 7 of 40 rows: image file missing (im3.jpg, ..., and 2
    more)``."""
    lines = []
    for reason, count in sorted(skipped.items()):
        listed = names.get(reason, [])[:SKIPS_NAMED]
        rest = count - len(listed)
        which = ", ".join(listed) + (f", and {rest} more" if rest and listed else "")
        lines.append(f"{layout}: skipped {count} of {source_rows} rows: {reason}"
                     + (f" ({which})" if which else ""))
    return lines


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What a build may vary; part of the built dataset's identity.

    Attributes:
      image_root: where image paths are resolved ("" = the manual dir).
      min_tag_count: official MIRFlickr cleaning: a tag is frequent if it occurs on at
        least this many images (20 in the standard protocol, giving 1,386 tags).
    """

    image_root: str = ""
    min_tag_count: int = 20


class Layout:
    """A file layout: ``detect`` finds its files, ``read`` parses them into SourcePairs."""

    name = "layout"
    description = ""

    def detect(self, files: SourceFiles) -> list[str] | None:
        """The relative paths of this layout's metadata files, or None if incomplete."""
        raise NotImplementedError

    def missing(self, files: SourceFiles) -> list[str] | None:
        """If some but not all of this layout's files are present, the missing ones."""
        return None

    def read(
        self,
        files: SourceFiles,
        found: list[str],
        options: ReadOptions,
        default_label_names: Callable[[int], list[str]],
    ) -> SourcePairs:
        raise NotImplementedError


def missing_in_folder(files: SourceFiles, groups: Sequence[Sequence[str]]) -> list[str] | None:
    """For file groups (each: alternative names) that must sit in one folder: None if no
    group is present at all, else the groups absent from the folder of the first present."""
    anchor = files.find_one([name for group in groups for name in group])
    if anchor is None:
        return None
    folder = anchor.rsplit("/", 1)[0] + "/" if "/" in anchor else ""
    absent = [
        " or ".join(folder + n for n in group)
        for group in groups
        if not any(folder + n in files for n in group)
    ]
    return absent or None


# ---- helpers ---------------------------------------------------------------------------
def check_row_counts(counts: dict[str, int]) -> None:
    """ValueError naming every file and its row count unless all counts agree."""
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}: {n} rows" for name, n in counts.items())
        raise ValueError(
            f"row counts disagree ({detail}); the files must describe the same "
            "items line by line. Re-download or regenerate the mismatching file."
        )


def to_label_rows(values: np.ndarray, where: str) -> np.ndarray:
    """A numeric ``[N, C]`` array of 0/1 -> uint8; ValueError naming ``where`` otherwise."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{where}: labels must be a 2-D [N, C] array, got shape {values.shape}")
    if values.size and not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))].reshape(-1)[0]
        raise ValueError(f"{where}: labels must be 0/1 (multi-hot), found the value {bad!r}")
    return values.astype(np.uint8)


def parse_label_lines(lines: Sequence[str], where: str) -> np.ndarray:
    """Lines of whitespace-separated 0/1 values -> uint8 ``[N, C]`` (errors name the line)."""
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append([float(v) for v in line.replace(",", " ").split()])
        except ValueError as error:
            raise ValueError(f"{where} line {number}: not numbers ({line[:60]!r})") from error
        if rows[-1] and len(rows[-1]) != len(rows[0]):
            raise ValueError(
                f"{where} line {number} has {len(rows[-1])} values, line 1 has "
                f"{len(rows[0])}; every line needs one value per label"
            )
        bad = next((v for v in rows[-1] if v not in (0.0, 1.0)), None)
        if bad is not None:
            raise ValueError(
                f"{where} line {number}: labels must be 0/1 (multi-hot), found the value "
                f"{bad:g} in {line[:60]!r}; fix that line (one 0/1 value per label)")
    return to_label_rows(np.array(rows, dtype=np.float64).reshape(len(rows), -1), where)


def read_label_names(
    files: SourceFiles, near: str, num_classes: int, default: Callable[[int], list[str]]
) -> list[str]:
    """``label_names.txt`` next to ``near`` if it has ``num_classes`` lines, else ``default``."""
    folder = near.rsplit("/", 1)[0] + "/" if "/" in near else ""
    candidate = folder + "label_names.txt"
    if candidate in files:
        names = [line.strip() for line in files.read_lines(candidate) if line.strip()]
        if len(names) == num_classes:
            return names
        logging.warning(
            "%s has %d names but the labels have %d columns; ignoring it",
            files.describe(candidate),
            len(names),
            num_classes,
        )
    return default(num_classes)


def join_tags(tags: Sequence[str]) -> str:
    """Tags -> the text modality: stripped, empty ones dropped, joined by single spaces."""
    return " ".join(t for t in (tag.strip() for tag in tags) if t)


def generic_label_names(num_classes: int) -> list[str]:
    return [f"label_{c}" for c in range(num_classes)]


class ImageResolver:
    """Finds the image a layout names (a relative path, or an absolute path from another
    machine) among the indexed files of the image root and of the manual dir.

    A path ``a/b/c/im1.jpg`` is tried as ``a/b/c/im1.jpg``, ``b/c/im1.jpg``, ``c/im1.jpg``,
    ``im1.jpg`` under each tree, then by a unique basename anywhere in the trees.
    """

    def __init__(self, trees: Sequence[SourceFiles], anchor: str = ""):
        self.trees = list(trees)
        self.anchor = anchor  # folder of the file that lists the images (relative)

    def resolve(self, path: str) -> tuple[SourceFiles, str] | None:
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            return None
        for tree in self.trees:
            if self.anchor:
                rel = f"{self.anchor}/{'/'.join(parts)}"
                if rel in tree:
                    return tree, rel
            for start in range(len(parts)):
                rel = "/".join(parts[start:])
                if rel in tree:
                    return tree, rel
        for tree in self.trees:
            matches = tree.by_basename(parts[-1])
            if len(matches) == 1:
                return tree, matches[0]
        return None

    def reader(self, path: str) -> tuple[Callable[[], bytes], str]:
        """``(read_image, name)``; ``read_image`` raises FileNotFoundError if unresolved."""
        found = self.resolve(path)
        if found is None:

            def missing() -> bytes:
                raise FileNotFoundError(path)

            return missing, path
        tree, rel = found
        return (lambda: tree.read_bytes(rel)), tree.describe(rel)


def image_trees(files: SourceFiles, options: ReadOptions) -> list[SourceFiles]:
    """The trees images are sought in: the image root (if given) first, then the manual dir."""
    root = options.image_root
    if root and os.path.abspath(root) != files.root:
        if not os.path.isdir(root):
            raise MissingFilesError(
                f"image root {root!r} does not exist; pass the folder that "
                "holds the images (--image_root / config.data.image_root)"
            )
        return [SourceFiles(root), files]
    return [files]


def check_some_images_resolve(resolver: ImageResolver, paths: Sequence[str], what: str) -> None:
    """MissingFilesError if none of the first images can be found (a wrong image root)."""
    probe = paths[:50]
    if probe and all(resolver.resolve(p) is None for p in probe):
        roots = ", ".join(repr(t.root) for t in resolver.trees)
        raise MissingFilesError(
            f"none of the first {len(probe)} images listed in {what} was found under {roots} "
            f"(first: {paths[0]!r}). Point --image_root / config.data.image_root at the folder "
            "that holds the image files."
        )


# ---- cleaned text files (MITH / DCHMT releases) ---------------------------------------
class TextFilesLayout(Layout):
    name = "text_files"
    description = (
        "all_imgs.txt + all_tags.txt (or all_txts.txt) + all_labels.txt "
        "[+ label_names.txt] (the cleaned MITH / DCHMT text-file release)"
    )

    def detect(self, files):
        imgs = files.find_one(["all_imgs.txt"])
        if imgs is None:
            return None
        folder = imgs.rsplit("/", 1)[0] + "/" if "/" in imgs else ""
        texts = next(
            (folder + n for n in ("all_tags.txt", "all_txts.txt") if folder + n in files), None
        )
        labels = folder + "all_labels.txt"
        if texts is None or labels not in files:
            return None
        return [imgs, texts, labels] + (
            [folder + "label_names.txt"] if folder + "label_names.txt" in files else []
        )

    def missing(self, files):
        return missing_in_folder(
            files, [("all_imgs.txt",), ("all_tags.txt", "all_txts.txt"), ("all_labels.txt",)]
        )

    def read(self, files, found, options, default_label_names):
        imgs_rel, texts_rel, labels_rel = found[:3]
        paths = [line.strip() for line in files.read_lines(imgs_rel)]
        text_lines = files.read_lines(texts_rel)
        label_lines = files.read_lines(labels_rel)
        check_row_counts(
            {
                files.describe(imgs_rel): len(paths),
                files.describe(texts_rel): len(text_lines),
                files.describe(labels_rel): len(label_lines),
            }
        )
        labels = parse_label_lines(label_lines, files.describe(labels_rel))
        sentences = texts_rel.endswith("all_txts.txt")
        anchor = imgs_rel.rsplit("/", 1)[0] if "/" in imgs_rel else ""
        resolver = ImageResolver(image_trees(files, options), anchor=anchor)
        check_some_images_resolve(resolver, paths, files.describe(imgs_rel))
        items = []
        for row, (path, line) in enumerate(zip(paths, text_lines)):
            if sentences:
                captions = tuple(s.strip() for s in line.split(";") if s.strip())
            else:
                captions = (join_tags(line.split(",")),)
            read_image, image_name = resolver.reader(path)
            key = path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or f"row {row}"
            items.append(SourceItem(key, captions, labels[row], read_image, image_name))
        names = read_label_names(files, imgs_rel, labels.shape[1], default_label_names)
        return SourcePairs(self.name, names, items)


# ---- DCHMT / MITH .mat files ----------------------------------------------------------
def _open_mat(files: SourceFiles, rel: str) -> MatFile:
    local = files.local_path(rel)
    return MatFile(local if local else files.read_bytes(rel), description=files.describe(rel))


class IndexMatLayout(Layout):
    name = "index_mat"
    description = (
        "index.mat + caption.mat (or caption.txt) + label.mat (the DCHMT / MITH "
        ".mat files; label key 'category' or 'label')"
    )
    label_keys = ("category", "label", "labels", "LAll")

    def detect(self, files):
        index = files.find_one(["index.mat"])
        if index is None:
            return None
        folder = index.rsplit("/", 1)[0] + "/" if "/" in index else ""
        caption = next(
            (folder + n for n in ("caption.mat", "caption.txt") if folder + n in files), None
        )
        label = folder + "label.mat"
        if caption is None or label not in files:
            return None
        return [index, caption, label]

    def missing(self, files):
        return missing_in_folder(
            files, [("index.mat",), ("caption.mat", "caption.txt"), ("label.mat",)]
        )

    def read(self, files, found, options, default_label_names):
        index_rel, caption_rel, label_rel = found
        with _open_mat(files, index_rel) as mat:
            paths = [row[0] if row else "" for row in mat.strings(mat.pick(["index", "indexs"]))]
        if caption_rel.endswith(".txt"):
            captions = [[line.strip()] for line in files.read_lines(caption_rel)]
        else:
            with _open_mat(files, caption_rel) as mat:
                captions = mat.strings(mat.pick(["caption", "captions"]))
        with _open_mat(files, label_rel) as mat:
            key = mat.pick(self.label_keys)
            labels = mat.array(key)
        labels = _rows_first(labels, len(paths))
        check_row_counts(
            {
                files.describe(index_rel): len(paths),
                files.describe(caption_rel): len(captions),
                f"{files.describe(label_rel)} ({key!r})": labels.shape[0],
            }
        )
        labels = to_label_rows(labels, files.describe(label_rel))
        resolver = ImageResolver(image_trees(files, options))
        check_some_images_resolve(resolver, paths, files.describe(index_rel))
        items = []
        for row, (path, texts) in enumerate(zip(paths, captions)):
            read_image, image_name = resolver.reader(path.strip())
            key = path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or f"row {row}"
            cleaned = tuple(t.strip() for t in texts if t.strip())
            items.append(SourceItem(key, cleaned, labels[row], read_image, image_name))
        names = read_label_names(files, index_rel, labels.shape[1], default_label_names)
        return SourcePairs(self.name, names, items)


def _rows_first(array: np.ndarray, num_rows: int) -> np.ndarray:
    """A 2-D ``[N, C]`` array, transposing ``[C, N]`` when only that orientation fits."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[0] != num_rows and array.shape[1] == num_rows:
        return array.T
    return array


# ---- DCMH-style IAll / YAll / LAll -----------------------------------------------------
class DcmhMatLayout(Layout):
    """``<prefix>-iall.mat``, ``-yall.mat``, ``-lall.mat``; ``prefixes`` in preference order."""

    name = "dcmh_mat"

    def __init__(self, prefixes: Sequence[str]):
        self.prefixes = tuple(prefixes)
        self.description = (
            " or ".join(f"{p}-iall.mat + {p}-yall.mat + {p}-lall.mat" for p in self.prefixes)
            + " (DCMH-style, MATLAB v5 or v7.3) [+ a tag vocabulary file]"
        )

    def detect(self, files):
        for prefix in self.prefixes:
            found = [files.find_one([f"{prefix}-{part}.mat"]) for part in ("iall", "yall", "lall")]
            if all(found):
                return found
        return None

    def missing(self, files):
        for prefix in self.prefixes:
            absent = missing_in_folder(
                files, [(f"{prefix}-{p}.mat",) for p in ("iall", "yall", "lall")]
            )
            if absent:
                return absent
        return None

    def prefix_of(self, found: list[str]) -> str:
        return found[0].rsplit("/", 1)[-1][: -len("-iall.mat")]

    def read(self, files, found, options, default_label_names):
        iall_rel, yall_rel, lall_rel = found
        with _open_mat(files, lall_rel) as mat:
            labels = mat.array(mat.pick(["LAll", "lall", "labels", "label"]))  # [N, C]
        with _open_mat(files, yall_rel) as mat:
            bow = mat.array(mat.pick(["YAll", "yall", "tags", "texts"]))  # [N, D]
        if labels.ndim != 2 or bow.ndim != 2:
            raise ValueError(
                f"{files.describe(lall_rel)} and {files.describe(yall_rel)} must hold "
                f"2-D arrays, got shapes {labels.shape} and {bow.shape}"
            )
        bow = _rows_first(bow, labels.shape[0])
        image_mat = _open_mat(files, iall_rel)  # kept open: images are read one at a time
        image_key = image_mat.pick(["IAll", "iall", "images", "imgs"])
        image_shape = image_mat.shape(image_key)
        image_rows = labels.shape[0] if labels.shape[0] in image_shape else image_shape[-1]
        check_row_counts(
            {
                f"{files.describe(iall_rel)} ({image_key}, MATLAB shape {image_shape})": image_rows,
                files.describe(yall_rel): bow.shape[0],
                files.describe(lall_rel): labels.shape[0],
            }
        )
        labels = to_label_rows(labels, files.describe(lall_rel))
        stack = image_mat.image_stack(image_key, labels.shape[0])
        vocabulary, note = _tag_vocabulary(files, yall_rel, bow.shape[1])
        items = []
        for row in range(labels.shape[0]):
            words = [vocabulary[j] for j in np.flatnonzero(bow[row])]
            items.append(
                SourceItem(
                    f"row {row}",
                    (" ".join(words),),
                    labels[row],
                    _stack_reader(stack, row),
                    f"{files.describe(iall_rel)}[{row}]",
                )
            )
        names = read_label_names(files, lall_rel, labels.shape[1], default_label_names)
        return SourcePairs(f"{self.name}:{self.prefix_of(found)}", names, items, notes=[note])


def _stack_reader(stack: ImageStack, row: int) -> Callable[[], bytes]:
    return lambda: images_lib.encode_jpeg(stack[row])


def _tag_vocabulary(files: SourceFiles, near: str, size: int) -> tuple[list[str], str]:
    """Words of the ``size`` bag-of-words columns: the first ``size`` entries (first column)
    of a vocabulary file if one has at least that many, else ``tag<j>``."""
    folder = near.rsplit("/", 1)[0] + "/" if "/" in near else ""
    candidates = [folder + n for n in VOCABULARY_FILES if folder + n in files]
    candidates += [r for n in VOCABULARY_FILES for r in files.by_basename(n) if r not in candidates]
    for rel in candidates:
        words = [line.split()[0] for line in files.read_lines(rel) if line.split()]
        if len(words) >= size:
            return words[:size], (
                f"text: bag-of-words columns named by the first {size} "
                f"entries of {files.describe(rel)}"
            )
    return [f"tag{j}" for j in range(size)], (
        f"text: no tag vocabulary file ({', '.join(VOCABULARY_FILES)}) with >= {size} entries "
        f"found; bag-of-words column j is written as the token 'tag<j>'"
    )


# ---- detection and cleaning -------------------------------------------------------------
def detect_layout(
    files: SourceFiles, layouts: Sequence[Layout], *, instructions: str
) -> tuple[Layout, list[str]]:
    """The first of ``layouts`` whose files are all under ``files``, and those files.

    Raises MissingFilesError listing every accepted layout and the download instructions.
    """
    for layout in layouts:
        found = layout.detect(files)
        if found:
            return layout, found
    accepted = "\n".join(f"  - {layout.description}" for layout in layouts)
    partial = [(layout, layout.missing(files)) for layout in layouts]
    partial = "".join(
        f"Part of the {layout.name} layout is there, but missing: {', '.join(absent)}.\n"
        for layout, absent in partial
        if absent
    )
    raise MissingFilesError(
        f"no complete dataset layout under {files.root!r} ({len(files)} files found).\n"
        f"{partial}Expected one of:\n{accepted}\n{instructions.strip()}"
    )


@dataclasses.dataclass
class CleanReport:
    """Counts of one build: rows read, kept, and skipped per reason."""

    layout: str
    source_rows: int
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, name: str) -> None:
        """Counts a dropped row; the first few names are kept for the WARNING."""
        count_skip(self.skipped, self.skipped_names, reason, name)

    def as_dict(self) -> dict:
        return {
            "layout": self.layout,
            "source_rows": self.source_rows,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
        }


def _load_checked_image(item: SourceItem) -> tuple[bytes | None, str | None]:
    try:
        return images_lib.as_jpeg(item.read_image()), None
    except FileNotFoundError:
        return None, SKIP_MISSING_IMAGE
    except images_lib.UnreadableImageError:
        return None, SKIP_UNREADABLE_IMAGE


def clean_items(
    pairs: SourcePairs, *, workers: int | None = None, chunk: int = 256
) -> tuple[Iterator[tuple[SourceItem, bytes]], CleanReport]:
    """Kept rows with their checked JPEG bytes, in source order, and the report that the
    iterator fills in as it runs (complete once it is exhausted).

    A row is skipped (and counted) if all its captions are empty, its label row has no
    positive, or its image is missing or cannot be decoded. Images are read and checked
    on ``workers`` threads (default: the CPU count).
    """
    report = CleanReport(
        pairs.layout,
        len(pairs.items) + sum(pairs.skipped.values()),
        skipped=collections.Counter(pairs.skipped),
        skipped_names={reason: list(names) for reason, names in pairs.skipped_names.items()},
    )
    workers = workers or os.cpu_count() or 1

    def generate():
        candidates = []
        for item in pairs.items:
            if not any(c.strip() for c in item.captions):
                report.skip(SKIP_EMPTY_TEXT, item.key)
            elif not item.labels.any():
                report.skip(SKIP_NO_LABEL, item.key)
            else:
                candidates.append(item)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(candidates), chunk):
                block = candidates[start : start + chunk]
                for item, (data, reason) in zip(block, pool.map(_load_checked_image, block)):
                    if reason is not None:
                        report.skip(reason, item.image_name)
                        logging.info("skipping %s: %s", item.image_name, reason)
                        continue
                    report.kept += 1
                    yield item, data
        for line in describe_skips(pairs.layout, report.source_rows, report.skipped,
                                   report.skipped_names):
            logging.warning("%s", line)

    return generate(), report
