"""The embedded demo dataset: procedurally generated multi-label scenes with captions.

Each item is an RGB scene with ``min_objects..max_objects`` objects on a noisy grey
background. An object is a *concept*, a (colour, shape) pair such as "red triangle",
and an item's objects are distinct concepts. The label space is colours x shapes, with
concept ``c = colour * num_shapes + shape`` named ``"<colour> <shape>"``; neither the
colour nor the shape alone determines a label. Captions name exactly the objects
present ("there is a blue circle next to a red triangle", "red triangle, blue circle",
...), in random order with varied templates, and no other concept words.

Generation is deterministic from ``seed`` (one ``numpy.random.Generator``) and
vectorised over items: scenes are drawn as arrays (:class:`SceneLayout`), the shapes are
rasterised as boolean masks ``[N, M, H, W]`` and painted back to front.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from fjsph_jax.data.dataset import PairedDataset

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue")
# Mean RGB of each colour in COLORS, far apart from one another and from the grey background.
COLOR_RGB = {
    "red": (215, 40, 40),
    "green": (40, 175, 55),
    "blue": (45, 80, 225),
}

OBJECT_DIAMETER_FRACTION = (0.31, 0.44)  # of image_size: 10-14 px at 32 px
MIN_CENTER_DISTANCE = 0.85  # centres at least this times (r_i + r_j) apart: limited overlap
PLACEMENT_CANDIDATES = 48  # random centres tried per object; the first that fits is kept
BACKGROUND_LEVEL = (95.0, 150.0)  # grey level of the background, drawn per image
BACKGROUND_TINT = 10.0  # max per-channel deviation of the background from grey
COLOR_JITTER = 18.0  # max per-channel deviation of an object from its colour's RGB
DEFAULT_NOISE_STD = 8.0  # per-pixel Gaussian noise, in uint8 units

# Caption templates; "{objects}" is "a red circle, a blue cross and a green square".
_TEMPLATES_ANY = (
    "{objects}",
    "there is {objects}",
    "a photo with {objects} on it",
    "an image of {objects}",
    "a picture showing {objects}",
    "{objects} in the picture",
    "{bare}",  # "red circle, blue cross, green square"
)
# Templates for two objects or more; "{first}" is one object, "{rest}" the others.
_TEMPLATES_SEVERAL = (
    "there is {first} next to {rest}",
    "{first} beside {rest}",
    "{first} together with {rest}",
)


def concept_names(shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = COLORS) -> list[str]:
    """``"<colour> <shape>"`` for every pair, colour-major: ``["red circle", "red square", ...]``."""
    return [f"{color} {shape}" for color in colors for shape in shapes]


@dataclasses.dataclass(frozen=True)
class SceneLayout:
    """Objects of N scenes, M = max_objects slots each, painted in slot order.

    Attributes:
      concept_ids: int64 ``[N, M]``, concept of each slot, -1 for an empty slot.
      shape_ids, color_ids: int64 ``[N, M]``, -1 for an empty slot.
      centers: float32 ``[N, M, 2]``, (x, y) in pixels.
      radii: float32 ``[N, M]``, half the object's size in pixels (0 for an empty slot).
      rgb: float32 ``[N, M, 3]``, the jittered colour of each object (0 for an empty slot).
    """

    concept_ids: np.ndarray
    shape_ids: np.ndarray
    color_ids: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    rgb: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool ``[N, M]``: slot holds an object."""
        return self.concept_ids >= 0


def _check_args(num_items, image_size, min_objects, max_objects, num_shapes, num_colors,
                noise_std):
    for arg, value in (("num_items", num_items), ("image_size", image_size),
                       ("min_objects", min_objects), ("max_objects", max_objects),
                       ("num_shapes", num_shapes), ("num_colors", num_colors)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{arg} must be an integer, got {value!r}")
    if num_items < 1:
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if not 1 <= num_shapes <= len(SHAPES):
        raise ValueError(f"num_shapes must be in 1..{len(SHAPES)} (SHAPES = {SHAPES}), "
                         f"got {num_shapes!r}")
    if not 1 <= num_colors <= len(COLORS):
        raise ValueError(f"num_colors must be in 1..{len(COLORS)} (COLORS = {COLORS}), "
                         f"got {num_colors!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got min_objects={min_objects}, "
                         f"max_objects={max_objects}")
    if max_objects > min(3, num_shapes * num_colors):
        raise ValueError(f"max_objects must be <= min(3, num_shapes * num_colors) = "
                         f"{min(3, num_shapes * num_colors)} (objects are distinct concepts that "
                         f"must fit side by side), got {max_objects}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")


def sample_layouts(rng: np.random.Generator, num_items: int, *, image_size: int,
                   min_objects: int, max_objects: int, num_shapes: int,
                   num_colors: int) -> SceneLayout:
    """Draw the objects of ``num_items`` scenes: distinct concepts, sizes, colours, places.

    Object k of a scene is placed at the first of ``PLACEMENT_CANDIDATES`` random centres
    (inside the image) whose distance to every earlier object j is at least
    ``MIN_CENTER_DISTANCE * (r_k + r_j)``, or the candidate with the largest margin if none is.
    """
    n, m = num_items, max_objects
    num_concepts = num_shapes * num_colors
    counts = rng.integers(min_objects, max_objects + 1, size=n)
    concept_ids = np.argsort(rng.random((n, num_concepts)), axis=1)[:, :m]
    present = np.arange(m)[None, :] < counts[:, None]
    concept_ids = np.where(present, concept_ids, -1)
    shape_ids = np.where(present, concept_ids % num_shapes, -1)
    color_ids = np.where(present, concept_ids // num_shapes, -1)

    low, high = OBJECT_DIAMETER_FRACTION
    radii = 0.5 * image_size * rng.uniform(low, high, size=(n, m))
    palette = np.array([COLOR_RGB[c] for c in COLORS[:num_colors]], dtype=np.float64)
    jitter = rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=(n, m, 3))
    rgb = np.clip(palette[np.maximum(color_ids, 0)] + jitter, 0, 255)

    # Candidate centres, kept inside the image: [N, M, P, 2].
    unit = rng.random((n, m, PLACEMENT_CANDIDATES, 2))
    r = radii[:, :, None, None]
    candidates = r + unit * (image_size - 2 * r)
    centers = np.zeros((n, m, 2))
    for k in range(m):  # loop over the <= 3 object slots, vectorised over items
        cand = candidates[:, k]  # [N, P, 2]
        margin = np.full(cand.shape[:2], np.inf)  # [N, P]
        for j in range(k):
            dist = np.linalg.norm(cand - centers[:, j, None, :], axis=-1)
            needed = MIN_CENTER_DISTANCE * (radii[:, k, None] + radii[:, j, None])
            margin = np.minimum(margin, dist - needed)
        fits = margin >= 0
        choice = np.where(fits.any(axis=1), fits.argmax(axis=1), margin.argmax(axis=1))
        centers[:, k] = cand[np.arange(n), choice]
    radii = np.where(present, radii, 0.0)  # empty slots: no size, no colour
    rgb = np.where(present[..., None], rgb, 0.0)
    return SceneLayout(concept_ids=concept_ids.astype(np.int64),
                       shape_ids=shape_ids.astype(np.int64),
                       color_ids=color_ids.astype(np.int64),
                       centers=centers.astype(np.float32), radii=radii.astype(np.float32),
                       rgb=rgb.astype(np.float32))


def shape_masks(layout: SceneLayout, image_size: int) -> np.ndarray:
    """bool ``[N, M, H, W]``: pixels whose centre lies inside each object (empty slots: none).

    With (dx, dy) the offset of a pixel centre from the object centre and r its radius:
    circle ``dx^2 + dy^2 <= r^2``; square ``max(|dx|, |dy|) <= 0.85 r``; triangle (apex up)
    ``-r <= dy <= r`` and ``|dx| <= 1.1 r (dy + r) / (2 r)``; cross ``min(|dx|, |dy|) <= 0.35 r``
    and ``max(|dx|, |dy|) <= r``.
    """
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    shape_ids = layout.shape_ids.reshape(-1)
    centers = layout.centers.reshape(-1, 2)
    radii = layout.radii.reshape(-1)
    masks = np.zeros((shape_ids.size, image_size, image_size), dtype=bool)
    for shape_id, shape in enumerate(SHAPES):  # each object is rasterised once, by its shape
        objects = np.flatnonzero(shape_ids == shape_id)
        dx = coords[None, None, :] - centers[objects, 0, None, None]  # [K, 1, W]
        dy = coords[None, :, None] - centers[objects, 1, None, None]  # [K, H, 1]
        r = radii[objects, None, None]
        adx, ady = np.abs(dx), np.abs(dy)
        if shape == "circle":
            inside = dx * dx + dy * dy <= r * r
        elif shape == "square":
            inside = np.maximum(adx, ady) <= 0.85 * r
        elif shape == "triangle":
            inside = (ady <= r) & (adx <= 0.55 * (dy + r))
        else:  # cross
            inside = (np.minimum(adx, ady) <= 0.35 * r) & (np.maximum(adx, ady) <= r)
        masks[objects] = inside
    masks = masks.reshape(layout.shape_ids.shape + (image_size, image_size))
    return masks


def render_images(rng: np.random.Generator, layout: SceneLayout, image_size: int,
                  noise_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Paint the scenes: uint8 images ``[N, H, W, 3]`` and visible-pixel masks ``[N, M, H, W]``.

    image = background grey (+ tint) per image, then objects painted in slot order (later
    ones on top), then per-pixel noise ``N(0, noise_std^2)``, rounded and clipped to 0..255.
    """
    n, m = layout.concept_ids.shape
    masks = shape_masks(layout, image_size)
    level = rng.uniform(*BACKGROUND_LEVEL, size=(n, 1, 1, 1))
    tint = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=(n, 1, 1, 3))
    images = np.broadcast_to((level + tint).astype(np.float32), (n, image_size, image_size, 3))
    visible = np.empty_like(masks)
    covered = np.zeros((n, image_size, image_size), dtype=bool)
    for k in reversed(range(m)):  # <= 3 slots, front to back; vectorised over items
        visible[:, k] = masks[:, k] & ~covered
        covered |= masks[:, k]
        images = np.where(visible[:, k, :, :, None], layout.rgb[:, k, None, None, :], images)
    noise = rng.standard_normal(size=images.shape, dtype=np.float32)
    noise *= np.float32(noise_std)
    noise += images
    images = np.clip(np.rint(noise, out=noise), 0, 255, out=noise).astype(np.uint8)
    return images, visible


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join_and(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def write_captions(rng: np.random.Generator, layout: SceneLayout,
                   names: list[str]) -> list[str]:
    """One caption per scene naming exactly its objects, in random order and template."""
    n, m = layout.concept_ids.shape
    order = np.argsort(np.where(layout.present, rng.random((n, m)), np.inf), axis=1)
    ordered = np.take_along_axis(layout.concept_ids, order, axis=1).tolist()
    counts = layout.present.sum(axis=1).tolist()
    num_templates = len(_TEMPLATES_ANY) + len(_TEMPLATES_SEVERAL)
    picks = rng.random(n)
    captions = []
    for row, count, pick in zip(ordered, counts, picks.tolist()):
        phrases = [names[c] for c in row[:count]]
        usable = num_templates if count > 1 else len(_TEMPLATES_ANY)
        t = int(pick * usable)
        if t < len(_TEMPLATES_ANY):
            template = _TEMPLATES_ANY[t]
            captions.append(template.format(
                objects=_join_and([_with_article(p) for p in phrases]),
                bare=", ".join(phrases)))
        else:
            template = _TEMPLATES_SEVERAL[t - len(_TEMPLATES_ANY)]
            captions.append(template.format(
                first=_with_article(phrases[0]),
                rest=_join_and([_with_article(p) for p in phrases[1:]])))
    return captions


def make_synthetic_dataset(num_items: int, *, image_size: int = 32, seed: int = 0,
                           min_objects: int = 1, max_objects: int = 3,
                           num_shapes: int | None = None, num_colors: int | None = None,
                           noise_std: float = DEFAULT_NOISE_STD) -> PairedDataset:
    """``num_items`` scenes with captions and multi-hot concept labels (name "synthetic").

    Args:
      num_items: N.
      image_size: H = W in pixels; objects are 31-44% of it across (OBJECT_DIAMETER_FRACTION).
      seed: everything is a function of the seed.
      min_objects, max_objects: each scene has a uniform number of objects in this range.
      num_shapes, num_colors: use the first ones of SHAPES / COLORS (None: all).
      noise_std: per-pixel Gaussian noise in uint8 units.

    Returns:
      PairedDataset with images uint8 ``[N, S, S, 3]``, N captions, labels uint8
      ``[N, num_colors * num_shapes]`` and ``label_names = concept_names(...)``.
    """
    num_shapes = len(SHAPES) if num_shapes is None else num_shapes
    num_colors = len(COLORS) if num_colors is None else num_colors
    _check_args(num_items, image_size, min_objects, max_objects, num_shapes, num_colors,
                noise_std)
    rng = np.random.default_rng(seed)
    layout = sample_layouts(rng, int(num_items), image_size=int(image_size),
                            min_objects=min_objects, max_objects=max_objects,
                            num_shapes=num_shapes, num_colors=num_colors)
    images, _ = render_images(rng, layout, int(image_size), noise_std)
    names = concept_names(SHAPES[:num_shapes], COLORS[:num_colors])
    captions = write_captions(rng, layout, names)
    labels = np.zeros((int(num_items), len(names)), dtype=np.uint8)
    rows, slots = np.nonzero(layout.present)
    labels[rows, layout.concept_ids[rows, slots]] = 1
    return PairedDataset(name="synthetic", images=images, texts=captions, labels=labels,
                         label_names=names)


def chance_relevance(dataset, *, max_items: int = 2000, seed: int = 0) -> float:
    """Fraction of ordered pairs (i, j), i != j, whose label rows share a positive.

    This is about the MAP of random codes. Computed exactly on all N items when
    N <= ``max_items``, else on a random sample of ``max_items`` items.
    ``dataset`` is a PairedDataset or a multi-hot label array ``[N, C]``.
    """
    labels = np.asarray(getattr(dataset, "labels", dataset))
    if labels.ndim != 2 or labels.shape[0] < 2:
        raise ValueError(f"need labels [N, C] with N >= 2, got shape {labels.shape}")
    if max_items < 2:
        raise ValueError(f"max_items must be >= 2, got {max_items}")
    if labels.shape[0] > max_items:
        rows = np.random.default_rng(seed).choice(labels.shape[0], size=max_items, replace=False)
        labels = labels[rows]
    positive = (labels > 0).astype(np.float32)
    share = (positive @ positive.T) > 0  # [n, n]
    n = share.shape[0]
    off_diagonal_shared = share.sum() - np.trace(share)
    return float(off_diagonal_shared / (n * (n - 1)))
