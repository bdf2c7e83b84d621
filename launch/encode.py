"""Encode a dataset with a trained run: a code database, or a feature file.

Code database (search it with launch/search.py):

    python launch/encode.py --workdir=runs/default-20250101-120000 \
        [--split=database|query|train] [--modality=both|image|text] [--out=DIR]

Loads the run's config, tokenizer and latest checkpoint, encodes every item of the split
(the run's own split of its dataset) and writes packed codes, ids, labels, label names
and texts to --out (default <workdir>/codes-<split>).

Feature file (for feature-based methods such as JSPSH and JDSH, and MATLAB/Octave code):

    python launch/encode.py --features=OUT.npz|OUT.mat (--workdir=RUN | --config=CONFIG.py
        [--config.init.checkpoint=PATH --config.data.manual_dir=DIR ...]) [--handcrafted]
        [--mat73]

writes I_tr, T_tr, L_tr (the dataset's database rows) and I_te, T_te, L_te (its query
rows), plus train_rows (the training items' 0-based positions among the tr rows) when the
training set is a strict subset of the database; see fjsph_jax/data/feature_files.py.
I/T are the towers' image and text features [N, D] float32 (unmasked): with --workdir the
towers an end_to_end run trained (checkpoint --step, default the latest) or the towers a
frozen_encoder run was built from; with --config the towers of config.init.checkpoint
(randomly initialised from config.seed when it is empty, as a frozen_encoder run without a
checkpoint has them). --handcrafted writes the hand-crafted features instead (per-cell
colour histograms and bag of words; fjsph_jax/data/handcrafted.py; the dataset's images
are read into memory for them). .mat files are MATLAB v5 unless --mat73.
"""

import os
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fjsph_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a launch/train.py run.")
_SPLIT = flags.DEFINE_enum(
    "split", "database", ["database", "query", "train"], "Which split of the run's dataset."
)
_MODALITY = flags.DEFINE_enum(
    "modality", "both", ["both", "image", "text"], "Which codes to compute."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default <workdir>/codes-<split>).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Items per encoder call (default config.eval.batch_size)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_FEATURES = flags.DEFINE_string(
    "features",
    None,
    "Write a feature file (.npz or .mat) instead of a code database: image features, text "
    "features and labels of the dataset's database (tr) and query (te) rows.",
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "With --features and no --workdir: the experiment config (a get_config() module) whose "
    "dataset and towers (config.init.checkpoint) to use; override values with --config.a.b=v.",
    lock_config=True,
)
_HANDCRAFTED = flags.DEFINE_bool(
    "handcrafted",
    False,
    "With --features: write hand-crafted features (per-cell colour histograms, bag of "
    "words) instead of the towers' features.",
)
_MAT73 = flags.DEFINE_bool(
    "mat73", False, "With --features=*.mat: write MATLAB v7.3 (HDF5) instead of v5."
)

PROGRESS_EVERY_S = 10.0  # a progress line at least this often (and every 10% of the rows)


UsageError = cli.UsageError  # a wrong combination of flags


# ---------------------------------------------------------------------------------------
# Code databases
# ---------------------------------------------------------------------------------------


def encode_codes() -> None:
    from fjsph_jax.code_database import write_split_database

    if not _WORKDIR.value:
        raise UsageError(
            "pass --workdir=RUN (a launch/train.py workdir) to write its codes, or "
            "--features=OUT.npz|OUT.mat to write a feature file"
        )
    for name in ("config", "handcrafted", "mat73"):
        if flags.FLAGS[name].present:
            raise UsageError(f"--{name} goes with --features=OUT.npz|OUT.mat")
    database, out = write_split_database(
        _WORKDIR.value,
        split=_SPLIT.value,
        modality=_MODALITY.value,
        out=_OUT.value,
        batch_size=_BATCH_SIZE.value,
        step=_STEP.value,
    )
    print(
        f"wrote {len(database)} {_SPLIT.value} items ({', '.join(database.modalities)} codes, "
        f"{database.bits} bits, checkpoint step {database.metadata['checkpoint_step']}) to {out}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------
# Feature files
# ---------------------------------------------------------------------------------------


class ProgressRows:
    """A row loader that passes ``load(rows)`` through and prints a progress line to
    stderr every 10% of ``total`` rows or every PROGRESS_EVERY_S seconds (loaders run on
    prefetch threads a few batches ahead of the towers)."""

    def __init__(self, load, total: int, what: str):
        self.load, self.total, self.what = load, total, what
        self.done = 0
        self.start = self.last = time.monotonic()
        self.next_mark = 0.1
        self.lock = threading.Lock()

    def __call__(self, rows):
        batch = self.load(rows)
        with self.lock:
            self.done = min(self.total, self.done + len(rows))
            now = time.monotonic()
            fraction = self.done / max(self.total, 1)
            if fraction >= self.next_mark or now - self.last >= PROGRESS_EVERY_S:
                print(
                    f"{self.what}: {self.done}/{self.total} rows ({100 * fraction:.0f}%, "
                    f"{now - self.start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                self.last = now
                while self.next_mark <= fraction:
                    self.next_mark += 0.1
        return batch


def _dataset_inputs(config, make_tokenizer):
    """``(name, splits, labels, label_names, load_rows, num_items)``: the rows of the dataset
    ``config.data`` names as the towers read them (images, input_ids, attention_mask), in
    memory or streamed from a built dataset (``config.data.loader``), as training reads them.
    ``make_tokenizer(train_texts)`` gives the tokenizer."""
    data = config.data
    if data.get("loader", "memory") == "stream":
        from fjsph_jax.data import sources
        from fjsph_jax.data.inmemory import read_texts_and_labels
        from fjsph_jax.data.pipeline import ExampleEncoder

        if data.name not in sources.REAL_DATASETS:
            raise ValueError(
                f"config.data.loader='stream' reads a built dataset; config.data.name="
                f"{data.name!r} has none. Use --config.data.loader=memory."
            )
        built = sources.build_from_config(data)
        splits = sources.built_splits(data, built)
        texts, labels = read_texts_and_labels(built, caption=data.caption, seed=data.split_seed)
        tokenizer = make_tokenizer([texts[i] for i in splits.train.tolist()])
        load_rows = ExampleEncoder.from_config(
            data, built.data_source(), tokenizer, with_labels=False
        )
        return data.name, splits, labels, built.label_names, load_rows, len(labels)
    from fjsph_jax.data.loaders import ArrayRows
    from fjsph_jax.data.sources import load_dataset, load_splits

    dataset = load_dataset(data, seed=config.seed)
    splits = load_splits(data, dataset)
    tokenizer = make_tokenizer([dataset.texts[i] for i in splits.train.tolist()])
    input_ids, attention_mask = tokenizer.encode(dataset.texts, data.context_length)
    load_rows = ArrayRows(
        {"images": dataset.images, "input_ids": input_ids, "attention_mask": attention_mask}
    )
    return dataset.name, splits, dataset.labels, dataset.label_names, load_rows, len(dataset)


def _run_towers(workdir: str, config, towers, vocab_size: int, mesh, step):
    """``(model, description)``: the towers of a training run as a feature extractor: an
    end_to_end run's trained towers (checkpoint ``step``, default the latest); None for a
    frozen_encoder run, whose towers are built as training built them (``config.seed`` or
    its pretrained checkpoint)."""
    from flax import nnx

    from fjsph_jax import encoders as encoders_lib
    from fjsph_jax import inference
    from fjsph_jax.methods.fjsph import build
    from fjsph_jax.methods.fjsph.model import FJSPH

    if config.train.mode != "end_to_end":  # frozen towers: rebuilt as training built them
        # (by tower_features, unless the run's cached features are found first)
        return None, f"tower features (the frozen towers of run {workdir})"
    model_config = build.model_config(config, vocab_size, with_encoders=True, towers=towers)
    abstract = nnx.eval_shape(
        lambda: FJSPH(
            model_config, rngs=nnx.Rngs(config.seed), dtype=encoders_lib.compute_dtype(config)
        )
    )
    graphdef, abstract_params = nnx.split(abstract)
    params, step = inference.restore_params(workdir, abstract_params, mesh, step=step)
    return nnx.merge(graphdef, params), f"tower features (run {workdir}, checkpoint step {step})"


def _cached_run_features(workdir: str, config, num_items: int):
    """The features a frozen_encoder run cached (features-<fingerprint>.npz), or None."""
    import numpy as np

    from fjsph_jax import features

    if config.train.mode == "end_to_end":
        return None
    path = os.path.join(workdir, f"features-{features.features_fingerprint(config, num_items)}.npz")
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as data:
            cached = {k: data[k] for k in ("image_features", "text_features")}
    except (OSError, ValueError, KeyError) as error:
        logging.warning("feature cache %s is unreadable (%s): recomputing", path, error)
        return None
    if any(len(v) != num_items for v in cached.values()):
        return None
    print(f"using the run's cached tower features {path}", file=sys.stderr, flush=True)
    return cached


def tower_features(config, workdir):
    """``(name, splits, labels, label_names, features, description)``: the towers' features
    of every row of the dataset ``config.data`` names (with ``workdir``: that run's towers
    and tokenizer; else those of ``config.init.checkpoint``)."""
    from fjsph_jax import encoders as encoders_lib
    from fjsph_jax import features, parallel

    mesh = parallel.make_mesh()
    towers = encoders_lib.load_pretrained_towers(config)  # checkpoint errors before data
    model = tokenizer = None
    if workdir is not None:  # the run's tokenizer and towers, before reading any data
        from fjsph_jax import inference

        tokenizer = inference.load_tokenizer(workdir, config, towers)
        vocab_size = towers.text.vocab_size if towers is not None else tokenizer.vocab_size
        model, description = _run_towers(workdir, config, towers, vocab_size, mesh, _STEP.value)
    elif towers is not None:
        from fjsph_jax import weights

        tokenizer = towers.tokenizer or weights.require_tokenizer(config.init.checkpoint)
        description = f"tower features (checkpoint {config.init.checkpoint})"
    else:
        print(
            "note: config.init.checkpoint is empty: the towers are randomly initialised from "
            f"config.seed={config.seed} (as in a frozen_encoder run without a checkpoint)",
            file=sys.stderr,
            flush=True,
        )
        description = f"tower features (random towers, seed {config.seed})"

    def make_tokenizer(train_texts):
        nonlocal tokenizer
        if tokenizer is None:  # no checkpoint, no run: the word tokenizer training builds
            from fjsph_jax.data.tokenizer import WordTokenizer

            tokenizer = WordTokenizer.from_texts(train_texts)
        return tokenizer

    name, splits, labels, label_names, load_rows, num_items = _dataset_inputs(
        config, make_tokenizer
    )
    cached = _cached_run_features(workdir, config, num_items) if workdir else None
    if cached is not None:
        return name, splits, labels, label_names, cached, description
    if model is None:
        vocab_size = towers.text.vocab_size if towers is not None else tokenizer.vocab_size
        model = encoders_lib.build_encoders(config, vocab_size, seed=config.seed, towers=towers)
    start = time.monotonic()
    computed = features.compute_features(
        model,
        ProgressRows(load_rows, num_items, f"encoding {name}"),
        num_items=num_items,
        image_mean=tuple(config.data.image_mean),
        image_std=tuple(config.data.image_std),
        batch_size=_BATCH_SIZE.value or config.eval.batch_size,
        mesh=mesh,
    )
    print(
        f"encoded {num_items} rows in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True
    )
    return name, splits, labels, label_names, computed, description


def handcrafted(config):
    """``(name, splits, labels, label_names, features, description)``: the hand-crafted
    features of the dataset ``config.data`` names."""
    from fjsph_jax.data.handcrafted import handcrafted_features
    from fjsph_jax.data.sources import load_dataset, load_splits

    dataset = load_dataset(config.data, seed=config.seed)
    splits = load_splits(config.data, dataset)
    start = time.monotonic()
    result = handcrafted_features(dataset, splits)
    print(
        f"computed hand-crafted features of {len(dataset)} rows in "
        f"{time.monotonic() - start:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    arrays = {"image_features": result.image_features, "text_features": result.text_features}
    description = "hand-crafted features"
    return dataset.name, splits, dataset.labels, dataset.label_names, arrays, description


def _check_source(config, workdir) -> None:
    """UsageError unless ``config`` has what the features need: an image-text dataset, and
    for tower features towers (FJSPH's config.model / config.init)."""
    where = f"the run {workdir!r}" if workdir else "the config"
    source = config.data.get("features", "") or ""
    if source and source != "handcrafted":
        raise UsageError(
            f"{where} reads its features from config.data.features={source!r}; that file "
            "already is a feature file (there is no image-text dataset to encode)"
        )
    if _HANDCRAFTED.value:
        if _STEP.value is not None:
            raise UsageError("--step picks the towers' checkpoint; --handcrafted uses no towers")
        return
    if source:
        raise UsageError(
            f"{where} sets config.data.features='handcrafted' (it reads the hand-crafted "
            "features): pass --handcrafted to write those"
            + ("" if workdir else ", or --config.data.features='' for the towers' features")
        )
    method = config.get("method", "fjsph")
    if method != "fjsph" or "model" not in config or "init" not in config:
        raise UsageError(
            f"{where} has no towers to encode with (config.method={method!r}); pass "
            "--handcrafted, or a config with towers (configs/default.py or a dataset config, "
            "with --config.init.checkpoint=PATH)"
        )
    if workdir and "train" not in config:
        raise UsageError(f"{where} has no config.train section; is it a launch/train.py run?")


def encode_features() -> None:
    from fjsph_jax.data.feature_files import FeatureDataset, feature_format, write_feature_file

    out = _FEATURES.value
    extension = os.path.splitext(out)[1].lower()
    if extension not in (".npz", ".mat"):
        raise UsageError(
            f"--features={out!r} must name a .npz or .mat file (.mat: MATLAB v5, add --mat73 "
            "for v7.3)"
        )
    if _MAT73.value and extension != ".mat":
        raise UsageError(f"--mat73 writes MATLAB v7.3 .mat files; --features={out!r} is not one")
    fmt = feature_format(out, "mat73" if _MAT73.value else None)
    if os.path.isdir(out):
        raise UsageError(f"--features={out!r} is a directory; pass a file name *.npz or *.mat")
    for name in ("split", "modality", "out"):
        if flags.FLAGS[name].present:
            raise UsageError(
                f"--{name} is for code databases; a feature file holds the database (tr) and "
                "query (te) rows of the whole dataset"
            )
    workdir, config = _WORKDIR.value, _CONFIG.value
    if (workdir is None) == (config is None):
        raise UsageError(
            "pass exactly one of --workdir=RUN (a launch/train.py run) and --config=CONFIG.py "
            "(a dataset and pretrained towers) with --features"
        )
    if workdir is not None:
        from fjsph_jax import inference

        workdir = os.path.abspath(workdir)
        config = inference.load_config(workdir)
    _check_source(config, workdir)
    if workdir is not None and _STEP.value is not None and \
            config.get("train", {}).get("mode") != "end_to_end":
        raise UsageError(
            f"--step: the towers of the frozen_encoder run {workdir!r} are not trained; its "
            "features do not depend on a checkpoint"
        )
    if workdir is None and _STEP.value is not None:
        raise UsageError("--step picks a checkpoint of --workdir; it does not go with --config")
    if _HANDCRAFTED.value:
        name, splits, labels, label_names, arrays, description = handcrafted(config)
    else:
        name, splits, labels, label_names, arrays, description = tower_features(config, workdir)
    dataset = FeatureDataset.from_arrays(
        arrays["image_features"],
        arrays["text_features"],
        labels,
        splits,
        source=f"{name} ({description})",
        label_names=list(label_names),
    )
    write_feature_file(out, dataset, format=fmt)
    sizes = dataset.splits.sizes()
    print(
        f"wrote {description} of {name!r} to {out} ({'mat v7.3' if fmt == 'mat73' else fmt}): "
        f"tr = database {sizes['database']} rows (train {sizes['train']}), te = query "
        f"{sizes['query']} rows; image dim {dataset.image_dim}, text dim {dataset.text_dim}, "
        f"{dataset.num_classes} label columns",
        flush=True,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # UsageError, RunNotFoundError, FeatureFileError, ConfigError, DatasetNotFoundError,
    # CheckpointError name the flag, key or file and the fix: cli.run prints them in one line
    if _FEATURES.value is None:
        encode_codes()
    else:
        encode_features()


if __name__ == "__main__":
    cli.run(main)
