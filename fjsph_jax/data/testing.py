"""Small datasets written in every accepted layout, for tests and examples.

:func:`make_rows` draws N rows (a small JPEG, tags, captions, a multi-hot label row);
each ``write_*`` function lays them out as one baseline ships its files, so a test can
build the directory and compare what comes back with the rows. Nothing here is used by
the library itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile

import numpy as np
from PIL import Image

from fjsph_jax.data.matfiles import write_mat_v73

_WORDS = (
    "sky",
    "tree",
    "sea",
    "dog",
    "night",
    "red",
    "blue",
    "city",
    "beach",
    "sun",
    "cloud",
    "snow",
)


@dataclasses.dataclass
class Row:
    """One source row: JPEG bytes, the decoded pixels, its tags / captions and labels."""

    jpeg: bytes
    pixels: np.ndarray  # uint8 [H, W, 3], the JPEG decoded
    tags: list[str]
    captions: list[str]
    labels: np.ndarray  # uint8 [C]


def make_rows(num_rows: int, num_classes: int, *, size: int = 16, seed: int = 0) -> list[Row]:
    """``num_rows`` rows with distinct random images, 1-3 tags, 2-3 captions, >= 1 label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_rows):
        pixels = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        jpeg = buffer.getvalue()
        decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        tags = list(rng.choice(_WORDS, size=int(rng.integers(1, 4)), replace=False))
        captions = [f"a photo {i} of {' and '.join(tags)}", f"caption two of item {i}"]
        if i % 2:
            captions.append(f"third caption {i}")
        labels = np.zeros(num_classes, np.uint8)
        labels[rng.choice(num_classes, size=int(rng.integers(1, 3)), replace=False)] = 1
        rows.append(Row(jpeg, decoded, tags, captions, labels))
    return rows


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_text_files(
    root: str,
    rows: list[Row],
    *,
    image_dir: str = "images",
    sentences: bool = False,
    label_names: list[str] | None = None,
) -> None:
    """MITH / DCHMT text files: all_imgs.txt, all_tags.txt (or all_txts.txt), all_labels.txt."""
    paths = [f"{image_dir}/im{i + 1}.jpg" for i in range(len(rows))]
    for path, row in zip(paths, rows):
        _write(os.path.join(root, path), row.jpeg)
    _write(os.path.join(root, "all_imgs.txt"), "".join(p + "\n" for p in paths))
    if sentences:
        _write(
            os.path.join(root, "all_txts.txt"), "".join(";".join(r.captions) + "\n" for r in rows)
        )
    else:
        _write(os.path.join(root, "all_tags.txt"), "".join(",".join(r.tags) + "\n" for r in rows))
    _write(
        os.path.join(root, "all_labels.txt"),
        "".join(" ".join(map(str, r.labels.tolist())) + "\n" for r in rows),
    )
    if label_names:
        _write(os.path.join(root, "label_names.txt"), "".join(n + "\n" for n in label_names))


def write_images(image_root: str, rows: list[Row]) -> list[str]:
    """The JPEGs as ``<image_root>/im<i+1>.jpg``; returns the paths."""
    paths = [os.path.join(image_root, f"im{i + 1}.jpg") for i in range(len(rows))]
    for path, row in zip(paths, rows):
        _write(path, row.jpeg)
    return paths


def write_index_mat(
    root: str,
    rows: list[Row],
    *,
    image_prefix: str,
    label_key: str = "category",
    captions: str = "tags",
    v73: bool = False,
) -> None:
    """DCHMT / MITH .mat files: ``index.mat`` holds ``image_prefix/im<i+1>.jpg`` (absolute
    paths of another machine); ``captions`` is "tags" (one string), "cells" (DCHMT COCO:
    a cell of captions per image) or "txt" (DCHMT NUS-WIDE's caption.txt)."""
    import scipy.io

    index = [f"{image_prefix}/im{i + 1}.jpg" for i in range(len(rows))]
    labels = np.stack([r.labels for r in rows]).astype(np.float64)
    os.makedirs(root, exist_ok=True)
    if captions == "cells":
        caption_value = [list(r.captions) for r in rows]
    else:
        caption_value = [" ".join(r.tags) for r in rows]
    if v73:
        write_mat_v73(os.path.join(root, "index.mat"), {"index": index})
        write_mat_v73(os.path.join(root, "label.mat"), {label_key: labels})
        if captions != "txt":
            write_mat_v73(os.path.join(root, "caption.mat"), {"caption": caption_value})
    else:
        scipy.io.savemat(os.path.join(root, "index.mat"), {"index": index})
        scipy.io.savemat(os.path.join(root, "label.mat"), {label_key: labels})
        if captions == "cells":
            cells = np.empty(len(rows), dtype=object)
            for i, r in enumerate(rows):
                cells[i] = list(r.captions)
            scipy.io.savemat(os.path.join(root, "caption.mat"), {"caption": cells})
        elif captions == "tags":
            scipy.io.savemat(
                os.path.join(root, "caption.mat"), {"caption": [[c] for c in caption_value]}
            )
    if captions == "txt":
        _write(os.path.join(root, "caption.txt"), "".join(c + "\n" for c in caption_value))


def write_dcmh_mat(
    root: str,
    rows: list[Row],
    *,
    prefix: str,
    vocabulary: list[str],
    v73: bool,
    write_vocabulary: bool = True,
) -> None:
    """DCMH-style ``<prefix>-iall/-yall/-lall.mat``: IAll MATLAB ``[H, W, 3, N]`` uint8,
    YAll ``[N, D]`` bag of words over ``vocabulary``, LAll ``[N, C]``."""
    import scipy.io

    images = np.stack([r.pixels for r in rows], axis=-1)  # [H, W, 3, N]
    bow = np.zeros((len(rows), len(vocabulary)), np.float64)
    for i, r in enumerate(rows):
        bow[i, [vocabulary.index(t) for t in r.tags]] = 1
    labels = np.stack([r.labels for r in rows]).astype(np.float64)
    os.makedirs(root, exist_ok=True)
    save = write_mat_v73 if v73 else (lambda p, d: scipy.io.savemat(p, d))
    save(os.path.join(root, f"{prefix}-iall.mat"), {"IAll": images})
    save(os.path.join(root, f"{prefix}-yall.mat"), {"YAll": bow})
    save(os.path.join(root, f"{prefix}-lall.mat"), {"LAll": labels})
    if write_vocabulary:
        _write(
            os.path.join(root, "common_tags.txt"),
            "".join(f"{w} {100 - i}\n" for i, w in enumerate(vocabulary)),
        )


def write_mirflickr_official(
    root: str, rows: list[Row], concepts: tuple[str, ...], *, zipped: bool = True
) -> None:
    """``mirflickr25k.zip`` (mirflickr/im<n>.jpg, mirflickr/meta/tags/tags<n>.txt) and
    ``mirflickr25k_annotations_v080.zip`` (<concept>.txt, <concept>_r1.txt, README.txt)."""
    image_files = {}
    for n, row in enumerate(rows, start=1):
        image_files[f"mirflickr/im{n}.jpg"] = row.jpeg
        image_files[f"mirflickr/meta/tags/tags{n}.txt"] = "".join(t + "\n" for t in row.tags)
    annotation_files = {"mirflickr25k_annotations_v080/README.txt": "annotations\n"}
    for c, concept in enumerate(concepts):
        members = [n for n, row in enumerate(rows, start=1) if row.labels[c]]
        annotation_files[f"mirflickr25k_annotations_v080/{concept}.txt"] = "".join(
            f"{n}\n" for n in members
        )
        annotation_files[f"mirflickr25k_annotations_v080/{concept}_r1.txt"] = "".join(
            f"{n}\n" for n in members[:1]
        )
    for archive, content in (
        ("mirflickr25k.zip", image_files),
        ("mirflickr25k_annotations_v080.zip", annotation_files),
    ):
        if zipped:
            os.makedirs(root, exist_ok=True)
            with zipfile.ZipFile(os.path.join(root, archive), "w") as z:
                for name, data in content.items():
                    z.writestr(name, data)
        else:
            for name, data in content.items():
                _write(os.path.join(root, name), data)


def write_coco_official(
    root: str,
    rows: list[Row],
    category_names: list[str],
    *,
    unlabelled: int = 0,
    year: str = "2014",
) -> list[int]:
    """train<year>/ and val<year>/ images with captions_* and instances_* json files.

    Even rows go to train, odd rows to val; ``unlabelled`` extra images without any
    category are added to train. Returns the image ids of ``rows`` in order.
    """
    categories = [
        {"id": 10 + 3 * c, "name": name, "supercategory": "x"}
        for c, name in enumerate(category_names)
    ]
    docs = {
        split: {
            "captions": {"images": [], "annotations": []},
            "instances": {"images": [], "annotations": [], "categories": categories},
        }
        for split in ("train", "val")
    }
    ids, annotation_id = [], 1000
    extra = [("train", None)] * unlabelled
    for i, row in list(enumerate(rows)) + [(len(rows) + k, r) for k, (_, r) in enumerate(extra)]:
        split = "train" if i % 2 == 0 or row is None else "val"
        image_id = 500 - 7 * i  # ids not in row order: the reader sorts them
        file_name = f"COCO_{split}{year}_{image_id:012d}.jpg"
        image = {"id": image_id, "file_name": file_name, "width": 20, "height": 16}
        for kind in ("captions", "instances"):
            docs[split][kind]["images"].append(image)
        jpeg = rows[0].jpeg if row is None else row.jpeg
        _write(os.path.join(root, f"{split}{year}", file_name), jpeg)
        for text in ["an unlabelled picture"] if row is None else row.captions:
            annotation_id += 1
            docs[split]["captions"]["annotations"].append(
                {"id": annotation_id, "image_id": image_id, "caption": text}
            )
        if row is not None:
            ids.append(image_id)
            for c in np.flatnonzero(row.labels):
                annotation_id += 1
                docs[split]["instances"]["annotations"].append(
                    {"id": annotation_id, "image_id": image_id, "category_id": categories[c]["id"]}
                )
    for split, kinds in docs.items():
        for kind, doc in kinds.items():
            _write(os.path.join(root, "annotations", f"{kind}_{split}{year}.json"), json.dumps(doc))
    return ids
