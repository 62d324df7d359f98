"""Drawing one image of the synthetic dataset: a pure function of (config, split, index).

``render_image(config, split, index)``: the rng of ``(seed, split, index)`` -> sides ``W x H`` -> textured
background, float32 ``(H, W, 3)`` in [0, 255] -> the object specs (class, size, difficulty, may it cross the
border), largest first -> each one placed (a coverage mask, a box) within the overlap rules, or dropped ->
painted (a colour that stands out, sometimes shaded) into the canvas -> pixel noise -> an RGB ``PIL.Image`` and
its :class:`SyntheticObject` list, boxes in devkit pixels. Every random number comes from that one rng, in this
order, so the image depends on nothing else.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from ssd.data.synthetic.config import SyntheticConfig
from ssd.data.synthetic.shapes import SHAPES, Polygons, coverage, unit_polygons
from ssd.data.voc import continuous_to_voc_pixels

__all__ = ["SyntheticObject", "render_image"]

_TRIES = 30  # placement tries per object
_MIN_CONTRAST = 90.0  # RGB distance of an ordinary object's colour from what lies under it
_LOW_CONTRAST = (14.0, 28.0)  # RGB distance of a low-contrast (difficult) object
_MIN_COVER = 0.5  # a new object may cover at most this share of an earlier object's box
_MIN_VISIBLE = 0.55  # every object keeps at least this share of its pixels visible
_OFF_CENTRE = 0.15  # a new object's centre keeps this share of an earlier box's sides from its centre
_MIN_INSIDE = 0.6  # a truncated object keeps at least this share of its area inside the image


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


# --------------------------------------------------------------------------------------------- background


def _random_colour(rng: np.random.Generator, sat=(0.35, 1.0), val=(0.25, 1.0)) -> np.ndarray:
    h, s, v = rng.uniform(0.0, 1.0), rng.uniform(*sat), rng.uniform(*val)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float64) * 255.0


def _gradient(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A linear gradient between two colours at a random angle, float32 (H, W, 3)."""
    c0 = _random_colour(rng, sat=(0.0, 0.7))
    c1 = _random_colour(rng, sat=(0.0, 0.7))
    a = rng.uniform(0.0, 2.0 * np.pi)
    t = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)


def _colour_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field: a few random colours, bicubic-upsampled, float32 (H, W, 3)."""
    base = _random_colour(rng, sat=(0.0, 0.7))
    gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    grid = np.clip(base + rng.normal(0.0, 45.0, size=(gh, gw, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32)


def _stripes(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sinusoidal stripes at a random angle and period (sometimes harder-edged), a float32 (H, W, 3) offset."""
    a = rng.uniform(0.0, np.pi)
    period = rng.uniform(6.0, 40.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    k = 2.0 * math.pi / period
    wave = np.sin(xs * np.float32(k * math.cos(a)) + ys * np.float32(k * math.sin(a)) + np.float32(phase))
    if rng.random() < 0.5:
        wave = np.sign(wave) * np.abs(wave) ** 0.3  # harder-edged bars
    delta = rng.normal(0.0, 1.0, 3)
    delta = delta / max(float(np.linalg.norm(delta)), 1e-6) * rng.uniform(20.0, 50.0)
    return wave[..., None] * delta.astype(np.float32)[None, None, :]


def _clutter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """``img`` (float32 (H, W, 3)) with thin polylines and open arcs in colours close to the background's,
    1-2 px wide, so that nothing looks like a class."""
    height, width = img.shape[:2]
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
    return np.asarray(pil, np.float32)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background, float32 (H, W, 3) in [0, 255] (without the pixel noise, added at the end): a
    gradient or a colour field, sometimes stripes, sometimes clutter."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    img = _gradient(rng, xs, ys) if rng.random() < 0.5 else _colour_field(rng, width, height)
    img = np.array(img, dtype=np.float32)  # a writable copy
    if rng.random() < 0.35:
        img += _stripes(rng, xs, ys)
    img = np.clip(img, 0, 255)
    if rng.random() < 0.5:
        img = _clutter(rng, img)
    return img


# --------------------------------------------------------------------------------------------- what to draw


class _Spec(NamedTuple):
    """One object to draw: its size, class (label), kind (normal, tiny or low-contrast) and whether it may
    cross the image border."""

    size: float
    cls: int
    kind: str
    may_truncate: bool


def _size_range(
    rng: np.random.Generator, config: SyntheticConfig, shape_sizes: tuple[float, float]
) -> tuple[float, float]:
    """The sizes an ordinary object is drawn in: small or not (by ``small_fraction``), within the shape's own."""
    shape_lo, shape_hi = shape_sizes
    small = rng.random() < config.small_fraction and shape_lo < config.small_size
    r0, r1 = config.object_size
    r0, r1 = (r0, config.small_size) if small else (config.small_size, r1)
    # the shape's own sizes, clipped to the range drawn (one size when they do not overlap it)
    return min(max(shape_lo, r0), r1), min(max(shape_hi, r0), r1)


def _draw_spec(rng: np.random.Generator, config: SyntheticConfig) -> _Spec:
    cls = int(rng.integers(len(config.classes)))
    kind = "normal"
    if rng.random() < config.difficult_fraction:
        kind = "tiny" if rng.random() < 0.5 else "low-contrast"
    if kind == "tiny":
        size_range = config.difficult_size
    else:
        size_range = _size_range(rng, config, SHAPES[config.classes[cls]].sizes)
    size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    may_truncate = size >= config.small_size and rng.random() < config.truncated_fraction
    return _Spec(size, cls, kind, may_truncate)


def _draw_specs(rng: np.random.Generator, config: SyntheticConfig) -> list[_Spec]:
    """The objects of one image, largest first (so small ones are never hidden under big ones); none in an
    empty image."""
    if rng.random() < config.empty_fraction:
        return []
    lo, hi = config.objects_per_image
    specs = [_draw_spec(rng, config) for _ in range(int(rng.integers(lo, hi + 1)))]
    specs.sort(key=lambda s: -s.size)
    return specs


# --------------------------------------------------------------------------------------------- placing


def _iou_cover(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of continuous box ``[x1, y1, x2, y2]`` with each of ``others`` (N, 4), and the share of each
    other box it covers."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (a + b - inter), inter / b


@dataclass(frozen=True)
class _Placement:
    """Where an object goes: its coverage cropped to the image (uint8 (h, w)) with the crop's top-left pixel
    ``(x0, y0)``, the pixels it takes (coverage >= 128), how many pixels of each earlier object it hides, its
    continuous box and whether the border cuts it."""

    alpha: np.ndarray
    x0: int
    y0: int
    mask: np.ndarray
    hidden: np.ndarray
    box: np.ndarray
    truncated: bool


@dataclass
class _Scene:
    """The objects placed so far: their boxes and colours, the top object at each pixel (-1: background), and
    each object's pixels when drawn and still visible."""

    owner: np.ndarray  # int16 (H, W)
    boxes: list[np.ndarray] = field(default_factory=list)  # continuous [x1, y1, x2, y2]
    colours: list[np.ndarray] = field(default_factory=list)
    areas: list[int] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)

    def fits(self, box: np.ndarray, max_iou: float) -> bool:
        """Whether a new box may join the earlier ones: IoU at most ``max_iou`` with each, covering at most
        half of each, and not (nearly) concentric with any (a small circle centred on a big one reads as a
        ring, a shape in a ring's hole as a target)."""
        if not self.boxes:
            return True
        others = np.array(self.boxes)
        iou, cover = _iou_cover(box, others)
        dx = np.abs((box[0] + box[2]) - (others[:, 0] + others[:, 2])) / 2
        dy = np.abs((box[1] + box[3]) - (others[:, 1] + others[:, 3])) / 2
        concentric = (dx < _OFF_CENTRE * (others[:, 2] - others[:, 0])) & (
            dy < _OFF_CENTRE * (others[:, 3] - others[:, 1])
        )
        return bool((iou <= max_iou).all() and (cover <= _MIN_COVER).all() and not concentric.any())

    def add(self, p: _Placement, colour: np.ndarray) -> None:
        h, w = p.alpha.shape
        self.owner[p.y0 : p.y0 + h, p.x0 : p.x0 + w][p.mask] = len(self.boxes)
        self.visible = [v - n for v, n in zip(self.visible, p.hidden.tolist())] + [int(p.mask.sum())]
        self.areas.append(int(p.mask.sum()))
        self.boxes.append(p.box)
        self.colours.append(colour)


def _try_place(
    polys: Polygons, length: float, x0: float, y0: float, scene: _Scene, max_iou: float
) -> _Placement | None:
    """The placement of the polygons at continuous top-left ``(x0, y0)``, or None where it breaks a rule: too
    little inside the image, a box that does not fit, or an earlier object left less than 55% visible."""
    height, width = scene.owner.shape
    alpha, ox, oy = coverage(polys, length, x0, y0)
    total = int(alpha.sum())
    cx0, cy0 = max(ox, 0), max(oy, 0)  # crop the coverage to the image
    cx1, cy1 = min(ox + alpha.shape[1], width), min(oy + alpha.shape[0], height)
    if cx1 <= cx0 or cy1 <= cy0 or total == 0:
        return None
    a = alpha[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
    if int(a.sum()) < _MIN_INSIDE * total:
        return None
    rows = np.flatnonzero((a >= 128).any(axis=1))
    cols = np.flatnonzero((a >= 128).any(axis=0))
    if rows.size < 2 or cols.size < 2:
        return None
    # continuous box [x1, y1, x2, y2] of the pixels covered at least half
    box = np.array([cx0 + cols[0], cy0 + rows[0], cx0 + cols[-1] + 1, cy0 + rows[-1] + 1], dtype=float)
    if not scene.fits(box, max_iou):
        return None
    mask = a >= 128
    under = scene.owner[cy0 : cy0 + a.shape[0], cx0 : cx0 + a.shape[1]][mask]
    hidden = np.bincount(under[under >= 0], minlength=len(scene.boxes))
    if any(v - h < _MIN_VISIBLE * n for v, h, n in zip(scene.visible, hidden.tolist(), scene.areas)):
        return None  # it would hide too much of an earlier object
    truncated = int((alpha >= 128).sum()) > int(mask.sum())
    return _Placement(a, cx0, cy0, mask, hidden, box, truncated)


def _place(rng: np.random.Generator, polys: Polygons, length: float, may_truncate: bool, scene: _Scene,
           max_iou: float) -> _Placement | None:  # fmt: skip
    """A placement of the polygons (outline box's longest side ``length`` px) found in at most 30 random
    tries, or None (the object is dropped). Where ``may_truncate``, up to 40% of the box may lie outside."""
    height, width = scene.owner.shape
    outline = np.concatenate([pts for pts, fill in polys if fill]) * length
    bw, bh = (outline.max(axis=0) - outline.min(axis=0)).tolist()
    for _ in range(_TRIES):
        if may_truncate:
            x0 = rng.uniform(-0.4 * bw, width - 0.6 * bw)
            y0 = rng.uniform(-0.4 * bh, height - 0.6 * bh)
        else:
            x0 = rng.uniform(0.0, max(width - bw, 0.0))
            y0 = rng.uniform(0.0, max(height - bh, 0.0))
        if scene.fits(np.array([x0, y0, x0 + bw, y0 + bh]), max_iou):  # cheap test before drawing
            placement = _try_place(polys, length, x0, y0, scene, max_iou)
            if placement is not None:
                return placement
    return None


# --------------------------------------------------------------------------------------------- painting


def _pick_colour(rng: np.random.Generator, refs: list[np.ndarray], low_contrast: bool) -> np.ndarray:
    """An RGB colour (float64 (3,)) at distance >= 90 from each of ``refs`` (the local background first, then
    the objects under it), or, ``low_contrast``, at distance 14-28 from the background."""
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


def _paint(rng: np.random.Generator, canvas: np.ndarray, p: _Placement, kind: str, scene: _Scene) -> np.ndarray:
    """Blend the object into ``canvas`` in place, in a colour that stands out from what lies under it (the
    local background and the earlier objects its box overlaps), sometimes shaded; returns the colour."""
    a = p.alpha
    region = canvas[p.y0 : p.y0 + a.shape[0], p.x0 : p.x0 + a.shape[1]]
    w = a.astype(np.float32)[..., None] / 255.0
    local = (region * w).sum(axis=(0, 1)) / max(float(w.sum()), 1e-6)
    refs = [local.astype(np.float64)]
    for other, colour in zip(scene.boxes, scene.colours):
        if _iou_cover(p.box, other[None])[0][0] > 0:
            refs.append(colour)
    colour = _pick_colour(rng, refs, kind == "low-contrast")
    fill = np.broadcast_to(colour.astype(np.float32), region.shape).copy()
    if kind == "normal" and rng.random() < 0.5:  # shading: a linear gradient across the object
        ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]].astype(np.float32)
        ang = rng.uniform(0.0, 2.0 * np.pi)
        t = (xs * math.cos(ang) + ys * math.sin(ang)) / max(a.shape) - 0.5
        fill += (t * rng.uniform(20.0, 60.0))[..., None]
    region[...] = region * (1.0 - w) + np.clip(fill, 0, 255) * w
    return colour


# --------------------------------------------------------------------------------------------- one image


def render_image(config: SyntheticConfig, split: str, index: int) -> tuple[Image.Image, list[SyntheticObject]]:
    """Draw image ``index`` of ``split`` (a pure function of the arguments): the RGB image and its objects,
    boxes in devkit pixels (1-based inclusive)."""
    rng = _image_rng(config.seed, split, index)
    width = int(rng.integers(config.image_size[0], config.image_size[1] + 1))
    height = int(rng.integers(config.image_size[0], config.image_size[1] + 1))
    canvas = _background(rng, width, height)
    scene = _Scene(owner=np.full((height, width), -1, dtype=np.int16))
    objects: list[SyntheticObject] = []
    for spec in _draw_specs(rng, config):
        name = config.classes[spec.cls]
        polys = unit_polygons(rng, SHAPES[name])
        placement = _place(rng, polys, spec.size * min(width, height), spec.may_truncate, scene, config.max_iou)
        if placement is None:
            continue
        scene.add(placement, _paint(rng, canvas, placement, spec.kind, scene))
        box = tuple(int(v) for v in continuous_to_voc_pixels(placement.box))
        objects.append(SyntheticObject(name, box, spec.kind != "normal", placement.truncated))

    # pixel noise over everything (the background's texture, the objects' grain)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    return image, objects
