"""Draw detections on an image: a colour per class, and a label with the score on a filled tag.

* Colours are fixed per label (not per image): labels 1-20 take the tutorial's 20 distinct colours
  (Sasha Trubetskoy's list), higher labels hues spaced by the golden angle. The tag's text is black or
  white, whichever contrasts more with the tag (WCAG contrast ratio).
* Line width and font size grow with the image (``sqrt(height * width)``): 1 px lines and a 10 px font
  on a 100 x 100 image, 7 px lines and a 54 px font on 2000 x 1500.
* The font is Pillow's own scalable font (``ImageFont.load_default(size=...)``, FreeType, shipped with
  Pillow >= 10.1), so no font file comes with this package.
* A tag sits above its box, or inside the box's top edge when there is no room above, and is moved
  left or up so that it stays inside the image. Boxes are drawn inside their pixels (a box
  ``x1, y1, x2, y2`` in continuous pixels covers columns ``floor(x1) .. ceil(x2) - 1``).
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

__all__ = ["draw_detections", "class_color", "PALETTE", "style_for_size"]

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
    own_names = getattr(detections, "class_names", None)
    names = []
    for i, label in enumerate(labels):
        if class_names is not None and 1 <= label <= len(class_names):
            names.append(str(class_names[label - 1]))
        elif class_names is None and own_names is not None and len(own_names) == len(labels):
            names.append(str(own_names[i]))
        else:
            names.append(f"class {label}")

    # Text height from a reference string, so that every tag of an image has the same height.
    ref = draw.textbbox((0, 0), "Ag|0.9y", font=font)
    text_top, text_h = ref[1], ref[3] - ref[1]
    pad = max(1, round(fs * 0.2))
    tag_h = text_h + 2 * pad

    order = np.argsort(scores, kind="stable")  # worst first: the best box and tag end up on top
    rects = []
    for i in order:
        x0, y0, x1, y1 = boxes[i]
        if not np.all(np.isfinite(boxes[i])):
            continue
        left = int(min(max(math.floor(x0), 0), w - 1))
        top = int(min(max(math.floor(y0), 0), h - 1))
        right = int(min(max(math.ceil(x1) - 1, left), w - 1))
        bottom = int(min(max(math.ceil(y1) - 1, top), h - 1))
        colour = class_color(labels[i])
        draw.rectangle([left, top, right, bottom], outline=colour + alpha, width=lw)
        rects.append((i, left, top, colour))
    for i, left, top, colour in rects:
        text = f"{names[i]} {scores[i]:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tag_w = (tb[2] - tb[0]) + 2 * pad
        ty = top - tag_h if top - tag_h >= 0 else top  # above the box, else inside its top edge
        ty = max(0, min(ty, h - tag_h))
        tx = max(0, min(left, w - tag_w))
        draw.rectangle([tx, ty, tx + tag_w - 1, ty + tag_h - 1], fill=colour + alpha)
        draw.text((tx + pad - tb[0], ty + pad - text_top), text, font=font, fill=text_color(colour) + alpha)
    return out
