"""A seeded synthetic detection dataset of shapes, written in the Pascal VOC layout.

What it writes
--------------
``generate_synthetic(root, config)`` writes a VOC2007-style folder that every VOC tool of this package
reads unchanged::

    <root>/VOC2007/
        JPEGImages/<id>.jpg            RGB, JPEG quality ``config.jpeg_quality`` (90)
        Annotations/<id>.xml           folder, filename, size (width, height, depth 3), segmented 0 and one
                                       <object> per shape: name, pose (Unspecified), truncated, difficult,
                                       bndbox xmin/ymin/xmax/ymax as 1-based inclusive integer pixels
        ImageSets/Main/<split>.txt     the ids of each split (``trainval`` and ``test``)
        ImageSets/Main/<class>_<split>.txt   devkit per-class lists: ``<id> 1`` (a non-difficult object of
                                       the class), ``0`` (only difficult ones), ``-1`` (none)
        classes.txt                    the class names, one per line, in label order (label i = line i)
        synthetic.json                 marker: generator, configuration and the summary counts

Ids are six digits, numbered from ``000001`` over ``trainval`` then ``test`` (as VOC2007 numbers one folder).
Use::

    from ssd.data.synthetic import DEMO_CONFIG, SyntheticConfig, generate_synthetic

    summary = generate_synthetic("data/shapes", DEMO_CONFIG, progress=True)   # or SyntheticConfig(seed=1, ...)
    print("\n".join(summary.lines()))                                        # counts per split and class

The images
----------
Each image is ``W x H`` with both sides drawn independently from ``config.image_size`` (224-320 px: the
model resizes to its square input, so varied sizes and aspect ratios are realistic and cost nothing). The
background is textured: a linear gradient or a smooth random colour field, sometimes sinusoidal stripes at a
random angle and period, sometimes clutter (thin random polylines and open arcs in colours close to the
background, 1-2 px wide, so nothing looks like a class), and pixel noise.

Objects are shapes drawn with PIL (supersampled 4x for anti-aliased edges): by default ``circle``,
``square``, ``star``, ``ring`` and ``bar`` (``triangle``, ``cross``, ``diamond``, ``hexagon``, ``crescent``,
``arrow`` and ``dash`` are also available through ``config.classes``). A ``bar`` (and a ``dash``, a bar cut
into 3-4 segments) lies along the x or the y axis and is 6-8 times as long as it is thick: almost no prior of
the ``small`` preset (aspect ratios up to 3) overlaps it at IoU 0.5 (a box a times as long as thick reaches at
most IoU sqrt(3a) / (2a - sqrt(3a)) with a 3:1 prior of the best size and place, under 0.5 from a = 6.75 up;
127 of the demo's 131 non-difficult test bars have no prior at IoU 0.5), so it becomes a positive only through
the forced best-prior match, and the demo fails when that match is broken (``bench/demo_ablation.py``).
Ordinary bars are drawn at sizes 0.15-0.35 only (tiny difficult ones at the tiny sizes): a smaller one would
be a line 2 px thick, and a longer one reaches the coarse maps, where few priors lie (both were learned worse:
docs/performance.md, the demo). Each has a random colour chosen to stand out from
what lies under it (RGB distance >= 90 from the local background and from the objects it overlaps), sometimes
a shading gradient, a random stretch where the class stays recognisable (a triangle 0.6-1.6, an ellipse-like
circle at most 1.2, a square at most 1.25, ...) and a random rotation (full turn for symmetric-looking
shapes, +-20 degrees for the square and the cross so they stay distinct from a diamond and an "x").

Sizes. An object's **size** is the longest side of its box divided by the image's *shorter* side, the
strictest reading of "fraction of the image side" (after resizing to a square input, each relative box side
``w / W`` and ``h / H`` is at most the size). A share ``config.small_fraction`` (0.32) of the ordinary
objects is drawn log-uniformly from ``[object_size[0], small_size) = [0.08, 0.15)``, the rest from
``[0.15, object_size[1]] = [0.15, 0.6]``; the annotated box is the tight box of the pixels the shape covers
at least half, so it matches the drawing exactly. A shape's own sizes narrow the range drawn: a bar or a
dash drawn "small" is drawn in 0.15-0.35 instead, so the share of small objects is lower than
``small_fraction`` in a dataset with bars.

Overlap. Objects are placed largest first (so small ones are never hidden under big ones); a placement is
accepted when the new box's IoU with every earlier box is at most ``config.max_iou`` (0.4), it covers at
most half of any earlier box, it is not nearly concentric with one (a small circle centred on a big one
would read as a ring), and every earlier object keeps at least 55% of its pixels visible; after 30 failed
tries the object is dropped (big ones are dropped more often, so the measured share of small objects is a
little above ``small_fraction``). A box is the shape's full extent, also where another object hides part
of it.

Difficult objects (``difficult=1``, ignored by the VOC07 scorer): a share ``config.difficult_fraction`` (0.08)
of the objects, half of them tiny (size in ``config.difficult_size``, 0.03-0.06) and half low-contrast (RGB
distance 14-28 from the background under them). Truncated objects (``truncated=1``): a share
``config.truncated_fraction`` (0.1) of the objects of size >= 0.15 may cross the image border with at least
60% of their area inside; their box is clipped to the image. Empty images (no object at all): a share
``config.empty_fraction`` (0.05).

Determinism: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, crc32(s), i])``,
so its content depends neither on the other images nor on the order or number of workers, and the same seed
and parameters give byte-identical JPEG and XML files (for the same numpy and Pillow versions).

The demo setting
----------------
:data:`DEMO_CONFIG` is the fixed setting ``ssd demo`` trains and evaluates on: 2000 ``trainval`` and 200
``test`` images, the five default classes (circle, square, star, ring, bar), sides 224-320 px, 1-6 objects per
image, sizes 0.08-0.6 (bars 0.15-0.35) with 32% of the ordinary objects other than bars drawn under 0.15
(measured on the whole demo dataset: 30% of all objects, difficult ones included, are under 15% of the image
side; 27% of the non-difficult ones), IoU between objects <= 0.4, 8% difficult, 10% of the large objects
truncated, 5% empty images, seed 0: 7397 objects (592 difficult) in 2200 images (the test split alone: 685
objects, 59 difficult, in 200 images; of its 626 non-difficult objects, 127 of the 131 bars and 26 of the
other 495 have no prior of the ``small`` preset at IoU >= 0.5). Each image is drawn from its own
seed (split, index), so the test split does not depend on the training split's size. The setting is spelled
out field by field, so changing the defaults of :class:`SyntheticConfig` does not change the demo. Generating
it takes about 15 s on a 2-core machine (one process, about 150 images/s). 2000 training images rather than
800: with 800 the demo's model fitted its training split (VOC07 mAP 0.955) far better than the test split
(0.833); more images closed most of that gap (docs/performance.md).
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ssd.errors import SSDError

__all__ = [
    "SHAPES",
    "DEFAULT_CLASSES",
    "SyntheticConfig",
    "DEMO_CONFIG",
    "SyntheticObject",
    "SplitSummary",
    "SyntheticSummary",
    "render_image",
    "annotation_xml",
    "generate_synthetic",
]

MARKER = "synthetic.json"
_GENERATOR = "ssd.data.synthetic"
_FORMAT = 1
_SS = 4  # supersampling factor of the shape masks
_TRIES = 30  # placement tries per object
_MIN_CONTRAST = 90.0  # RGB distance of an ordinary object's colour from what lies under it
_LOW_CONTRAST = (14.0, 28.0)  # RGB distance of a low-contrast (difficult) object
_MIN_COVER = 0.5  # a new object may cover at most this share of an earlier object's box
_MIN_VISIBLE = 0.55  # every object keeps at least this share of its pixels visible
_OFF_CENTRE = 0.15  # a new object's centre keeps this share of an earlier box's sides from its centre
_MIN_INSIDE = 0.6  # a truncated object keeps at least this share of its area inside the image
_BAR_ASPECT = (6.0, 8.0)  # length / thickness of a bar or dash: a prior of ratio <= 3 rarely overlaps it at IoU 0.5

# --------------------------------------------------------------------------------------------- shapes

Polygons = list[tuple[np.ndarray, int]]  # (K, 2) unit-frame points and the fill (255 shape, 0 hole)


def _regular(n: int, radius: float = 1.0, start_deg: float = 90.0, center=(0.0, 0.0)) -> np.ndarray:
    t = np.deg2rad(start_deg) + 2.0 * np.pi * np.arange(n) / n
    return np.stack([center[0] + radius * np.cos(t), center[1] - radius * np.sin(t)], axis=1)


def _circle(rng: np.random.Generator) -> Polygons:
    return [(_regular(96), 255)]


def _ring(rng: np.random.Generator) -> Polygons:
    return [(_regular(96), 255), (_regular(96, float(rng.uniform(0.5, 0.65))), 0)]


def _square(rng: np.random.Generator) -> Polygons:
    return [(np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 255)]


def _triangle(rng: np.random.Generator) -> Polygons:
    return [(_regular(3), 255)]


def _star(rng: np.random.Generator) -> Polygons:
    inner = float(rng.uniform(0.38, 0.5))
    outer = _regular(5)
    inner_pts = _regular(5, inner, 90.0 + 36.0)
    pts = np.empty((10, 2))
    pts[0::2], pts[1::2] = outer, inner_pts
    return [(pts, 255)]


def _cross(rng: np.random.Generator) -> Polygons:
    t = float(rng.uniform(0.28, 0.38))  # half-thickness of the arms (the arms reach +-1)
    pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    return [(np.array(pts, dtype=np.float64), 255)]


def _diamond(rng: np.random.Generator) -> Polygons:
    return [(np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), 255)]


def _hexagon(rng: np.random.Generator) -> Polygons:
    return [(_regular(6, start_deg=0.0), 255)]


def _crescent(rng: np.random.Generator) -> Polygons:
    r = float(rng.uniform(0.8, 0.9))
    d = float(rng.uniform(0.4, 0.55))
    return [(_regular(96), 255), (_regular(96, r, center=(d, -0.1 * d)), 0)]


def _arrow(rng: np.random.Generator) -> Polygons:
    s = float(rng.uniform(0.18, 0.26))  # half-thickness of the shaft
    h = float(rng.uniform(0.5, 0.65))  # half-width of the head
    b = float(rng.uniform(0.1, 0.3))  # where the head starts
    pts = [(-1, -s), (b, -s), (b, -h), (1, 0), (b, h), (b, s), (-1, s)]
    return [(np.array(pts, dtype=np.float64), 255)]


def _along_an_axis(polys: Polygons, rng: np.random.Generator) -> Polygons:
    """The polygons as drawn (along the x axis) or turned upright, with even odds."""
    if rng.random() < 0.5:
        return [(pts[:, ::-1].copy(), fill) for pts, fill in polys]
    return polys


def _bar(rng: np.random.Generator) -> Polygons:
    half = 1.0 / float(rng.uniform(*_BAR_ASPECT))  # half-thickness (the bar's length is 2)
    return _along_an_axis([(np.array([[-1.0, -half], [1.0, -half], [1.0, half], [-1.0, half]]), 255)], rng)


def _dash(rng: np.random.Generator) -> Polygons:
    half = 1.0 / float(rng.uniform(*_BAR_ASPECT))
    n = int(rng.integers(3, 5))  # 3 or 4 segments, gaps of 0.35-0.6 of a segment
    gap = float(rng.uniform(0.35, 0.6))
    seg = 2.0 / (n + (n - 1) * gap)
    starts = [-1.0 + i * seg * (1.0 + gap) for i in range(n)]
    polys = [(np.array([[x, -half], [x + seg, -half], [x + seg, half], [x, half]]), 255) for x in starts]
    return _along_an_axis(polys, rng)


@dataclass(frozen=True)
class _Shape:
    build: Callable[[np.random.Generator], Polygons]
    max_stretch: float  # axis stretch drawn log-uniformly in [1/max_stretch, max_stretch] before rotating
    max_rotation: float  # degrees, rotation uniform in [-max_rotation, max_rotation]
    # sizes it is drawn at, within the config's: a thin shape drawn small would be a line of 2 px, and a long
    # one would reach the coarse maps, where few priors lie
    sizes: tuple[float, float] = (0.0, 1.0)


SHAPES: dict[str, _Shape] = {
    "circle": _Shape(_circle, 1.2, 180.0),
    "square": _Shape(_square, 1.25, 20.0),
    "triangle": _Shape(_triangle, 1.6, 180.0),
    "star": _Shape(_star, 1.25, 180.0),
    "cross": _Shape(_cross, 1.4, 20.0),
    "ring": _Shape(_ring, 1.18, 180.0),
    "diamond": _Shape(_diamond, 1.6, 15.0),
    "hexagon": _Shape(_hexagon, 1.18, 180.0),
    "crescent": _Shape(_crescent, 1.15, 180.0),
    "arrow": _Shape(_arrow, 1.3, 180.0),
    "bar": _Shape(_bar, 1.0, 0.0, sizes=(0.15, 0.35)),
    "dash": _Shape(_dash, 1.0, 0.0, sizes=(0.15, 0.35)),
}
"""The shapes a class name may be: name -> (unit polygons, largest stretch, largest rotation, own sizes)."""

DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "star", "ring", "bar")

# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset (all keyword arguments; defaults in brackets).

    Attributes:
        num_trainval: images in the ``trainval`` split [2000].
        num_test: images in the ``test`` split [200].
        classes: class names, in label order, each a key of :data:`SHAPES` [circle, square, star, ring, bar].
        image_size: smallest and largest image side in pixels; width and height are drawn independently
            [(224, 320)].
        objects_per_image: fewest and most objects attempted in a non-empty image [(1, 6)]; an object that
            finds no place within the overlap limits is dropped.
        object_size: smallest and largest size of an ordinary object (longest box side / shorter image side)
            [(0.08, 0.6)].
        small_size: the "small" threshold [0.15].
        small_fraction: share of ordinary objects drawn below ``small_size`` (except bars and dashes,
            drawn in their own sizes) [0.32].
        max_iou: largest IoU between two objects' boxes [0.4].
        difficult_fraction: share of objects that are difficult (half tiny, half low-contrast) [0.08].
        difficult_size: size range of the tiny difficult objects [(0.03, 0.06)].
        truncated_fraction: share of objects of size >= ``small_size`` allowed to cross the border [0.1].
        empty_fraction: share of images without objects [0.05].
        jpeg_quality: JPEG quality [90].
        seed: the seed, a non-negative integer [0].
    """

    num_trainval: int = 2000
    num_test: int = 200
    classes: tuple[str, ...] = DEFAULT_CLASSES
    image_size: tuple[int, int] = (224, 320)
    objects_per_image: tuple[int, int] = (1, 6)
    object_size: tuple[float, float] = (0.08, 0.6)
    small_size: float = 0.15
    small_fraction: float = 0.32
    max_iou: float = 0.4
    difficult_fraction: float = 0.08
    difficult_size: tuple[float, float] = (0.03, 0.06)
    truncated_fraction: float = 0.1
    empty_fraction: float = 0.05
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("classes", "image_size", "objects_per_image", "object_size", "difficult_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

        def fail(msg: str) -> None:
            raise SSDError(f"synthetic dataset: {msg}")

        if self.num_trainval < 0 or self.num_test < 0 or self.num_trainval + self.num_test == 0:
            fail(f"need a non-negative number of images per split, and some images "
                 f"(trainval {self.num_trainval}, test {self.num_test})")  # fmt: skip
        if not self.classes:
            fail("no classes")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            fail(f"unknown class {', '.join(map(repr, unknown))}; the shapes are {', '.join(SHAPES)}")
        if len(set(self.classes)) != len(self.classes):
            fail(f"repeated class in {', '.join(self.classes)}")
        lo, hi = self.image_size
        if not (32 <= lo <= hi <= 4096):
            fail(f"image_size must be 32 <= min <= max <= 4096, got {self.image_size}")
        lo, hi = self.objects_per_image
        if not (0 <= lo <= hi <= 100):
            fail(f"objects_per_image must be 0 <= min <= max <= 100, got {self.objects_per_image}")
        smin, smax = self.object_size
        if not (0 < smin < self.small_size < smax <= 1):
            fail(f"need 0 < object_size min < small_size < object_size max <= 1, got object_size "
                 f"{self.object_size}, small_size {self.small_size}")  # fmt: skip
        dmin, dmax = self.difficult_size
        if not (0 < dmin <= dmax <= smin):
            fail(f"difficult_size must be 0 < min <= max <= object_size min, got {self.difficult_size}")
        for name in ("small_fraction", "max_iou", "difficult_fraction", "truncated_fraction", "empty_fraction"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                fail(f"{name} must lie in [0, 1], got {value}")
        if not (1 <= self.jpeg_quality <= 100):
            fail(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if not (0 <= self.seed < 2**63):
            fail(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of images, in id order."""
        return {"trainval": self.num_trainval, "test": self.num_test}

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DEMO_CONFIG = SyntheticConfig(
    num_trainval=2000,
    num_test=200,
    classes=("circle", "square", "star", "ring", "bar"),
    image_size=(224, 320),
    objects_per_image=(1, 6),
    object_size=(0.08, 0.6),
    small_size=0.15,
    small_fraction=0.32,
    max_iou=0.4,
    difficult_fraction=0.08,
    difficult_size=(0.03, 0.06),
    truncated_fraction=0.1,
    empty_fraction=0.05,
    jpeg_quality=90,
    seed=0,
)
"""The fixed setting of ``ssd demo`` (see the module docstring); independent of the defaults."""

# --------------------------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn object: class name, devkit box ``(xmin, ymin, xmax, ymax)`` (1-based inclusive pixels) and
    flags; :meth:`size` gives its size (longest box side / shorter image side)."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool

    def size(self, width: int, height: int) -> float:
        xmin, ymin, xmax, ymax = self.box
        return max(xmax - xmin + 1, ymax - ymin + 1) / min(width, height)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def _random_colour(rng: np.random.Generator, sat=(0.35, 1.0), val=(0.25, 1.0)) -> np.ndarray:
    h, s, v = rng.uniform(0.0, 1.0), rng.uniform(*sat), rng.uniform(*val)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float64) * 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background, float32 (H, W, 3) in [0, 255] (without the pixel noise, added at the end)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    if rng.random() < 0.5:  # linear gradient between two colours
        c0 = _random_colour(rng, sat=(0.0, 0.7))
        c1 = _random_colour(rng, sat=(0.0, 0.7))
        a = rng.uniform(0.0, 2.0 * np.pi)
        t = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)
    else:  # a smooth random colour field: a few random colours, bicubic-upsampled
        base = _random_colour(rng, sat=(0.0, 0.7))
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        grid = np.clip(base + rng.normal(0.0, 45.0, size=(gh, gw, 3)), 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    img = np.array(img, dtype=np.float32)  # a writable copy
    if rng.random() < 0.35:  # stripes
        a = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 40.0)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        k = 2.0 * math.pi / period
        wave = np.sin(xs * np.float32(k * math.cos(a)) + ys * np.float32(k * math.sin(a)) + np.float32(phase))
        if rng.random() < 0.5:
            wave = np.sign(wave) * np.abs(wave) ** 0.3  # harder-edged bars
        delta = rng.normal(0.0, 1.0, 3)
        delta = delta / max(float(np.linalg.norm(delta)), 1e-6) * rng.uniform(20.0, 50.0)
        img += wave[..., None] * delta.astype(np.float32)[None, None, :]
    img = np.clip(img, 0, 255)
    if rng.random() < 0.5:  # clutter: thin polylines and open arcs close to the background's colour
        pil = Image.fromarray(img.astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(3, 12))):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            local = img[y, x]
            direction = rng.normal(0.0, 1.0, 3)
            direction /= max(float(np.linalg.norm(direction)), 1e-6)
            colour = tuple(int(v) for v in np.clip(local + direction * rng.uniform(25.0, 60.0), 0, 255))
            lw = int(rng.integers(1, 3))
            if rng.random() < 0.5:
                pts = [(x, y)]
                heading = rng.uniform(0.0, 2.0 * np.pi)
                for _ in range(int(rng.integers(2, 6))):
                    heading += rng.normal(0.0, 0.6)
                    step = rng.uniform(10.0, 50.0)
                    x, y = x + step * math.cos(heading), y + step * math.sin(heading)
                    pts.append((float(x), float(y)))
                draw.line(pts, fill=colour, width=lw)
            else:
                r = rng.uniform(10.0, 60.0)
                start = rng.uniform(0.0, 360.0)
                extent = rng.uniform(40.0, 160.0)  # open arcs only, never a closed ring
                draw.arc([x - r, y - r, x + r, y + r], start, start + extent, fill=colour, width=lw)
        img = np.asarray(pil, np.float32)
    return img


def _unit_polygons(rng: np.random.Generator, shape: _Shape) -> Polygons:
    """The shape's polygons stretched and rotated, in a frame where its outline's box is centred at 0."""
    polys = shape.build(rng)
    stretch = math.exp(rng.uniform(-math.log(shape.max_stretch), math.log(shape.max_stretch)))
    rot = math.radians(rng.uniform(-shape.max_rotation, shape.max_rotation))
    scale = np.array([math.sqrt(stretch), 1.0 / math.sqrt(stretch)])
    c, s = math.cos(rot), math.sin(rot)
    r = np.array([[c, -s], [s, c]])
    out = [((pts * scale) @ r.T, fill) for pts, fill in polys]
    outline = np.concatenate([pts for pts, fill in out if fill])
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    span = float((hi - lo).max())
    centre = (lo + hi) / 2.0
    return [((pts - centre) / span, fill) for pts, fill in out]  # outline box: longest side 1


def _render_alpha(polys: Polygons, length: float, x0: float, y0: float) -> tuple[np.ndarray, int, int]:
    """Coverage (uint8, 255 = fully covered) of the polygons scaled so the outline box's longest side is
    ``length`` pixels with the box's top-left at continuous ``(x0, y0)``; returned with the integer pixel
    offset (column, row) of the array's top-left pixel."""
    extent = np.concatenate([pts for pts, fill in polys if fill]) * length
    lo, hi = extent.min(axis=0), extent.max(axis=0)
    shift = np.array([x0, y0]) - lo
    ox, oy = math.floor(x0) - 1, math.floor(y0) - 1
    pw = math.ceil(x0 + (hi - lo)[0]) - ox + 1
    ph = math.ceil(y0 + (hi - lo)[1]) - oy + 1
    mask = Image.new("L", (pw * _SS, ph * _SS), 0)
    draw = ImageDraw.Draw(mask)
    for pts, fill in polys:
        p = (pts * length + shift - np.array([ox, oy])) * _SS
        draw.polygon([(float(a), float(b)) for a, b in p], fill=fill)
    return np.asarray(mask.reduce(_SS)), ox, oy


def _iou_cover(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of continuous box ``[x1, y1, x2, y2]`` with each of ``others`` (N, 4), and the share of each
    other box it covers."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (a + b - inter), inter / b


def _fits(box: np.ndarray, placed: list[np.ndarray], max_iou: float) -> bool:
    """Whether a new box may join the earlier ones: IoU at most ``max_iou`` with each, covering at most
    half of each, and not (nearly) concentric with any (a small circle centred on a big one reads as a
    ring, a shape in a ring's hole as a target)."""
    if not placed:
        return True
    others = np.array(placed)
    iou, cover = _iou_cover(box, others)
    dx = np.abs((box[0] + box[2]) - (others[:, 0] + others[:, 2])) / 2
    dy = np.abs((box[1] + box[3]) - (others[:, 1] + others[:, 3])) / 2
    concentric = (dx < _OFF_CENTRE * (others[:, 2] - others[:, 0])) & (dy < _OFF_CENTRE * (others[:, 3] - others[:, 1]))
    return bool((iou <= max_iou).all() and (cover <= _MIN_COVER).all() and not concentric.any())


def _pick_colour(rng, refs: list[np.ndarray], low_contrast: bool) -> np.ndarray:
    if low_contrast:
        direction = rng.normal(0.0, 1.0, 3)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        colour = refs[0] + direction * rng.uniform(*_LOW_CONTRAST)
        return np.clip(colour, 0, 255)
    best, best_d = None, -1.0
    for _ in range(24):
        colour = _random_colour(rng)
        d = min(float(np.linalg.norm(colour - r)) for r in refs)
        if d >= _MIN_CONTRAST:
            return colour
        if d > best_d:
            best, best_d = colour, d
    # no random colour stands out: push the best one away from the background
    away = best - refs[0]
    norm = float(np.linalg.norm(away))
    away = away / norm if norm > 1e-6 else np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0)
    for sign in (1.0, -1.0):
        colour = np.clip(refs[0] + sign * away * 150.0, 0, 255)
        if float(np.linalg.norm(colour - refs[0])) >= _MIN_CONTRAST:
            return colour
    return np.where(refs[0] > 127.5, 0.0, 255.0)


def render_image(config: SyntheticConfig, split: str, index: int) -> tuple[Image.Image, list[SyntheticObject]]:
    """Draw image ``index`` of ``split`` (a pure function of the arguments): the RGB image and its objects,
    boxes in devkit pixels (1-based inclusive)."""
    rng = _image_rng(config.seed, split, index)
    width = int(rng.integers(config.image_size[0], config.image_size[1] + 1))
    height = int(rng.integers(config.image_size[0], config.image_size[1] + 1))
    side = min(width, height)
    canvas = _background(rng, width, height)

    # What to draw: (class, size, difficulty kind, may be truncated), largest first.
    specs = []
    if rng.random() >= config.empty_fraction:
        lo, hi = config.objects_per_image
        for _ in range(int(rng.integers(lo, hi + 1))):
            cls = int(rng.integers(len(config.classes)))
            kind = "normal"
            if rng.random() < config.difficult_fraction:
                kind = "tiny" if rng.random() < 0.5 else "low-contrast"
            shape_lo, shape_hi = SHAPES[config.classes[cls]].sizes
            if kind == "tiny":
                size_range = config.difficult_size
            else:
                small = rng.random() < config.small_fraction and shape_lo < config.small_size
                r0, r1 = config.object_size
                r0, r1 = (r0, config.small_size) if small else (config.small_size, r1)
                # the shape's own sizes, clipped to the range drawn (one size when they do not overlap it)
                size_range = (min(max(shape_lo, r0), r1), min(max(shape_hi, r0), r1))
            size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
            may_truncate = size >= config.small_size and rng.random() < config.truncated_fraction
            specs.append((size, cls, kind, may_truncate))
    specs.sort(key=lambda s: -s[0])

    placed: list[np.ndarray] = []  # continuous boxes of the objects drawn so far
    owner = np.full((height, width), -1, dtype=np.int16)  # the top object at each pixel (-1: background)
    areas: list[int] = []  # pixels of each object when drawn
    visible: list[int] = []  # pixels of each object not hidden by later ones
    colours: list[np.ndarray] = []
    objects: list[SyntheticObject] = []
    for size, cls, kind, may_truncate in specs:
        name = config.classes[cls]
        polys = _unit_polygons(rng, SHAPES[name])
        length = size * side
        outline = np.concatenate([pts for pts, fill in polys if fill]) * length
        bw, bh = (outline.max(axis=0) - outline.min(axis=0)).tolist()
        found = None
        for _ in range(_TRIES):
            if may_truncate:
                x0 = rng.uniform(-0.4 * bw, width - 0.6 * bw)
                y0 = rng.uniform(-0.4 * bh, height - 0.6 * bh)
            else:
                x0 = rng.uniform(0.0, max(width - bw, 0.0))
                y0 = rng.uniform(0.0, max(height - bh, 0.0))
            if not _fits(np.array([x0, y0, x0 + bw, y0 + bh]), placed, config.max_iou):
                continue
            alpha, ox, oy = _render_alpha(polys, length, x0, y0)
            total = int(alpha.sum())
            # crop the coverage to the image
            cx0, cy0 = max(ox, 0), max(oy, 0)
            cx1, cy1 = min(ox + alpha.shape[1], width), min(oy + alpha.shape[0], height)
            if cx1 <= cx0 or cy1 <= cy0 or total == 0:
                continue
            a = alpha[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
            if int(a.sum()) < _MIN_INSIDE * total:
                continue
            rows = np.flatnonzero((a >= 128).any(axis=1))
            cols = np.flatnonzero((a >= 128).any(axis=0))
            if rows.size < 2 or cols.size < 2:
                continue
            # continuous box [x1, y1, x2, y2] of the pixels covered at least half
            box = np.array([cx0 + cols[0], cy0 + rows[0], cx0 + cols[-1] + 1, cy0 + rows[-1] + 1], dtype=float)
            if not _fits(box, placed, config.max_iou):
                continue
            mask = a >= 128
            under = owner[cy0 : cy0 + a.shape[0], cx0 : cx0 + a.shape[1]][mask]
            hidden = np.bincount(under[under >= 0], minlength=len(placed))
            if any(v - h < _MIN_VISIBLE * n for v, h, n in zip(visible, hidden.tolist(), areas)):
                continue  # it would hide too much of an earlier object
            truncated = int((alpha >= 128).sum()) > int(mask.sum())
            found = (a, mask, hidden, cx0, cy0, box, truncated)
            break
        if found is None:
            continue
        a, mask, hidden, cx0, cy0, box, truncated = found
        owner[cy0 : cy0 + a.shape[0], cx0 : cx0 + a.shape[1]][mask] = len(placed)
        visible = [v - h for v, h in zip(visible, hidden.tolist())] + [int(mask.sum())]
        areas.append(int(mask.sum()))
        x1, y1, x2, y2 = (int(v) for v in box)
        region = canvas[cy0 : cy0 + a.shape[0], cx0 : cx0 + a.shape[1]]
        w = a.astype(np.float32)[..., None] / 255.0
        local = (region * w).sum(axis=(0, 1)) / max(float(w.sum()), 1e-6)
        refs = [local.astype(np.float64)]
        for other, colour in zip(placed, colours):
            if _iou_cover(box, other[None])[0][0] > 0:
                refs.append(colour)
        colour = _pick_colour(rng, refs, kind == "low-contrast")
        fill = np.broadcast_to(colour.astype(np.float32), region.shape).copy()
        if kind == "normal" and rng.random() < 0.5:  # shading: a linear gradient across the object
            ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]].astype(np.float32)
            ang = rng.uniform(0.0, 2.0 * np.pi)
            t = (xs * math.cos(ang) + ys * math.sin(ang)) / max(a.shape) - 0.5
            fill += (t * rng.uniform(20.0, 60.0))[..., None]
        region[...] = region * (1.0 - w) + np.clip(fill, 0, 255) * w
        placed.append(box)
        colours.append(colour)
        difficult = kind != "normal"
        objects.append(SyntheticObject(name, (x1 + 1, y1 + 1, x2, y2), difficult, truncated))

    # pixel noise over everything (the background's texture, the objects' grain)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    return image, objects


def annotation_xml(image_id: str, width: int, height: int, objects: Sequence[SyntheticObject]) -> str:
    """The VOC annotation of one image (tab-indented, as the VOC2007 files are)."""
    lines = [
        "<annotation>",
        "\t<folder>VOC2007</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>Synthetic shapes (ssd.data.synthetic)</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        lines += [
            "\t<object>",
            f"\t\t<name>{obj.name}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(obj.truncated)}</truncated>",
            f"\t\t<difficult>{int(obj.difficult)}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split. ``per_class``: objects of each class (difficult ones included);
    ``small``: objects of size < ``small_size`` (difficult ones included)."""

    images: int = 0
    empty_images: int = 0
    objects: int = 0
    difficult: int = 0
    truncated: int = 0
    small: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_synthetic` wrote: the VOC2007 folder, the classes and the counts per split."""

    voc_root: Path
    classes: tuple[str, ...]
    splits: dict[str, SplitSummary]
    seconds: float

    def lines(self) -> list[str]:
        """A printable table: one row per split, then objects per class and split."""
        names = list(self.splits)
        out = [f"synthetic dataset in {self.voc_root} ({self.seconds:.1f} s)"]
        row = "{:<10}{:>8}{:>7}{:>9}{:>10}{:>10}{:>7}".format
        out.append(row("split", "images", "empty", "objects", "difficult", "truncated", "small"))
        for n, s in self.splits.items():
            out.append(row(n, s.images, s.empty_images, s.objects, s.difficult, s.truncated, s.small))
        width = max([len(c) for c in self.classes] + [5])
        out.append(f"{'class':<{width}}" + "".join(f"{n:>10}" for n in names))
        for c in self.classes:
            out.append(f"{c:<{width}}" + "".join(f"{self.splits[n].per_class.get(c, 0):>10}" for n in names))
        return out

    def to_json(self) -> dict:
        return {
            "classes": list(self.classes),
            "splits": {n: dataclasses.asdict(s) for n, s in self.splits.items()},
            "seconds": round(self.seconds, 3),
        }


def _is_synthetic(voc_root: Path) -> bool:
    try:
        payload = json.loads((voc_root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("generator") == _GENERATOR


def _prepare(root: Path, overwrite: bool) -> Path:
    if root.exists() and not root.is_dir():
        raise SSDError(f"{root}: not a folder")
    voc_root = root / "VOC2007"
    if root.is_dir() and any(root.iterdir()) and not _is_synthetic(voc_root) and not overwrite:
        raise SSDError(
            f"{root}: folder is not empty and holds no synthetic dataset; choose an empty folder or overwrite"
        )
    if voc_root.exists() and not voc_root.is_dir():
        raise SSDError(f"{voc_root}: not a folder")
    # Remove what a previous generation wrote (only those entries), so no stale image survives.
    for name in ("JPEGImages", "Annotations", "ImageSets", "classes.txt", MARKER):
        p = voc_root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return voc_root


def generate_synthetic(
    root: str | Path,
    config: SyntheticConfig = SyntheticConfig(),
    progress: bool = False,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write the synthetic dataset of ``config`` to ``<root>/VOC2007`` (see the module docstring).

    ``root`` may be missing, empty, or hold a dataset this function wrote before (``VOC2007/synthetic.json``):
    that one's files are replaced. Any other non-empty folder is refused unless ``overwrite`` is true; then
    only ``VOC2007/{JPEGImages,Annotations,ImageSets,classes.txt,synthetic.json}`` are replaced and other
    files are left alone. ``progress`` shows a progress bar (on stderr).

    Returns:
        The counts per split and class, also stored in ``VOC2007/synthetic.json``.

    Raises:
        SSDError: the folder is refused, or cannot be written.
    """
    start = time.perf_counter()
    root = Path(root)
    try:
        voc_root = _prepare(root, overwrite)
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (voc_root / sub).mkdir(parents=True, exist_ok=True)
        marker = {"generator": _GENERATOR, "format": _FORMAT, "config": config.to_json(), "complete": False}
        # the marker first, so that a half-written dataset is still recognised as ours
        (voc_root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        (voc_root / "classes.txt").write_text("".join(f"{c}\n" for c in config.classes), encoding="utf-8")
    except OSError as exc:
        raise SSDError(f"{root}: cannot write the synthetic dataset: {exc.strerror or exc}") from None

    total = sum(config.splits.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synthetic data", unit="img", dynamic_ncols=True)
    splits: dict[str, SplitSummary] = {}
    next_id = 1
    try:
        for split, count in config.splits.items():
            ids: list[str] = []
            presence = {c: [] for c in config.classes}  # per class: 1 / 0 / -1 for each image
            stats = dict(images=0, empty_images=0, objects=0, difficult=0, truncated=0, small=0)
            per_class = {c: 0 for c in config.classes}
            for index in range(count):
                image_id = f"{next_id:06d}"
                next_id += 1
                image, objects = render_image(config, split, index)
                image.save(voc_root / "JPEGImages" / f"{image_id}.jpg", quality=config.jpeg_quality)
                xml = annotation_xml(image_id, image.width, image.height, objects)
                (voc_root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
                ids.append(image_id)
                stats["images"] += 1
                stats["empty_images"] += not objects
                stats["objects"] += len(objects)
                stats["difficult"] += sum(o.difficult for o in objects)
                stats["truncated"] += sum(o.truncated for o in objects)
                stats["small"] += sum(o.size(image.width, image.height) < config.small_size for o in objects)
                for c in config.classes:
                    mine = [o for o in objects if o.name == c]
                    per_class[c] += len(mine)
                    presence[c].append(1 if any(not o.difficult for o in mine) else (0 if mine else -1))
                if bar is not None:
                    bar.update(1)
            main = voc_root / "ImageSets" / "Main"
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
            for c in config.classes:
                (main / f"{c}_{split}.txt").write_text(
                    "".join(f"{i} {p:2d}\n" for i, p in zip(ids, presence[c])), encoding="utf-8"
                )
            splits[split] = SplitSummary(**stats, per_class=per_class)
    except OSError as exc:
        raise SSDError(f"{voc_root}: cannot write the synthetic dataset: {exc.strerror or exc}") from None
    finally:
        if bar is not None:
            bar.close()

    marker = {
        "generator": _GENERATOR,
        "format": _FORMAT,
        "config": config.to_json(),
        "complete": True,
        "summary": {n: dataclasses.asdict(s) for n, s in splits.items()},
    }
    try:
        (voc_root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise SSDError(f"{voc_root}: cannot write the synthetic dataset: {exc.strerror or exc}") from None
    return SyntheticSummary(voc_root, tuple(config.classes), splits, time.perf_counter() - start)
