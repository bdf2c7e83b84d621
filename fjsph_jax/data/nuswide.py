"""NUS-WIDE (Chua et al., 2009): 269,648 Flickr images, 81 concepts, 1,000 frequent tags.

The baselines use two label subsets, told apart by the number of label columns:

* **21 concepts** (``tc21``): the 21 most frequent concepts; MITH's cleaned release keeps
  190,421 pairs with a label and a tag, DCMH's ``nus-wide-tc21-*.mat`` 195,834;
* **10 concepts** (``tc10``): DCMH's ``nus-wide-tc10-*.mat``, 186,577 pairs.

Accepted layouts, detected in this order: the cleaned text files (``all_imgs.txt``,
``all_tags.txt``, ``all_labels.txt``); DCHMT / MITH ``.mat`` files (``index.mat``,
``caption.mat`` or DCHMT's ``caption.txt``, ``label.mat``); DCMH-style
``nus-wide-tc21-{iall,yall,lall}.mat`` or ``nus-wide-tc10-*.mat``. The text is the tags
joined by spaces. NUS-WIDE's images are distributed by URL, so the baselines' releases
(which include the images) are what the builder reads; the column order of the concepts
is the release's (names from a ``label_names.txt`` beside the files, else ``label_<c>``).
"""

from __future__ import annotations

from fjsph_jax.data.layouts import (
    DcmhMatLayout,
    IndexMatLayout,
    Layout,
    TextFilesLayout,
    generic_label_names,
)

NAME = "nuswide"
VARIANTS = {21: "tc21", 10: "tc10"}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
NUS-WIDE: put ONE of these layouts in the manual dir (config.data.manual_dir or
prepare_data.py --manual_dir); the 21- or 10-concept version is recognised from the files:
  a) MITH's cleaned release (https://github.com/DarrenZZhang/MM23-MITH, dataset link in its
     README): all_imgs.txt, all_tags.txt, all_labels.txt, with the images (e.g. the
     Flickr/ folder) under the manual dir or --image_root;
  b) DCHMT / MITH .mat files: index.mat, caption.mat or caption.txt, label.mat, with the
     images under --image_root;
  c) DCMH-style nus-wide-tc21-iall.mat, nus-wide-tc21-yall.mat, nus-wide-tc21-lall.mat
     (or nus-wide-tc10-*), optionally with the 1,000-tag vocabulary (TagList1k.txt).
Add label_names.txt (one concept per line, in column order) to name the labels.
See docs/datasets.md."""


def default_label_names(num_classes: int) -> list[str]:
    """``label_<c>``: the releases do not record the concept names of their columns."""
    return generic_label_names(num_classes)


LAYOUTS: tuple[Layout, ...] = (
    TextFilesLayout(),
    IndexMatLayout(),
    DcmhMatLayout(["nus-wide-tc21", "nus-wide-tc10", "nuswide"]),
)
