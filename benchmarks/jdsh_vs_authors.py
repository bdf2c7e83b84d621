"""JDSH's target and loss here vs the authors' PyTorch code, on the same float32 inputs.

    python benchmarks/jdsh_vs_authors.py [--batch_sizes=8,32,128,512] [--seeds=3] [--json=OUT]

(plus their datasets.py split vs the ``djsrh`` split protocol: the same sets).

The authors' repository (github.com/KaiserLew/JDSH) is read from its git mirror (no work
tree; ``$JDSH_MIRROR``, else ``/work/.mirror/KaiserLew+JDSH/repo[/.git]``): ``JDSH.py``,
``utils.py``, ``datasets.py`` and ``config/JDSH_*.json`` are extracted at run time into a temporary
directory (nothing of theirs is kept in this repository). Their ``JDSH`` class is imported
with stub modules in ``sys.modules`` for what cannot be imported here (``datasets`` and
``args`` read the dataset files at import, ``models`` loads torchvision's AlexNet,
``torchvision`` does not install beside this torch); the stubs are removed again after
the import. Their ``cal_similarity_matrix`` and ``cal_loss`` are called unbound, with a
fake ``self`` whose ``.config`` is a namespace of the JSON values.

Inputs are clustered like real features (non-negative "fc7" vectors around a few
centres, binary bag-of-words drawn from per-cluster word rates), chosen so that both
DSDW branches fire (the counts are asserted > 0). Per JSON config and batch size it
reports the largest ``|S_ours - S_theirs|``, ``|loss_ours - loss_theirs|`` (each on its
own S; and on the same S), the largest difference of the loss gradient w.r.t. the codes,
and how many entries each DSDW branch changed. Everything must agree within 1e-4.

Split: their ``datasets.py`` (its module-level code draws the split) runs on a synthetic
label matrix written as their ``LAll`` file after ``numpy.random.seed(seed)``;
:func:`fjsph_jax.data.splits.djsrh_splits` with their hard-coded counts and the same seed
must give the same query, database and training sets.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import types
from typing import Any

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

MIRROR_CANDIDATES = (
    "/work/.mirror/KaiserLew+JDSH/repo/.git",
    "/work/.mirror/KaiserLew+JDSH/repo",
)
AUTHOR_FILES = ("JDSH.py", "utils.py", "datasets.py", "config/JDSH_MIRFlickr.json",
                "config/JDSH_NUSWIDE.json")
CONFIG_FILES = {"MIRFlickr": "config/JDSH_MIRFlickr.json", "NUSWIDE": "config/JDSH_NUSWIDE.json"}
STUBBED = ("datasets", "models", "args", "torchvision", "torchvision.datasets",
           "torchvision.transforms", "utils", "JDSH", "cv2")
TOLERANCE = 1e-4


def find_mirror() -> str | None:
    """The git directory of the authors' mirror, or None when there is none."""
    candidates = [os.environ.get("JDSH_MIRROR", ""), *MIRROR_CANDIDATES]
    for path in candidates:
        if not path or not os.path.isdir(path):
            continue
        probe = subprocess.run(["git", "--git-dir", path, "rev-parse", "--verify", "HEAD"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return path
    return None


def extract(mirror: str, destination: str) -> str:
    """Writes the authors' files (``AUTHOR_FILES`` at HEAD) under ``destination``."""
    for name in AUTHOR_FILES:
        blob = subprocess.run(["git", "--git-dir", mirror, "show", f"HEAD:{name}"],
                              capture_output=True, check=True).stdout
        path = os.path.join(destination, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob)
    return destination


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@contextlib.contextmanager
def _stub_modules(directory: str):
    """``sys.modules`` with the stubs and ``directory`` on ``sys.path``; both undone after."""
    saved = {name: sys.modules.get(name) for name in STUBBED}
    torchvision = _stub("torchvision")
    torchvision.datasets = _stub("torchvision.datasets")
    torchvision.transforms = _stub("torchvision.transforms")
    stubs = {
        "torchvision": torchvision,
        "torchvision.datasets": torchvision.datasets,
        "torchvision.transforms": torchvision.transforms,
        "datasets": _stub("datasets", txt_feat_len=0),  # reads the .mat files at import
        "models": _stub("models", ImgNet=None, TxtNet=None),  # AlexNet from torchvision
        "args": _stub("args", config=None),  # argparse + easydict at import
    }
    for name in ("utils", "JDSH"):
        sys.modules.pop(name, None)
    sys.modules.update(stubs)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path.remove(directory)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_authors(directory: str):
    """``(JDSH class, {"MIRFlickr": json dict, "NUSWIDE": json dict})`` from ``directory``."""
    with _stub_modules(directory):
        module = importlib.import_module("JDSH")
    configs = {}
    for dataset, name in CONFIG_FILES.items():
        with open(os.path.join(directory, name)) as f:
            configs[dataset] = json.load(f)
    return module.JDSH, configs


def clustered_inputs(batch: int, seed: int, *, image_dim: int = 256, text_dim: int = 120,
                     clusters: int = 3, bits: int = 32):
    """float32 ``(F_I [B, dI], T [B, dT], code_I [B, K], code_T [B, K])``: non-negative
    "fc7-like" image features around ``clusters`` sparse centres (each active on ~15% of
    the dimensions) plus noise, binary bag-of-words from per-cluster word rates, tanh codes.
    Pairs within a cluster land above DSDW's right threshold, pairs across clusters below
    its left one, for both JSON configs."""
    rng = np.random.default_rng(seed)
    assign = rng.integers(0, clusters, batch)
    support = rng.random((clusters, image_dim)) < 0.15
    centres = support * rng.gamma(2.0, 1.0, (clusters, image_dim))
    image = np.maximum(centres[assign] + rng.normal(0.0, 0.3, (batch, image_dim)), 0.0)
    rates = np.where(rng.random((clusters, text_dim)) < 0.08, 0.7, 0.01)
    text = (rng.random((batch, text_dim)) < rates[assign]).astype(np.float32)
    code_i = np.tanh(rng.normal(0.0, 1.5, (batch, bits)) + 0.3 * (assign[:, None] - 1))
    code_t = np.tanh(rng.normal(0.0, 1.5, (batch, bits)))
    return (image.astype(np.float32), text, code_i.astype(np.float32),
            code_t.astype(np.float32))


def compare(jdsh_class, author_config: dict, batch: int, seed: int) -> dict[str, Any]:
    """One comparison (see the module doc); a dict of differences and branch counts."""
    import jax
    import jax.numpy as jnp
    import torch

    from fjsph_jax.methods.jdsh import objective

    fake = types.SimpleNamespace(config=types.SimpleNamespace(**author_config))
    params = objective.from_authors(author_config)
    image, text, code_i, code_t = clustered_inputs(batch, seed)

    s_theirs = jdsh_class.cal_similarity_matrix(fake, torch.from_numpy(image),
                                                torch.from_numpy(text)).numpy()
    s_ours = np.asarray(objective.similarity_target(image, text, params))
    tilde = np.asarray(objective.joint_similarity(image, text, params))
    left, right = objective.dsdw_thresholds(params)
    after_left = np.asarray(objective.dsdw_with_masks(tilde, params)[0])
    left_count = int((tilde < np.float32(left)).sum())
    right_count = int((np.where(tilde < np.float32(left), after_left, tilde)
                       > np.float32(right)).sum())
    margin = float(min(np.abs(tilde - np.float32(left)).min(),
                       np.abs(after_left - np.float32(right)).min()))

    def their_loss(s):
        ci = torch.from_numpy(code_i).requires_grad_(True)
        ct = torch.from_numpy(code_t).requires_grad_(True)
        value = jdsh_class.cal_loss(fake, ci, ct, torch.from_numpy(s))
        value.backward()
        return float(value.detach()), ci.grad.numpy(), ct.grad.numpy()

    def our_loss(s):
        value, grads = jax.value_and_grad(
            lambda ci, ct: objective.loss(ci, ct, jnp.asarray(s), params), argnums=(0, 1)
        )(jnp.asarray(code_i), jnp.asarray(code_t))
        return float(value), np.asarray(grads[0]), np.asarray(grads[1])

    loss_t, gi_t, gt_t = their_loss(s_theirs)
    loss_o, gi_o, gt_o = our_loss(s_ours)
    loss_same, _, _ = our_loss(s_theirs)
    return {
        "batch": batch,
        "seed": seed,
        "max_abs_dS": float(np.abs(s_ours - s_theirs).max()),
        "abs_dloss": abs(loss_o - loss_t),
        "abs_dloss_same_S": abs(loss_same - loss_t),
        "max_abs_dgrad": float(max(np.abs(gi_o - gi_t).max(), np.abs(gt_o - gt_t).max())),
        "loss": loss_t,
        "left_fired": left_count,
        "right_fired": right_count,
        "entries": batch * batch,
        "closest_to_threshold": margin,
    }


def their_split(directory: str, dataset: str, labels: np.ndarray, seed: int, workdir: str):
    """``(query, database, train)`` index arrays from the authors' ``datasets.py`` run on
    ``labels`` (written as their ``LAll`` .mat; a dummy ``YAll``) after
    ``numpy.random.seed(seed)``; ``dataset`` is "MIRFlickr" or "NUSWIDE". Stubs: ``args``
    (the paths), ``cv2``, ``torchvision.transforms`` (their transforms are built at import);
    ``numpy.float`` (gone from numpy 2) is set to ``float`` while it runs."""
    import h5py
    import scipy.io

    label_path = os.path.join(workdir, "lall.mat")
    text_path = os.path.join(workdir, "yall.mat" if dataset == "MIRFlickr" else "yall.h5")
    scipy.io.savemat(label_path, {"LAll": labels.astype(np.float64)})
    text = np.zeros((labels.shape[0], 3))
    if dataset == "MIRFlickr":
        scipy.io.savemat(text_path, {"YAll": text})
    else:
        with h5py.File(text_path, "w") as f:
            f["YAll"] = text.T  # MATLAB v7.3 order; their code transposes it back
    config = types.SimpleNamespace(DATASET=dataset, LABEL_DIR=label_path, TXT_DIR=text_path,
                                   IMG_DIR="")
    transform = lambda *args, **kwargs: None  # noqa: E731
    with _stub_modules(directory):
        sys.modules["args"] = _stub("args", config=config)
        sys.modules["cv2"] = _stub("cv2")
        for name in ("Compose", "RandomHorizontalFlip", "Resize", "RandomCrop", "CenterCrop",
                     "ToTensor", "Normalize"):
            setattr(sys.modules["torchvision.transforms"], name, transform)
        sys.modules.pop("datasets", None)
        had_float = "float" in np.__dict__
        np.float = float
        try:
            np.random.seed(seed)
            module = importlib.import_module("datasets")
        finally:
            if not had_float:
                del np.float
    return (np.asarray(module.indexTest, np.int64), np.asarray(module.indexDatabase, np.int64),
            np.asarray(module.indexTrain, np.int64))


def split_labels(num_items: int, num_labels: int, seed: int) -> np.ndarray:
    """Multi-hot uint8 labels, one to three per row, label c drawn with weight C - c."""
    rng = np.random.default_rng(seed)
    weights = np.arange(num_labels, 0, -1, dtype=np.float64)
    weights /= weights.sum()
    labels = np.zeros((num_items, num_labels), np.uint8)
    for row in range(num_items):
        labels[row, rng.choice(num_labels, rng.integers(1, 4), replace=False, p=weights)] = 1
    return labels


# their hard-coded per-label counts: (first query, first train, query, train, top-up)
THEIR_COUNTS = {"MIRFlickr": (160, 400, 80, 200, 5000), "NUSWIDE": (200, 500, 200, 500, 0)}


def compare_split(directory: str, dataset: str, seed: int, workdir: str, *,
                  num_items: int = 6000, num_labels: int = 6) -> dict[str, Any]:
    """Their ``datasets.py`` split vs :func:`fjsph_jax.data.splits.djsrh_splits` on the same
    labels and seed: the sets must be identical."""
    from fjsph_jax.data import splits as splits_lib

    labels = split_labels(num_items, num_labels, seed)
    query, database, train = their_split(directory, dataset, labels, seed, workdir)
    fq, ft, q, t, top_up = THEIR_COUNTS[dataset]
    ours = splits_lib.djsrh_splits(labels, first_query=fq, first_train=ft, query_per_label=q,
                                   train_per_label=t, top_up_to=top_up, seed=seed)
    same = (np.array_equal(np.sort(query), ours.query)
            and np.array_equal(np.sort(database), ours.database)
            and np.array_equal(np.sort(train), ours.train))
    return {"config": dataset, "seed": seed, "identical": bool(same),
            "sizes": {"query": int(query.size), "database": int(database.size),
                      "train": int(train.size)}}


def run(batch_sizes=(8, 32, 128, 512), seeds=(0, 1, 2), mirror: str | None = None,
        split_seeds=(0, 1)) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(objective rows, split rows)``: every comparison; raises if the mirror is missing."""
    mirror = mirror or find_mirror()
    if mirror is None:
        raise FileNotFoundError("no JDSH mirror: set $JDSH_MIRROR to its git directory")
    rows, split_rows = [], []
    with tempfile.TemporaryDirectory(prefix="jdsh-authors-") as directory:
        jdsh_class, configs = load_authors(extract(mirror, directory))
        for dataset, author_config in configs.items():
            for batch in batch_sizes:
                for seed in seeds:
                    rows.append({"config": dataset, **compare(jdsh_class, author_config,
                                                              batch, seed)})
        for dataset in THEIR_COUNTS:
            for seed in split_seeds:
                with tempfile.TemporaryDirectory() as workdir:
                    split_rows.append(compare_split(directory, dataset, seed, workdir))
    return rows, split_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="8,32,128,512")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args(argv)
    import jax
    import torch

    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    rows, split_rows = run(batch_sizes, tuple(range(args.seeds)))
    print(f"torch {torch.__version__}, jax {jax.__version__}, float32, "
          f"{len(rows)} comparisons (max over {args.seeds} seeds per row)")
    header = (f"{'config':10s} {'B':>5s} {'max|dS|':>10s} {'|dloss|':>10s} "
              f"{'|dloss| same S':>14s} {'max|dgrad|':>10s} {'left fired':>11s} "
              f"{'right fired':>11s}")
    print(header)
    failed = False
    for dataset in CONFIG_FILES:
        for batch in batch_sizes:
            group = [r for r in rows if r["config"] == dataset and r["batch"] == batch]
            worst = {k: max(r[k] for r in group) for k in
                     ("max_abs_dS", "abs_dloss", "abs_dloss_same_S", "max_abs_dgrad")}
            fired_l = min(r["left_fired"] for r in group)
            fired_r = min(r["right_fired"] for r in group)
            print(f"{dataset:10s} {batch:5d} {worst['max_abs_dS']:10.2e} "
                  f"{worst['abs_dloss']:10.2e} {worst['abs_dloss_same_S']:14.2e} "
                  f"{worst['max_abs_dgrad']:10.2e} {fired_l:>11d} {fired_r:>11d}")
            failed |= max(worst.values()) > TOLERANCE or fired_l == 0 or fired_r == 0
    for row in split_rows:
        print(f"split {row['config']:10s} seed {row['seed']}: {row['sizes']} "
              f"{'identical' if row['identical'] else 'DIFFERENT'} (their datasets.py vs "
              "djsrh_splits, 6,000 items, 6 labels)")
        failed |= not row["identical"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"objective": rows, "splits": split_rows}, f, indent=1)
    print("FAIL" if failed else f"all within {TOLERANCE:g}, both DSDW branches fired")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
