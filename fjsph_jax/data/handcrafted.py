"""Classic hand-crafted features of a paired dataset, so that feature-based hashing methods
(JSPSH, JDSH, ...) run on any :class:`~fjsph_jax.data.dataset.PairedDataset` - the
embedded synthetic demo included - with no download and no pretrained encoder.

They play the part of the SIFT bag-of-visual-words and tag bag-of-words features that the
classic benchmarks (MIRFlickr, NUS-WIDE) ship:

**Images: per-cell colour histograms** (:func:`colour_histograms`). The image is split
into a ``grid x grid`` grid of cells; every pixel gets a colour bin and each cell
counts its pixels per bin. The colour space is a small HSV quantisation:

* a pixel is *chromatic* when its saturation ``(max - min) / max >= min_saturation``
  (default 0.4) and its value ``max / 255 >= min_value`` (0.15); its bin is one of
  ``hue_bins`` (default 6) hue sectors *centred* on red 0 deg, yellow 60, green 120, cyan
  180, blue 240 and magenta 300 (sector ``floor((hue + 180/hue_bins) / (360/hue_bins))``);
* every other pixel (grey, white, black) is *achromatic*: counted in ``achromatic_bins``
  brightness bins, or - by default, ``achromatic_bins=0`` - in no bin at all.

Why this space for the demo: its objects are red, green and blue at high saturation
(>= 0.48, 99.99% of object pixels >= 0.55, with colour jitter and pixel noise) on an
unsaturated grey background (saturation median 0.12, 99th percentile 0.30; 0.02% of
background pixels reach 0.4) whose brightness is drawn per image. Hue separates the three
colours by ~100 deg or more and, with sectors centred on the primaries, no colour straddles
a sector border: 99.98% of the demo's object pixels land in their colour's sector.
Brightness and jitter barely move the hue. A 4-levels-per-channel RGB cube (64 bins)
instead cuts through the jitter range of the palette (green's G channel 157-193 around
the 192 border, blue's G 62-98 around 64, the background's 85-160 around 128), so one
colour lands in two bins at random and the grey background in several; its nearest-
neighbour MAP on the demo is barely above chance (0.32 vs 0.31 at grid 4). The grey
background is dropped by default because it covers ~80% of every image: counted, it
dominates every cosine similarity whatever the objects (MAP 0.35 with one grey bin, 0.44
without, grid 4). Shape is only encoded coarsely, by which cells an object's pixels fall
in (cells are 8 x 8 pixels on the 32 x 32 demo, objects 10-14 pixels across): on the demo
these features find items that share a *colour*, which is half of each concept.

Each cell's counts are divided by the cell's number of pixels (an L1 histogram over all
of the cell's pixels, so the chromatic bins sum to the cell's coloured fraction) and then
square-rooted (the Hellinger / RootSIFT map, ``sqrt=True``): the inner product of two
images' features is then the sum over cells of the Bhattacharyya coefficients of their
(kept) bins, which keeps a large patch of one colour from swamping small ones. With
``achromatic_bins > 0`` every cell then has L2 norm exactly 1. Output: float32
``[N, grid * grid * (hue_bins + achromatic_bins)]``, cell-major (cell ``(r, c)`` = block
``r * grid + c``), vectorised numpy over chunks of images.

**Texts: bag of words** (:class:`BagOfWords`): lower-cased words (``[a-z0-9]+`` runs),
English stopwords dropped (a, an, the, and, ...), optionally with word bigrams; the
vocabulary is built from the TRAINING rows' captions only (terms in at least
``min_count`` of them, at most the ``max_words`` most frequent), so no query text leaks into
the features. Binary by default (word present or not), like MIRFlickr's and NUS-WIDE's
tag-BoW; ``binary=False`` counts. Words outside the vocabulary are ignored; a caption
with no vocabulary word at all becomes an all-zero row, and such rows are counted and
reported in a WARNING.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np

from fjsph_jax.data.dataset import PairedDataset, Splits
from fjsph_jax.data.feature_files import FeatureDataset

log = logging.getLogger(__name__)

DEFAULT_GRID = 4
DEFAULT_HUE_BINS = 6
DEFAULT_MIN_SATURATION = 0.4
DEFAULT_MIN_VALUE = 0.15
STOPWORDS = frozenset(
    "a an the and or but of in on at to from by for with as is are was were be been being "
    "this that these those there here it its his her their our your my we you he she they "
    "i me him them us so than too very can will just".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_MAX_ROWS_LISTED = 5


# ---- images -----------------------------------------------------------------------------
def colour_bins(images: np.ndarray, *, hue_bins: int = DEFAULT_HUE_BINS,
                achromatic_bins: int = 0, min_saturation: float = DEFAULT_MIN_SATURATION,
                min_value: float = DEFAULT_MIN_VALUE) -> tuple[np.ndarray, int]:
    """The colour bin of every pixel: ``(int32 [N, H, W], num_bins)``.

    Bins ``0..hue_bins-1`` are hue sectors centred on 0, 360/hue_bins, ... degrees
    (chromatic pixels); bins ``hue_bins..hue_bins+achromatic_bins-1`` brightness levels of
    achromatic pixels; -1 marks an achromatic pixel when ``achromatic_bins == 0``.
    """
    x = np.moveaxis(np.asarray(images), -1, 0).astype(np.float32, order="C")  # [3, N, H, W]
    r, g, b = x
    high = np.maximum(np.maximum(r, g), b)
    chroma = high - np.minimum(np.minimum(r, g), b)
    # hue in sixths of the circle, in [-1, 5]: (g - b) / chroma where red is the largest
    # channel, 2 + (b - r) / chroma where green is, 4 + (r - g) / chroma where blue is
    r_max = high == r
    g_max = ~r_max & (high == g)
    hue = np.where(r_max, g - b, np.where(g_max, b - r, r - g))
    hue /= np.maximum(chroma, np.float32(1e-6))
    hue += np.where(r_max, np.float32(0), np.where(g_max, np.float32(2), np.float32(4)))
    # sectors centred on 0, 360/hue_bins, ...: floor(hue * hue_bins / 6 + 1/2) mod hue_bins
    # (+hue_bins keeps the value positive, so truncation is floor)
    hue *= np.float32(hue_bins / 6.0)
    hue += np.float32(0.5 + hue_bins)
    sector = hue.astype(np.int32) % hue_bins
    chromatic = (chroma >= np.float32(min_saturation) * high) & (chroma > 0)
    chromatic &= high >= np.float32(min_value * 255.0)
    if achromatic_bins > 0:
        level = np.minimum((high * np.float32(achromatic_bins / 256.0)).astype(np.int32),
                           achromatic_bins - 1)
        other = hue_bins + level
    else:
        other = np.int32(-1)
    return np.where(chromatic, sector, other).astype(np.int32), hue_bins + achromatic_bins


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def colour_histograms(images: np.ndarray, *, grid: int = DEFAULT_GRID,
                      hue_bins: int = DEFAULT_HUE_BINS, achromatic_bins: int = 0,
                      min_saturation: float = DEFAULT_MIN_SATURATION,
                      min_value: float = DEFAULT_MIN_VALUE, sqrt: bool = True,
                      chunk: int = 1024) -> np.ndarray:
    """Per-cell colour histograms of uint8 images ``[N, H, W, 3]`` (see the module doc):
    float32 ``[N, grid * grid * (hue_bins + achromatic_bins)]``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got dtype={images.dtype} "
                         f"shape={images.shape}")
    grid = _check_positive_int("grid", grid)
    hue_bins = _check_positive_int("hue_bins", hue_bins)
    achromatic_bins = _check_positive_int("achromatic_bins", achromatic_bins, minimum=0)
    chunk = _check_positive_int("chunk", chunk)
    n, height, width, _ = images.shape
    if height < grid or width < grid:
        raise ValueError(f"grid={grid} needs images of at least {grid} x {grid} pixels, "
                         f"got {height} x {width}")
    num_bins = hue_bins + achromatic_bins
    num_cells = grid * grid
    cell = ((np.arange(height) * grid) // height)[:, None] * grid \
        + ((np.arange(width) * grid) // width)[None, :]  # [H, W]
    cell_pixels = np.bincount(cell.ravel(), minlength=num_cells).astype(np.float32)
    out = np.empty((n, num_cells, num_bins), np.float32)
    for start in range(0, n, chunk):
        block = images[start : start + chunk]
        m = len(block)
        bins, _ = colour_bins(block, hue_bins=hue_bins, achromatic_bins=achromatic_bins,
                              min_saturation=min_saturation, min_value=min_value)
        slot = (np.arange(m, dtype=np.int64)[:, None, None] * num_cells + cell) * num_bins + bins
        counts = np.bincount(slot[bins >= 0], minlength=m * num_cells * num_bins)
        out[start : start + m] = counts.reshape(m, num_cells, num_bins)
    out /= cell_pixels[None, :, None]
    if sqrt:
        np.sqrt(out, out=out)
    return out.reshape(n, num_cells * num_bins)


# ---- texts ------------------------------------------------------------------------------
def tokenize(text: str, *, stopwords: Iterable[str] = STOPWORDS,
             bigrams: bool = False) -> list[str]:
    """Lower-cased ``[a-z0-9]+`` words of ``text`` without ``stopwords`` (plus adjacent
    word pairs ``"red circle"`` when ``bigrams``)."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    words = [w for w in _WORD.findall(text.lower()) if w not in stop]
    if bigrams:
        words += [f"{a} {b}" for a, b in zip(words, words[1:])]
    return words


@dataclasses.dataclass(frozen=True)
class BagOfWords:
    """A bag-of-words vocabulary; make one with :meth:`fit` on the training captions.

    Attributes:
      vocabulary: V terms; column ``j`` of the features counts ``vocabulary[j]``.
      binary: 1/0 per term (default) or term counts.
      stopwords: words dropped before counting.
      bigrams: adjacent word pairs are terms too.
    """

    vocabulary: tuple[str, ...]
    binary: bool = True
    stopwords: frozenset = STOPWORDS
    bigrams: bool = False

    @classmethod
    def fit(cls, texts: Sequence[str], *, min_count: int = 1, max_words: int | None = None,
            stopwords: Iterable[str] = STOPWORDS, binary: bool = True,
            bigrams: bool = False) -> "BagOfWords":
        """The vocabulary of ``texts``: terms in at least ``min_count`` captions, the
        ``max_words`` most frequent (ties by term) if given, in that frequency order."""
        min_count = _check_positive_int("min_count", min_count)
        if max_words is not None:
            max_words = _check_positive_int("max_words", max_words)
        stopwords = frozenset(w.lower() for w in stopwords)
        counts = collections.Counter()
        for text in texts:
            counts.update(set(tokenize(text, stopwords=stopwords, bigrams=bigrams)))
        terms = sorted((t for t, c in counts.items() if c >= min_count),
                       key=lambda t: (-counts[t], t))
        if max_words is not None:
            terms = terms[:max_words]
        if not terms:
            raise ValueError(f"no word of the {len(texts)} training captions is kept (min_count="
                             f"{min_count}, {len(stopwords)} stopwords): the vocabulary is "
                             "empty; lower min_count or pass fewer stopwords")
        return cls(tuple(terms), binary=bool(binary), stopwords=stopwords, bigrams=bool(bigrams))

    def __len__(self) -> int:
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str], *, what: str = "captions",
                  rows: np.ndarray | None = None) -> np.ndarray:
        """float32 ``[N, V]`` features of ``texts``; words outside the vocabulary are
        ignored. Captions left with no vocabulary word give all-zero rows: a WARNING
        reports how many (``what`` names the texts in it, ``rows`` their row numbers)."""
        index = {term: j for j, term in enumerate(self.vocabulary)}
        out = np.zeros((len(texts), len(index)), np.float32)
        rows_i, cols = [], []
        for i, text in enumerate(texts):
            for term in tokenize(text, stopwords=self.stopwords, bigrams=self.bigrams):
                j = index.get(term)
                if j is not None:
                    rows_i.append(i)
                    cols.append(j)
        if self.binary:
            out[rows_i, cols] = 1.0
        else:
            np.add.at(out, (np.asarray(rows_i, np.int64), np.asarray(cols, np.int64)), 1.0)
        empty = np.flatnonzero(~out.any(axis=1))
        if empty.size:
            numbers = empty if rows is None else np.asarray(rows)[empty]
            log.warning(
                "bag of words: %d of %d %s have no word of the %d-term training vocabulary "
                "and get all-zero text features (first rows: %s); their text carries no "
                "information for retrieval", empty.size, len(texts), what, len(index),
                numbers[:_MAX_ROWS_LISTED].tolist())
        return out


# ---- both -------------------------------------------------------------------------------
def handcrafted_features(dataset: PairedDataset, splits: Splits, *, grid: int = DEFAULT_GRID,
                         hue_bins: int = DEFAULT_HUE_BINS, achromatic_bins: int = 0,
                         min_saturation: float = DEFAULT_MIN_SATURATION,
                         min_value: float = DEFAULT_MIN_VALUE, sqrt: bool = True,
                         min_count: int = 1, max_words: int | None = None,
                         stopwords: Iterable[str] = STOPWORDS, binary: bool = True,
                         bigrams: bool = False) -> FeatureDataset:
    """Colour histograms and bag-of-words features of every row of ``dataset``, with its
    ``splits``; the vocabulary comes from the ``splits.train`` captions only.

    Returns a :class:`FeatureDataset` (source ``"handcrafted:<dataset name>"``): image
    features ``[N, grid * grid * (hue_bins + achromatic_bins)]``, text features ``[N, V]``,
    the dataset's labels and label names. See the module doc for the features and their parameters.
    """
    if not isinstance(dataset, PairedDataset):
        raise ValueError(f"dataset must be a PairedDataset, got {type(dataset).__name__}")
    train = np.asarray(splits.train, np.int64)
    if train.size == 0 or train.min() < 0 or train.max() >= len(dataset):
        raise ValueError(f"splits.train must hold rows in 0..{len(dataset) - 1}")
    images = colour_histograms(dataset.images, grid=grid, hue_bins=hue_bins,
                               achromatic_bins=achromatic_bins, min_saturation=min_saturation,
                               min_value=min_value, sqrt=sqrt)
    bow = BagOfWords.fit([dataset.texts[i] for i in train.tolist()], min_count=min_count,
                         max_words=max_words, stopwords=stopwords, binary=binary,
                         bigrams=bigrams)
    texts = bow.transform(dataset.texts, what=f"captions of {dataset.name!r}")
    return FeatureDataset.from_arrays(images, texts, dataset.labels, splits,
                                      source=f"handcrafted:{dataset.name}",
                                      label_names=dataset.label_names)
