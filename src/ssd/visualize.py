"""Draw detections on an image: a colour per class, and a label with the score on a filled tag.

* Colours are fixed per label (not per image): labels 1-20 take the tutorial's 20 distinct colours
  (Sasha Trubetskoy's list), higher labels hues spaced by the golden angle. The tag's text is black or
  white, whichever contrasts more with the tag (WCAG contrast ratio).
* Line width and font size grow with the image (``sqrt(height * width)``): 1 px lines and a 10 px font
  on a 100 x 100 image, 7 px lines and a 54 px font on 2000 x 1500.
* The font is Pillow's own scalable font (``ImageFont.load_default(size=...)``, FreeType, shipped with
  Pillow >= 10.1), so no font file comes with this package.
* Tags never cover each other (:func:`place_tags`): best score first, each tag takes the first free spot of
  above its box, inside its top edge, below its box, inside its bottom edge (each kept inside the image); a tag
  with no free spot is left out, and a last tag in a corner says how many were (``+3 labels hidden``; also
  ``image.info["hidden_labels"]``). Boxes are drawn inside their pixels (a box ``x1, y1, x2, y2`` in
  continuous pixels covers columns ``floor(x1) .. ceil(x2) - 1``).
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

__all__ = ["draw_detections", "class_color", "PALETTE", "place_tags", "style_for_size"]

PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[misc]
    for h in (
        "#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
        "#d2f53c", "#fabebe", "#008080", "#000080", "#aa6e28", "#fffac8", "#800000", "#aaffc3",
        "#808000", "#ffd8b1", "#e6beff", "#808080",
    )
)  # fmt: skip
"""Colours of labels 1..20 (label ``i`` -> ``PALETTE[i - 1]``)."""


def class_color(label: int) -> tuple[int, int, int]:
    """The fixed colour of a label (1-based; the same in every image and run)."""
    label = int(label)
    if 1 <= label <= len(PALETTE):
        return PALETTE[label - 1]
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _luminance(rgb: Sequence[int]) -> float:
    def lin(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher contrast ratio with ``background``."""
    lum = _luminance(background)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def style_for_size(height: int, width: int) -> tuple[int, int]:
    """(line width, font size) in pixels for an image of this size."""
    side = math.sqrt(max(height, 1) * max(width, 1))
    line = max(1, round(side / 250))
    font = max(10, round(side / 32))
    font = min(font, max(6, min(height, width) // 2))  # a tag never taller than half the image
    return line, font


@lru_cache(maxsize=32)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType (Aileron Regular) in Pillow >= 10.1
    except TypeError:  # pragma: no cover - Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def draw_detections(
    image,
    detections,
    class_names: Sequence[str] | None = None,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
):
    """A copy of ``image`` (PIL) with ``detections`` drawn on it.

    Args:
        image: a PIL image, in the pixels the boxes refer to (RGB and RGBA are kept, other modes are
            converted to RGB).
        detections: an :class:`~ssd.detector.ImageDetections`, or anything with ``boxes`` (K, 4)
            ``xyxy`` pixels, ``labels`` (K,) and ``scores`` (K,) (numpy arrays or tensors, e.g.
            :class:`~ssd.postprocess.Detections` scaled to pixels).
        class_names: the model's foreground classes (label ``i`` is ``class_names[i - 1]``); by
            default the detections' own ``class_names`` (one per detection) where they have them.
        line_width, font_size: override the sizes :func:`style_for_size` picks.
    Returns:
        a new PIL image.
    """
    from PIL import ImageDraw

    out = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    alpha = (255,) if out.mode == "RGBA" else ()
    w, h = out.size
    auto_line, auto_font = style_for_size(h, w)
    lw = int(line_width) if line_width else auto_line
    fs = int(font_size) if font_size else auto_font
    font = _font(fs)
    draw = ImageDraw.Draw(out)

    boxes = _as_numpy(detections.boxes).reshape(-1, 4).astype(np.float64)
    labels = _as_numpy(detections.labels).reshape(-1).astype(np.int64)
    scores = _as_numpy(detections.scores).reshape(-1).astype(np.float64)
    names = _label_names(labels, class_names, getattr(detections, "class_names", None))

    # Text height from a reference string, so that every tag of an image has the same height.
    ref = draw.textbbox((0, 0), "Ag|0.9y", font=font)
    text_top, text_h = ref[1], ref[3] - ref[1]
    pad = max(1, round(fs * 0.2))
    tag_h = text_h + 2 * pad

    order = np.argsort(scores, kind="stable")  # worst first: the best box ends up on top
    boxes_px = {}
    for i in order:
        if not np.all(np.isfinite(boxes[i])):
            continue
        boxes_px[int(i)] = _pixel_rect(boxes[i], (w, h))
        draw.rectangle(list(boxes_px[int(i)]), outline=class_color(labels[i]) + alpha, width=lw)

    best_first = [int(i) for i in order[::-1] if int(i) in boxes_px]
    texts = {i: f"{names[i]} {scores[i]:.2f}" for i in best_first}
    widths = {i: _text_width(draw, texts[i], font) + 2 * pad for i in best_first}
    spots = place_tags([boxes_px[i] for i in best_first], [(widths[i], tag_h) for i in best_first], (w, h))
    placed = [spot for spot in spots if spot is not None]
    for i, spot in zip(best_first, spots):
        if spot is not None:
            _draw_tag(draw, spot, texts[i], class_color(labels[i]), font, pad, text_top, alpha)
    hidden = len(spots) - len(placed)
    if hidden:
        note = f"+{hidden} label{'s' if hidden > 1 else ''} hidden"
        size = (_text_width(draw, note, font) + 2 * pad, tag_h)
        corner = _free_corner(size, placed, (w, h))
        if corner is not None:
            _draw_tag(draw, corner, note, (255, 255, 255), font, pad, text_top, alpha)
    out.info["hidden_labels"] = hidden
    return out


Rect = tuple[int, int, int, int]
"""A tag's rectangle: left, top, right, bottom in pixels, inclusive."""


def _label_names(labels, class_names, own_names) -> list[str]:
    """One display name per detection: ``class_names[label - 1]``, else the detection's own name, else
    ``class N``."""
    names = []
    for i, label in enumerate(labels):
        if class_names is not None and 1 <= label <= len(class_names):
            names.append(str(class_names[label - 1]))
        elif class_names is None and own_names is not None and len(own_names) == len(labels):
            names.append(str(own_names[i]))
        else:
            names.append(f"class {label}")
    return names


def _pixel_rect(box_xyxy_px, size: tuple[int, int]) -> "Rect":
    """The inclusive pixel rectangle a float ``xyxy`` box covers, clipped to an image of ``size`` (w, h)."""
    w, h = size
    x0, y0, x1, y1 = box_xyxy_px
    left = int(min(max(math.floor(x0), 0), w - 1))
    top = int(min(max(math.floor(y0), 0), h - 1))
    right = int(min(max(math.ceil(x1) - 1, left), w - 1))
    bottom = int(min(max(math.ceil(y1) - 1, top), h - 1))
    return left, top, right, bottom


def place_tags(boxes: Sequence[Rect], sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> list[Rect | None]:
    """Where each box's tag goes, in the given order (best first): the first spot of above the box, inside its top
    edge, below it, inside its bottom edge (each moved to lie inside the image) that overlaps no tag placed before;
    ``None`` when every spot is taken. ``boxes`` and the result are inclusive pixel rectangles; ``sizes`` are the
    tags' (width, height)."""
    w, h = image_size
    placed: list[Rect] = []
    result: list[Rect | None] = []
    for (left, top, right, bottom), (tw, th) in zip(boxes, sizes):
        spot = None
        for ty in (top - th, top, bottom + 1, bottom + 1 - th):
            tx, y = max(0, min(left, w - tw)), max(0, min(ty, h - th))
            rect = (tx, y, tx + tw - 1, y + th - 1)
            if not any(_overlap(rect, other) for other in placed):
                spot = rect
                break
        if spot is not None:
            placed.append(spot)
        result.append(spot)
    return result


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _free_corner(size: tuple[int, int], placed: Sequence[Rect], image_size: tuple[int, int]) -> Rect | None:
    """A corner of the image where a tag of ``size`` overlaps none of ``placed`` (bottom right first)."""
    (tw, th), (w, h) = size, image_size
    for x, y in ((w - tw, h - th), (0, h - th), (w - tw, 0), (0, 0)):
        rect = (max(0, x), max(0, y), max(0, x) + tw - 1, max(0, y) + th - 1)
        if not any(_overlap(rect, other) for other in placed):
            return rect
    return None


@lru_cache(maxsize=8192)
def _text_bbox(font, text: str) -> tuple[int, int, int, int]:
    """The text's bounding box at (0, 0), cached: a video's frames repeat the same tags ("person 0.87")."""
    return tuple(int(v) for v in font.getbbox(text))


def _text_width(draw, text: str, font) -> int:
    box = _text_bbox(font, text)
    return box[2] - box[0]


def _draw_tag(draw, rect: Rect, text: str, colour: tuple[int, int, int], font, pad: int, text_top: int,
              alpha: tuple[int, ...]) -> None:  # fmt: skip
    left = _text_bbox(font, text)[0]
    draw.rectangle(list(rect), fill=colour + alpha)
    draw.text((rect[0] + pad - left, rect[1] + pad - text_top), text, font=font, fill=text_color(colour) + alpha)
