"""A code database on disk: the codes of a set of items, what the items are, and search.

A database holds N items (e.g. one split of a dataset). Each has an id (int64, the
dataset row), a multi-hot label row, a text, optionally an image path, and its binary
codes in one or both modalities. A database directory holds

    metadata.json       format, bits K, modalities, N, split, source workdir, step, ...
    items.npz           ids int64 [N], labels uint8 [N, C]
    items.json          texts [N], image_paths [N] or null, label_names [C]
    image_codes.npz     a HammingIndex (packed codes uint8 [N, ceil(K / 8)] + ids),
    text_codes.npz      one per modality encoded

Search ranks the items of one modality's codes by Hamming distance to query codes
(ties by row) and returns :class:`Hit` rows carrying the item's text and label names.

:func:`encode_split` makes a database from a trained run's dataset split and
:func:`search_text_or_image` encodes one query with the run's model and searches;
``launch/encode.py`` and ``launch/search.py`` call :func:`write_split_database` and
:func:`search_directory`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fjsph_jax.evaluation.index import HammingIndex

FORMAT = "fjsph_jax.code_database/1"
MODALITIES = ("image", "text")
MODALITY_CHOICES = ("image", "text", "both")
SPLITS = ("query", "database", "train")
METADATA_FILE = "metadata.json"
ITEMS_ARRAYS_FILE = "items.npz"
ITEMS_JSON_FILE = "items.json"


def codes_file(modality: str) -> str:
    """File name of one modality's HammingIndex: ``image_codes.npz`` / ``text_codes.npz``."""
    return f"{modality}_codes.npz"


def parse_modalities(modality: str) -> tuple[str, ...]:
    """``'image' | 'text' | 'both'`` -> the modalities to encode, in MODALITIES order."""
    if modality not in MODALITY_CHOICES:
        raise ValueError(f"modality must be one of {MODALITY_CHOICES}, got {modality!r}")
    return MODALITIES if modality == "both" else (modality,)


class Hit(NamedTuple):
    """One search result: rank (1 = nearest), the item's id, its Hamming distance to the
    query, its text, the names of its labels and its image path (or None)."""

    rank: int
    id: int
    distance: int
    text: str
    labels: tuple[str, ...]
    image_path: str | None


@dataclasses.dataclass(eq=False)
class CodeDatabase:
    """N items with codes in one or both modalities (checked on creation).

    Attributes:
      indexes: ``{modality: HammingIndex}`` over the N items' codes (ids = ``ids``).
      ids: int64 ``[N]`` unique item ids (dataset rows).
      labels: uint8 multi-hot ``[N, C]``.
      label_names: C names of the label columns.
      texts: N texts (captions).
      image_paths: N image paths, or None when the items have none.
      metadata: JSON-able facts about the database (split, source workdir, step, ...).
    """

    indexes: dict[str, HammingIndex]
    ids: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    texts: list[str]
    image_paths: list[str] | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids)
        self.labels = np.asarray(self.labels)
        self.label_names = list(self.label_names)
        self.texts = list(self.texts)
        self.image_paths = None if self.image_paths is None else list(self.image_paths)
        self.validate()
        order = np.argsort(self.ids, kind="stable")
        self._sorted_ids, self._sorted_positions = self.ids[order], order

    def validate(self) -> None:
        """ValueError naming the field when the parts disagree."""
        if not self.indexes:
            raise ValueError(
                "indexes is empty: a code database needs the codes of at least "
                f"one modality {MODALITIES}"
            )
        unknown = sorted(set(self.indexes) - set(MODALITIES))
        if unknown:
            raise ValueError(f"indexes has unknown modalities {unknown}; allowed: {MODALITIES}")
        if self.ids.ndim != 1 or not np.issubdtype(self.ids.dtype, np.integer):
            raise ValueError(
                f"ids must be an integer array [N], got {self.ids.dtype}{self.ids.shape}"
            )
        num = len(self.ids)
        if len(np.unique(self.ids)) != num:
            raise ValueError("ids must be unique (one per item)")
        if self.labels.ndim != 2 or self.labels.shape[0] != num:
            raise ValueError(f"labels must be [N={num}, C], got shape {self.labels.shape}")
        if self.labels.shape[1] != len(self.label_names):
            raise ValueError(
                f"labels has C={self.labels.shape[1]} columns but label_names has "
                f"{len(self.label_names)} names"
            )
        if len(self.texts) != num:
            raise ValueError(f"texts has {len(self.texts)} entries, expected N={num}")
        if self.image_paths is not None and len(self.image_paths) != num:
            raise ValueError(f"image_paths has {len(self.image_paths)} entries, expected N={num}")
        bits = {index.bits for index in self.indexes.values()}
        if len(bits) != 1:
            raise ValueError(f"the modalities' codes have different lengths {sorted(bits)}")
        for modality, index in self.indexes.items():
            if (
                index.num_rows != num
                or index.ids is None
                or not np.array_equal(index.ids, self.ids)
            ):
                raise ValueError(
                    f"the {modality} index must hold one code per item with ids "
                    f"equal to ids (N={num}), got {index.num_rows} rows"
                )

    @classmethod
    def from_codes(
        cls,
        codes: Mapping[str, Any],
        *,
        ids,
        labels,
        label_names: Sequence[str],
        texts: Sequence[str],
        image_paths: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CodeDatabase:
        """A database from ``{modality: int8 [N, K] codes in {-1, +1}}`` and the item fields."""
        ids = np.asarray(ids, np.int64)
        indexes = {m: HammingIndex.from_codes(c, ids=ids) for m, c in codes.items()}
        return cls(
            indexes,
            ids,
            np.asarray(labels, np.uint8),
            list(label_names),
            list(texts),
            None if image_paths is None else list(image_paths),
            dict(metadata or {}),
        )

    # -- facts -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def bits(self) -> int:
        """K, the code length."""
        return next(iter(self.indexes.values())).bits

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities whose codes the database holds (in MODALITIES order)."""
        return tuple(m for m in MODALITIES if m in self.indexes)

    def positions(self, ids) -> np.ndarray:
        """Row positions ``[M]`` of item ``ids`` ``[M]``; ValueError for an unknown id."""
        ids = np.asarray(ids, np.int64)
        at = np.clip(np.searchsorted(self._sorted_ids, ids), 0, len(self) - 1)
        found = self._sorted_ids[at] == ids
        if not np.all(found):
            raise ValueError(f"unknown ids {ids[~found][:5].tolist()}")
        return self._sorted_positions[at]

    def codes(self, modality: str) -> np.ndarray:
        """int8 ``[N, K]`` codes in {-1, +1} of ``modality``, in item order."""
        index = self._index(modality)
        bits = np.unpackbits(index.packed, axis=1)[:, : index.bits]
        return np.where(bits == 1, 1, -1).astype(np.int8)

    def _index(self, modality: str) -> HammingIndex:
        if modality not in self.indexes:
            raise ValueError(
                f"this database holds {list(self.modalities)} codes, not "
                f"{modality!r}; allowed: {list(self.modalities)}"
            )
        return self.indexes[modality]

    # -- search ------------------------------------------------------------------------

    def search(self, query_codes, *, against: str, k: int = 10) -> list[list[Hit]]:
        """The ``k`` items nearest to each query among the ``against`` codes.

        Args:
          query_codes: int8 ``[Q, K]`` codes in {-1, +1}.
          against: the modality of the database codes to rank ('image' | 'text').
          k: results per query, ``1 <= k <= N``.

        Returns:
          Q lists of k :class:`Hit`, by (Hamming distance, row) ascending.
        """
        distances, ids = self._index(against).search(query_codes, k)
        hits = []
        for query_distances, query_ids in zip(distances, ids):
            rows = self.positions(query_ids)
            hits.append(
                [
                    self._hit(rank, int(i), int(d), int(r))
                    for rank, (i, d, r) in enumerate(zip(query_ids, query_distances, rows), start=1)
                ]
            )
        return hits

    def _hit(self, rank: int, item_id: int, distance: int, row: int) -> Hit:
        names = tuple(self.label_names[c] for c in np.flatnonzero(self.labels[row]))
        path = None if self.image_paths is None else self.image_paths[row]
        return Hit(rank, item_id, distance, self.texts[row], names, path)

    # -- persistence -------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Writes the database into ``directory`` (created; a previous database there is
        replaced). ValueError if ``directory`` holds other files and no database."""
        directory = os.fspath(directory)
        if os.path.isdir(directory) and os.listdir(directory) and not is_code_database(directory):
            raise ValueError(
                f"out={directory!r} exists and is not a code database; pass a new "
                "or empty directory"
            )
        os.makedirs(directory, exist_ok=True)
        for modality in MODALITIES:
            stale = os.path.join(directory, codes_file(modality))
            if modality not in self.indexes and os.path.exists(stale):
                os.remove(stale)
        for modality, index in self.indexes.items():
            index.save(os.path.join(directory, codes_file(modality)))
        np.savez(os.path.join(directory, ITEMS_ARRAYS_FILE), ids=self.ids, labels=self.labels)
        with open(os.path.join(directory, ITEMS_JSON_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "texts": self.texts,
                    "image_paths": self.image_paths,
                    "label_names": self.label_names,
                },
                f,
            )
        metadata = {
            **self.metadata,
            "format": FORMAT,
            "bits": self.bits,
            "modalities": list(self.modalities),
            "num_items": len(self),
        }
        with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)  # written last: its presence marks a complete save

    @classmethod
    def load(cls, directory: str) -> CodeDatabase:
        """Reads a database written by :meth:`save`; errors name the directory."""
        directory = os.fspath(directory)
        if not is_code_database(directory):
            raise FileNotFoundError(
                f"{directory!r} is not a code database (no {METADATA_FILE}); write one with "
                "launch/encode.py --workdir=RUN --out=DIR"
            )
        try:
            with open(os.path.join(directory, METADATA_FILE), encoding="utf-8") as f:
                metadata = json.load(f)
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r} is not {FORMAT!r}")
            with open(os.path.join(directory, ITEMS_JSON_FILE), encoding="utf-8") as f:
                items = json.load(f)
            with np.load(os.path.join(directory, ITEMS_ARRAYS_FILE), allow_pickle=False) as data:
                ids, labels = data["ids"], data["labels"]
            indexes = {
                m: HammingIndex.load(os.path.join(directory, codes_file(m)))
                for m in metadata["modalities"]
            }
            return cls(
                indexes,
                ids,
                labels,
                items["label_names"],
                items["texts"],
                items["image_paths"],
                metadata,
            )
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(
                f"code database {directory!r} is incomplete or corrupt ({error}); "
                "write it again with launch/encode.py"
            ) from error


def is_code_database(directory: str) -> bool:
    """True if ``directory`` holds a saved code database (its metadata file)."""
    return os.path.isfile(os.path.join(os.fspath(directory), METADATA_FILE))


# ----------------------------------------------------------------------------------------
# From a trained run: encode a split, search with a text or an image
# ----------------------------------------------------------------------------------------


def _streamed_split(model, split: str):
    """``(rows, texts, labels, label_names, image_loader)`` of a split of the run's built
    dataset, for ``config.data.loader = "stream"``: texts and labels are read without
    decoding images; images are decoded batch by batch as they are encoded."""
    from fjsph_jax.data import sources
    from fjsph_jax.data.inmemory import read_texts_and_labels
    from fjsph_jax.data.pipeline import ExampleEncoder

    data = model.config.data
    built = sources.build_from_config(data)
    rows = getattr(sources.built_splits(data, built), split)
    texts, labels = read_texts_and_labels(built, rows, caption=data.caption, seed=data.split_seed)
    images = ExampleEncoder.from_config(
        data, built.data_source(), model.tokenizer, image_size=model.image_size,
        with_labels=False,
    )
    return rows, texts, labels, built.label_names, images


def encode_split(
    model, split: str = "database", modality: str = "both", *, batch_size: int | None = None
) -> CodeDatabase:
    """The codes of one split of the run's dataset as a database.

    Args:
      model: a :class:`fjsph_jax.inference.TrainedModel`.
      split: 'query' | 'database' | 'train' (the run's split of its dataset).
      modality: 'image' | 'text' | 'both'.
      batch_size: rows per encoder call (default ``config.eval.batch_size``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    modalities = parse_modalities(modality)
    config = model.config
    if config.data.get("loader", "memory") == "stream":
        rows, texts, labels, label_names, images = _streamed_split(model, split)
    else:
        from fjsph_jax.data.sources import load_dataset, load_splits

        dataset = load_dataset(config.data, seed=config.seed)
        rows = getattr(load_splits(config.data, dataset), split)
        texts = [dataset.texts[i] for i in rows.tolist()]
        labels, label_names = dataset.labels[rows], dataset.label_names
        images = {"images": dataset.images}
    codes = {}
    if "image" in modalities:
        codes["image"] = model.encode_rows("image", images, rows, batch_size=batch_size)
    if "text" in modalities:
        codes["text"] = model.encode_texts(texts, batch_size=batch_size)
    from fjsph_jax.training.checkpointing import config_fingerprint

    metadata = {
        "split": split,
        "dataset": config.data.name,
        "source_workdir": model.workdir,
        "checkpoint_step": model.step,
        "config_fingerprint": config_fingerprint(config),  # search checks the model's
    }
    return CodeDatabase.from_codes(
        codes,
        ids=rows,
        labels=labels,
        label_names=label_names,
        texts=texts,
        image_paths=None,
        metadata=metadata,
    )


def write_split_database(
    workdir: str,
    *,
    split: str = "database",
    modality: str = "both",
    out: str | None = None,
    batch_size: int | None = None,
    step: int | None = None,
) -> tuple[CodeDatabase, str]:
    """Loads the run in ``workdir``, encodes ``split`` and saves it to ``out`` (default
    ``<workdir>/codes-<split>``); returns the database and the directory."""
    from fjsph_jax.inference import TrainedModel

    if split not in SPLITS:  # fail before loading the model
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parse_modalities(modality)
    out = out or os.path.join(workdir, f"codes-{split}")
    if os.path.isdir(out) and os.listdir(out) and not is_code_database(out):
        raise ValueError(
            f"out={out!r} exists and is not a code database; pass a new or empty directory"
        )
    model = TrainedModel.load(workdir, step=step)
    database = encode_split(model, split, modality, batch_size=batch_size)
    database.save(out)
    return database, out


def default_target(database: CodeDatabase, query_modality: str) -> str:
    """The codes a query is ranked against: the other modality (cross-modal retrieval)
    when the database holds it, else the one it holds."""
    other = "image" if query_modality == "text" else "text"
    return other if other in database.indexes else database.modalities[0]


def search_text_or_image(
    database: CodeDatabase,
    model,
    *,
    text: str | None = None,
    image: str | None = None,
    k: int = 10,
    against: str | None = None,
) -> tuple[str, list[Hit]]:
    """Encodes one query (``text``, or the image file ``image``) and searches.

    Returns:
      ``(against, hits)``: the modality ranked (default :func:`default_target`) and k hits.
    """
    if (text is None) == (image is None):
        raise ValueError("pass exactly one of text= and image= (a query text or an image path)")
    if text is not None and not text.strip():
        raise ValueError("text is empty; pass the words to search for")
    query_modality = "text" if text is not None else "image"
    against = against or default_target(database, query_modality)
    if against not in database.indexes:
        raise ValueError(
            f"against={against!r} is not in this database; allowed: {list(database.modalities)}"
        )
    if model.bits != database.bits:
        raise ValueError(
            f"the model makes {model.bits}-bit codes but the database holds "
            f"{database.bits}-bit codes; use the run that wrote it"
        )
    if text is not None:
        warn_unknown_words(getattr(model, "tokenizer", None), text)
    query = model.encode_texts([text]) if text is not None else model.encode_images([image])
    return against, database.search(query, against=against, k=k)[0]


def warn_unknown_words(tokenizer, text: str) -> None:
    """A WARNING when no word of ``text`` is in the run's word tokenizer: every word becomes
    ``<unk>``, so the query's codes carry no meaning. Subword tokenizers know every text."""
    from fjsph_jax.data.tokenizer import UNK_ID, WordTokenizer, split_words

    if not isinstance(tokenizer, WordTokenizer):
        return
    words = split_words(text)
    if any(tokenizer.token_id(w) != UNK_ID for w in words):
        return
    examples = ", ".join(tokenizer.vocab[4:9])  # after <pad> <bos> <eos> <unk>
    logging.warning(
        "no word of the query %r is in the run's vocabulary (%d words of its training "
        "texts, e.g. %s): its codes carry no meaning; use words of the training captions",
        text, tokenizer.vocab_size - 4, examples)


def check_same_run(database: CodeDatabase, model, directory: str) -> None:
    """ValueError unless ``model`` is the run that wrote ``database`` (the config
    fingerprint the database records; databases written before it was recorded pass)."""
    from fjsph_jax.training.checkpointing import config_fingerprint

    wrote = database.metadata.get("config_fingerprint")
    if wrote is not None and wrote != config_fingerprint(model.config):
        raise ValueError(
            f"the code database {directory!r} was written by a run of another config "
            f"(fingerprint {wrote}) than the one in {model.workdir!r} "
            f"({config_fingerprint(model.config)}): its codes and this model's do not "
            "compare. Pass --workdir=<the run that wrote it>, or encode the database again "
            "with this run (launch/encode.py)")


@dataclasses.dataclass
class SearchResult:
    """What ``launch/search.py`` prints."""

    query_modality: str
    query: str
    against: str
    database: str
    hits: list[Hit]

    def to_json(self) -> str:
        return json.dumps(
            {
                "query_modality": self.query_modality,
                "query": self.query,
                "against": self.against,
                "database": self.database,
                "hits": [h._asdict() for h in self.hits],
            }
        )

    def format_table(self) -> str:
        """A header line, then one line per hit: rank, id, Hamming distance, text, labels
        (and the image path when the item has one)."""
        title = (
            f"{self.query_modality} query {self.query!r} against the {self.against} codes "
            f"of {self.database}"
        )
        lines = [
            title,
            f"{'rank':>4}  {'id':>8}  {'hamming':>7}  text  [labels]",
        ]
        for hit in self.hits:
            line = (
                f"{hit.rank:>4}  {hit.id:>8}  {hit.distance:>7}  {hit.text}  "
                f"[{', '.join(hit.labels)}]"
            )
            lines.append(line if hit.image_path is None else f"{line}  {hit.image_path}")
        return "\n".join(lines)


def search_directory(
    directory: str,
    *,
    text: str | None = None,
    image: str | None = None,
    k: int = 10,
    against: str | None = None,
    workdir: str | None = None,
) -> SearchResult:
    """Loads the database in ``directory`` and the run that wrote it (or ``workdir``),
    then :func:`search_text_or_image`."""
    from fjsph_jax.inference import TrainedModel

    if (text is None) == (image is None):
        raise ValueError("pass exactly one of text= and image= (a query text or an image path)")
    if text is not None:  # before any loading: a query of undecodable bytes is refused
        from fjsph_jax.data.files import check_utf8_text

        check_utf8_text(text, "--text")
    database = CodeDatabase.load(directory)
    workdir = workdir or database.metadata.get("source_workdir")
    if not workdir:
        raise ValueError(f"{directory!r} does not name the run that wrote it; pass workdir=")
    step = database.metadata.get("checkpoint_step")
    try:
        model = TrainedModel.load(workdir, step=step)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} (the database {directory!r} holds codes of checkpoint step {step} of "
            f"{workdir!r}; encode it again with launch/encode.py if that run moved on)"
        ) from error
    check_same_run(database, model, os.fspath(directory))
    against, hits = search_text_or_image(
        database, model, text=text, image=image, k=k, against=against
    )
    return SearchResult(
        "text" if text is not None else "image",
        text if text is not None else image,
        against,
        os.fspath(directory),
        hits,
    )
