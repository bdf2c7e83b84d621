"""MIRFlickr-25K (Huiskes & Lew, 2008): 25,000 Flickr images with tags and 24 concepts.

Accepted layouts, detected in this order from the files under the manual dir:

1. the cleaned text files (``all_imgs.txt``, ``all_tags.txt``, ``all_labels.txt``);
2. the DCHMT / MITH ``.mat`` files (``index.mat``, ``caption.mat``, ``label.mat``);
3. the DCMH-style ``mirflickr25k-iall.mat`` / ``-yall.mat`` / ``-lall.mat`` (v5 or v7.3);
4. the official release: ``mirflickr25k.zip`` (``mirflickr/imN.jpg``,
   ``mirflickr/meta/tags/tagsN.txt``) and ``mirflickr25k_annotations_v080.zip`` (one file
   per concept listing image numbers; ``*_r1.txt`` are the stricter "relevant" lists and
   are not used), zipped or extracted.

Cleaning of the official release (the protocol of DCMH and its successors):
labels are the 24 concept lists (not ``_r1``), columns in alphabetical order; a tag is
*frequent* if it occurs on at least ``min_tag_count`` = 20 of the 25,000 images (1,386
tags); an image is kept if it has at least one label and at least one frequent tag; its
text is its frequent tags in file order joined by spaces. This leaves 20,015 pairs.
"""

from __future__ import annotations

import collections
import re

import numpy as np

from fjsph_jax.data.layouts import (
    SKIP_NO_LABEL,
    DcmhMatLayout,
    IndexMatLayout,
    Layout,
    SourceItem,
    SourcePairs,
    TextFilesLayout,
    generic_label_names,
)

NAME = "mirflickr"
CONCEPTS = (
    "animals",
    "baby",
    "bird",
    "car",
    "clouds",
    "dog",
    "female",
    "flower",
    "food",
    "indoor",
    "lake",
    "male",
    "night",
    "people",
    "plant_life",
    "portrait",
    "river",
    "sea",
    "sky",
    "structures",
    "sunset",
    "transport",
    "tree",
    "water",
)
SKIP_NO_FREQUENT_TAG = "no frequent tag"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
MIRFlickr-25K: put ONE of these layouts in the manual dir (config.data.manual_dir or
prepare_data.py --manual_dir):
  a) the official release from https://press.liacs.nl/mirflickr/mirdownload.html:
     mirflickr25k.zip and mirflickr25k_annotations_v080.zip, zipped or extracted
     (mirflickr/im1.jpg ... im25000.jpg, mirflickr/meta/tags/tags1.txt ..., and the
     annotation lists animals.txt ... water.txt);
  b) the cleaned text files of MITH / DCHMT: all_imgs.txt, all_tags.txt, all_labels.txt
     (+ label_names.txt), with the images at the paths all_imgs.txt lists (relative to the
     manual dir or to --image_root);
  c) DCHMT / MITH .mat files: index.mat, caption.mat, label.mat, with the images under
     --image_root (the absolute paths inside index.mat are matched by their tail);
  d) DCMH-style mirflickr25k-iall.mat, mirflickr25k-yall.mat, mirflickr25k-lall.mat
     (optionally a tag vocabulary file such as common_tags.txt or TagList.txt).
See docs/datasets.md."""

_IMAGE = re.compile(r"(?:^|/)im(\d+)\.jpg$")
_TAGS = re.compile(r"(?:^|/)meta/tags/tags(\d+)\.txt$")
_CONCEPT = re.compile(r"(?:^|/)(" + "|".join(CONCEPTS) + r")\.txt$")


def default_label_names(num_classes: int) -> list[str]:
    """The 24 concepts in alphabetical (column) order, or ``label_<c>`` for another C."""
    return list(CONCEPTS) if num_classes == len(CONCEPTS) else generic_label_names(num_classes)


class OfficialLayout(Layout):
    """``mirflickr25k.zip`` + ``mirflickr25k_annotations_v080.zip`` (zipped or extracted)."""

    name = "official"
    description = (
        "mirflickr25k.zip + mirflickr25k_annotations_v080.zip, zipped or extracted "
        "(mirflickr/imN.jpg, mirflickr/meta/tags/tagsN.txt, <concept>.txt)"
    )

    def detect(self, files):
        concept_files = {}
        for rel, match in files.matching(_CONCEPT):
            concept_files.setdefault(match.group(1), rel)
        if len(concept_files) != len(CONCEPTS) or not files.matching(_TAGS)[:1]:
            return None
        return [concept_files[c] for c in CONCEPTS]

    def missing(self, files):
        concepts = {m.group(1) for _, m in files.matching(_CONCEPT)}
        has_tags = bool(files.matching(_TAGS)[:1])
        if not concepts and not has_tags:
            return None
        absent = [
            f"{c}.txt (mirflickr25k_annotations_v080.zip)" for c in CONCEPTS if c not in concepts
        ]
        if not has_tags:
            absent.append("mirflickr/meta/tags/tags<N>.txt (mirflickr25k.zip)")
        return absent or None

    def read(self, files, found, options, default_label_names):
        images = {int(m.group(1)): rel for rel, m in files.matching(_IMAGE)}
        tag_files = {int(m.group(1)): rel for rel, m in files.matching(_TAGS)}
        numbers = sorted(set(images) | set(tag_files))
        labels = np.zeros((max(numbers, default=0) + 1, len(CONCEPTS)), np.uint8)
        for column, rel in enumerate(found):
            for line_number, line in enumerate(files.read_lines(rel), start=1):
                if line.strip():
                    if not line.strip().isdigit():
                        raise ValueError(
                            f"{files.describe(rel)} line {line_number}: {line.strip()[:60]!r} "
                            "is not an image number; a concept list holds one number per line "
                            "(download mirflickr25k_annotations_v080.zip again)")
                    number = int(line.strip())
                    if number >= labels.shape[0]:
                        raise ValueError(
                            f"{files.describe(rel)} lists image {number}, but the "
                            f"images and tags go up to {labels.shape[0] - 1}"
                        )
                    labels[number, column] = 1
        tags = {
            n: _unique([t.strip() for t in files.read_lines(rel) if t.strip()])
            for n, rel in tag_files.items()
        }
        counts = collections.Counter(t for ts in tags.values() for t in ts)
        frequent = {t for t, c in counts.items() if c >= options.min_tag_count}
        pairs = SourcePairs(self.name, list(CONCEPTS), [])
        pairs.notes.append(
            f"{len(frequent)} frequent tags (on >= {options.min_tag_count} of {len(tags)} images)"
        )
        for number in numbers:
            kept_tags = [t for t in tags.get(number, []) if t in frequent]
            if not labels[number].any():
                pairs.skip(SKIP_NO_LABEL, f"im{number}")
                continue
            if not kept_tags:
                pairs.skip(SKIP_NO_FREQUENT_TAG, f"im{number}")
                continue
            rel = images.get(number)
            if rel is None:
                read_image = _missing(f"im{number}.jpg")
                image_name = f"im{number}.jpg"
            else:
                read_image = lambda r=rel: files.read_bytes(r)
                image_name = files.describe(rel)
            pairs.items.append(
                SourceItem(
                    f"im{number}", (" ".join(kept_tags),), labels[number], read_image, image_name
                )
            )
        return pairs


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _missing(name: str):
    def read() -> bytes:
        raise FileNotFoundError(name)

    return read


LAYOUTS: tuple[Layout, ...] = (
    TextFilesLayout(),
    IndexMatLayout(),
    DcmhMatLayout(["mirflickr25k", "mirflickr", "flickr25k"]),
    OfficialLayout(),
)
