"""The shapes a class may be, and their coverage masks.

class name -> :data:`SHAPES` ``[name]`` -> :func:`unit_polygons` (stretched, turned): polygons, each a ``(K, 2)``
array of points with a fill (255 shape, 0 hole), in a frame where the outline's box is centred at 0 with longest
side 1 -> :func:`coverage` at a length and place in pixels: ``(h, w)`` uint8 coverage (255 = fully covered),
anti-aliased by drawing at 4x and averaging down, with the integer pixel offset of its top-left pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Polygons", "SHAPES", "DEFAULT_CLASSES", "unit_polygons", "coverage"]

_SS = 4  # supersampling factor of the shape masks
_BAR_ASPECT = (6.0, 8.0)  # length / thickness of a bar or dash: a prior of ratio <= 3 rarely overlaps it at IoU 0.5

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


def unit_polygons(rng: np.random.Generator, shape: _Shape) -> Polygons:
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


def coverage(polys: Polygons, length: float, x0: float, y0: float) -> tuple[np.ndarray, int, int]:
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
