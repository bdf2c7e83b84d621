"""MS-COCO 2014 (Lin et al., 2014) as a cross-modal hashing benchmark: 80 categories.

Accepted layouts, detected in this order:

1. the official release: ``train2014/``, ``val2014/`` images with
   ``annotations/captions_{train,val}2014.json`` and ``instances_{train,val}2014.json``
   (2017 files are accepted when no 2014 ones are present);
2. the DCHMT / MITH ``.mat`` files (``index.mat``; ``caption.mat`` holding a cell of
   captions per image (DCHMT) or one caption per image (MITH); ``label.mat``);
3. MITH's text files (``all_imgs.txt``, ``all_txts.txt`` with ``;``-separated sentences,
   ``all_labels.txt``).

Cleaning of the official release (as DCHMT): every image of train then val, each sorted
by image id; the label row is the set of categories of its instance annotations, columns
in the order of the ``categories`` list (80); images without any category are dropped
(with a count; 122,218 of 123,287 remain). All captions of an image are kept, in
annotation-id order; which one is the text is chosen when reading (``config.data.caption``).
"""

from __future__ import annotations

import json
import re

import numpy as np

from fjsph_jax.data.layouts import (
    SKIP_NO_LABEL,
    ImageResolver,
    IndexMatLayout,
    Layout,
    SourceItem,
    SourcePairs,
    TextFilesLayout,
    generic_label_names,
    image_trees,
)

NAME = "coco"
CATEGORIES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
MS-COCO: put ONE of these layouts in the manual dir (config.data.manual_dir or
prepare_data.py --manual_dir):
  a) the official 2014 release from https://cocodataset.org/#download: train2014.zip and
     val2014.zip extracted to train2014/ and val2014/, and annotations_trainval2014.zip
     extracted to annotations/ (captions_train2014.json, captions_val2014.json,
     instances_train2014.json, instances_val2014.json);
  b) DCHMT / MITH .mat files: index.mat, caption.mat, label.mat, with the images under
     --image_root (the absolute paths inside index.mat are matched by their tail);
  c) MITH's text files: all_imgs.txt, all_txts.txt, all_labels.txt, with the images under
     the manual dir or --image_root.
See docs/datasets.md."""


def default_label_names(num_classes: int) -> list[str]:
    """The 80 categories in annotation-file order, or ``label_<c>`` for another C."""
    return list(CATEGORIES) if num_classes == len(CATEGORIES) else generic_label_names(num_classes)


def _annotation_files(files, year: str) -> dict[str, str] | None:
    wanted = {
        f"{kind}_{split}": f"{kind}_{split}{year}.json"
        for kind in ("captions", "instances")
        for split in ("train", "val")
    }
    found = {key: files.find_one([name]) for key, name in wanted.items()}
    return found if all(found.values()) else None


class OfficialLayout(Layout):
    name = "official"
    description = (
        "train2014/ + val2014/ images with annotations/captions_{train,val}2014.json "
        "and instances_{train,val}2014.json"
    )

    def detect(self, files):
        for year in ("2014", "2017"):
            found = _annotation_files(files, year)
            if found:
                return [
                    found[k]
                    for k in ("captions_train", "captions_val", "instances_train", "instances_val")
                ]
        return None

    def missing(self, files):
        for year in ("2014", "2017"):
            names = [
                f"{kind}_{split}{year}.json"
                for kind in ("captions", "instances")
                for split in ("train", "val")
            ]
            present = [n for n in names if files.find_one([n])]
            if present:
                return [n for n in names if n not in present] or None
        return None

    def read(self, files, found, options, default_label_names):
        year = re.search(r"(\d{4})\.json$", found[0]).group(1)
        resolver = ImageResolver(image_trees(files, options))
        pairs = SourcePairs(self.name, [], [])
        category_names = None
        for split, captions_rel, instances_rel in (
            ("train", found[0], found[2]),
            ("val", found[1], found[3]),
        ):
            captions_doc = json.loads(files.read_text(captions_rel))  # strict UTF-8
            instances_doc = json.loads(files.read_text(instances_rel))
            categories = [(c["id"], c["name"]) for c in instances_doc["categories"]]
            if category_names is None:
                category_names = [name for _, name in categories]
                column = {cid: i for i, (cid, _) in enumerate(categories)}
            elif [name for _, name in categories] != category_names:
                raise ValueError(
                    f"{files.describe(instances_rel)} lists other categories than "
                    f"{files.describe(found[2])}; use files of one release"
                )
            labels = {}
            for annotation in instances_doc["annotations"]:
                row = labels.setdefault(
                    annotation["image_id"], np.zeros(len(category_names), np.uint8)
                )
                row[column[annotation["category_id"]]] = 1
            texts = {}
            for annotation in sorted(captions_doc["annotations"], key=lambda a: a["id"]):
                text = " ".join(annotation["caption"].split())
                texts.setdefault(annotation["image_id"], []).append(text)
            images = {image["id"]: image["file_name"] for image in captions_doc["images"]}
            for image_id in sorted(images):
                row = labels.get(image_id)
                if row is None or not row.any():
                    pairs.skip(SKIP_NO_LABEL, images[image_id])
                    continue
                file_name = images[image_id]
                read_image, image_name = resolver.reader(f"{split}{year}/{file_name}")
                pairs.items.append(
                    SourceItem(
                        file_name.rsplit(".", 1)[0],
                        tuple(texts.get(image_id, [])),
                        row,
                        read_image,
                        image_name,
                    )
                )
        pairs.label_names = category_names
        return pairs


LAYOUTS: tuple[Layout, ...] = (OfficialLayout(), IndexMatLayout(), TextFilesLayout())
