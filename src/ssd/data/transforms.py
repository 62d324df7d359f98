"""The training augmentations, following the tutorial's code, and the evaluation transform.

Training (the tutorial's random choices and ranges: the paper's zoom-out, crop and flip, and the tutorial's
photometric distortions, which differ from the original Caffe code's: docs/design.md; the choices' frequencies and
the geometry are tested against those rules in tests/test_transforms.py, the pixels are not compared with the
tutorial's, which works on PIL images and rounds differently), on a uint8 image (3, H, W) with boxes
in continuous pixels ``xyxy_abs``:

1. photometric distortions in random order, each with probability 0.5: brightness, contrast and
   saturation factors uniform in [0.5, 1.5], hue shift uniform in [-18, 18] / 255;
2. zoom out with probability 0.5: the image is placed at a random position on a canvas 1x-4x its
   size, filled with the model's mean colour;
3. the SSD random crop: a minimum IoU drawn uniformly from {0, 0.1, 0.3, 0.5, 0.7, 0.9, no crop};
   up to 50 tries of a window whose sides are 0.3-1 of the (zoomed) image with aspect ratio in
   (0.5, 2), at least one object with that IoU and at least one object centre inside; objects whose
   centres fall outside are dropped, the rest clipped; after 50 failed tries a new option is drawn;
4. horizontal flip with probability 0.5; 5. resize to the model's input.

Steps 2-5 are geometry; they are composed into one window on a virtual canvas, so the image is
resampled once and a 4x canvas is never materialised: the visible part of the image is resized
into its place on an S x S canvas of the mean colour (equal to doing the steps one by one, up to
the sub-pixel rounding of where the image's border lands).

``torchvision.transforms.v2.RandomPhotometricDistort`` uses other ranges, a fixed order and a
channel swap, so it cannot reproduce step 1; the crop here follows the tutorial's sampling (both
sides drawn independently, IoU against all objects), which also makes its draws countable in tests.

All randomness comes from a ``random.Random`` passed in, seeded per sample by the dataset from
(seed, epoch, index): data order and augmentations repeat exactly, with any number of workers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from ssd.data.color import adjust_hue

CROP_MIN_IOUS: tuple[float | None, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, None)
"""The crop options; ``None`` is "no crop"."""


class Target(NamedTuple):
    """Objects of one image: boxes (M, 4) float32, labels (M,) int64, difficult (M,) bool."""

    boxes: Tensor
    labels: Tensor
    difficult: Tensor

    def select(self, keep: Tensor) -> "Target":
        return Target(self.boxes[keep], self.labels[keep], self.difficult[keep])


@dataclass(frozen=True)
class PhotometricParams:
    """Which distortions apply, in which order, with which factors (``None`` = skipped)."""

    order: tuple[str, ...]
    factors: dict


class PhotometricDistort:
    """Brightness, contrast, saturation and hue in random order, each with probability ``p``."""

    OPS = ("brightness", "contrast", "saturation", "hue")

    def __init__(self, p: float = 0.5, low: float = 0.5, high: float = 1.5, hue_delta: float = 18 / 255) -> None:
        self.p, self.low, self.high, self.hue_delta = p, low, high, hue_delta

    def sample(self, rng: random.Random) -> PhotometricParams:
        order = list(self.OPS)
        rng.shuffle(order)
        factors = {}
        for op in order:
            if rng.random() < self.p:
                if op == "hue":
                    factors[op] = rng.uniform(-self.hue_delta, self.hue_delta)
                else:
                    factors[op] = rng.uniform(self.low, self.high)
            else:
                factors[op] = None
        return PhotometricParams(tuple(order), factors)

    @staticmethod
    def apply(image: Tensor, params: PhotometricParams) -> Tensor:
        for op in params.order:
            f = params.factors[op]
            if f is None:
                continue
            if op == "brightness":
                image = TF.adjust_brightness(image, f)
            elif op == "contrast":
                image = TF.adjust_contrast(image, f)
            elif op == "saturation":
                image = TF.adjust_saturation(image, f)
            else:
                image = adjust_hue(image, f)  # torchvision's, up to rounding, several times faster
        return image

    def __call__(self, image: Tensor, rng: random.Random) -> Tensor:
        return self.apply(image, self.sample(rng))


def sample_zoom_out(height: int, width: int, max_scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """Canvas (height, width) and the image's (top, left) on it, for a scale uniform in [1, max_scale]."""
    scale = rng.uniform(1.0, max_scale)
    canvas_h, canvas_w = int(scale * height), int(scale * width)
    top = rng.randint(0, canvas_h - height)
    left = rng.randint(0, canvas_w - width)
    return canvas_h, canvas_w, top, left


def _iou_with_window(boxes: Tensor, window: Tensor) -> Tensor:
    lt = torch.maximum(boxes[:, :2], window[:2])
    rb = torch.minimum(boxes[:, 2:], window[2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_w = (window[2] - window[0]) * (window[3] - window[1])
    return inter / (area_b + area_w - inter)


def sample_iou_crop(
    boxes: Tensor,
    height: int,
    width: int,
    rng: random.Random,
    trials: int = 50,
    min_scale: float = 0.3,
    options: Sequence[float | None] = CROP_MIN_IOUS,
    draws: list | None = None,
) -> tuple[Tensor, Tensor] | None:
    """The SSD random crop's window ``[left, top, right, bottom]`` and the mask of kept objects,
    or ``None`` for no crop. Every option drawn is appended to ``draws`` when given."""
    if len(boxes) == 0:
        return None
    boxes = boxes.float()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    while True:
        min_iou = options[rng.randrange(len(options))]
        if draws is not None:
            draws.append(min_iou)
        if min_iou is None:
            return None
        for _ in range(trials):
            new_h = int(rng.uniform(min_scale, 1.0) * height)
            new_w = int(rng.uniform(min_scale, 1.0) * width)
            if new_w < 1 or new_h < 1 or not 0.5 < new_h / new_w < 2.0:
                continue
            left = rng.randint(0, width - new_w)
            top = rng.randint(0, height - new_h)
            window = torch.tensor([left, top, left + new_w, top + new_h], dtype=torch.float32)
            if float(_iou_with_window(boxes, window).max()) < min_iou:
                continue
            inside = (
                (centres[:, 0] > window[0]) & (centres[:, 0] < window[2])
                & (centres[:, 1] > window[1]) & (centres[:, 1] < window[3])
            )  # fmt: skip
            if not bool(inside.any()):
                continue
            return window, inside


def render_window(
    image: Tensor, canvas_hw: tuple[int, int], image_tl: tuple[int, int], window: Tensor,
    size: int, fill: Sequence[float], flip: bool,
) -> Tensor:
    """The S x S float image that a window of a virtual canvas shows.

    The canvas (``canvas_hw``) holds ``image`` (uint8, 3 x H x W) at ``image_tl`` (top, left) and the
    ``fill`` colour elsewhere; ``window`` is ``[left, top, right, bottom]`` in canvas pixels.
    """
    _, h, w = image.shape
    top, left = image_tl
    wl, wt, wr, wb = (float(v) for v in window)
    sx, sy = size / (wr - wl), size / (wb - wt)
    # The part of the image inside the window, in image pixels.
    x0, y0 = max(wl - left, 0.0), max(wt - top, 0.0)
    x1, y1 = min(wr - left, float(w)), min(wb - top, float(h))
    # On the image's device: the GPU pipeline (ssd.data.gpu_pipeline) renders decoded images where they are.
    # Filled channel by channel from Python numbers: no host-to-device copy (which would wait for the GPU).
    out = torch.empty(3, size, size, dtype=torch.float32, device=image.device)
    for channel, value in zip(out, fill):
        channel.fill_(float(value))
    if x1 > x0 and y1 > y0:
        ix0, iy0, ix1, iy1 = int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1)), int(math.ceil(y1))
        # Where that part lands on the output, rounded to whole pixels.
        ox0 = int(round((left + ix0 - wl) * sx))
        oy0 = int(round((top + iy0 - wt) * sy))
        ox1 = int(round((left + ix1 - wl) * sx))
        oy1 = int(round((top + iy1 - wt) * sy))
        ox0, oy0, ox1, oy1 = max(ox0, 0), max(oy0, 0), min(ox1, size), min(oy1, size)
        if ox1 > ox0 and oy1 > oy0:
            part = image[:, iy0:iy1, ix0:ix1]
            part = TF.resize(part, [oy1 - oy0, ox1 - ox0], antialias=True)
            out[:, oy0:oy1, ox0:ox1] = part.float() / 255.0
    if flip:
        out = out.flip(-1)
    return out


@dataclass(frozen=True, eq=False)
class TrainParams:
    """Everything :class:`TrainTransform` draws for one sample (see :meth:`TrainTransform.sample_params`).

    Attributes:
        photometric: the photometric distortions, or ``None`` when they are off.
        zoomed: whether zoom-out was chosen.
        canvas_hw: (height, width) of the (virtual) canvas; the image's own size without zoom-out.
        image_tl: (top, left) of the image on the canvas.
        window: ``[left, top, right, bottom]`` in canvas pixels: the crop, or the whole canvas.
        keep: mask of the objects whose centres lie strictly inside the crop, ``None`` without a crop.
        flip: whether the output is mirrored horizontally.
        crop_draws: every crop option drawn (a minimum IoU, or ``None`` for "no crop").
    """

    photometric: PhotometricParams | None
    zoomed: bool
    canvas_hw: tuple[int, int]
    image_tl: tuple[int, int]
    window: Tensor
    keep: Tensor | None
    flip: bool
    crop_draws: tuple[float | None, ...] = ()


class TrainTransform:
    """The training augmentation (see the module docstring) to an S x S image in [0, 1] and
    boxes ``xyxy_rel``. ``mirror_boxes=False`` flips images but not boxes: a deliberately broken
    variant that tests use to show the learning check can fail.

    ``transform(image, target, rng)`` is ``apply(image, target, sample_params(H, W, target, rng))``:
    the random choices are drawn first (in a fixed order from ``rng``), then applied.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        photometric: bool = True,
        zoom_out: float = 4.0,
        crop: bool = True,
        flip: bool = True,
        mirror_boxes: bool = True,
        crop_trials: int = 50,
    ) -> None:
        self.size = size
        self.mean = tuple(float(m) for m in mean)
        self.photometric = PhotometricDistort() if photometric else None
        self.zoom_out = zoom_out
        self.crop = crop
        self.flip = flip
        self.mirror_boxes = mirror_boxes
        self.crop_trials = crop_trials

    def sample_params(self, height: int, width: int, target: Target, rng: random.Random) -> TrainParams:
        """Draw the photometric distortions, zoom-out, crop and flip for an image of this size."""
        photometric = self.photometric.sample(rng) if self.photometric is not None else None
        boxes = target.boxes.float().reshape(-1, 4)
        canvas_h, canvas_w, top, left = height, width, 0, 0
        zoomed = self.zoom_out > 1 and rng.random() < 0.5
        if zoomed:
            canvas_h, canvas_w, top, left = sample_zoom_out(height, width, self.zoom_out, rng)
            boxes = boxes + torch.tensor([left, top, left, top], dtype=torch.float32)
        window = torch.tensor([0, 0, canvas_w, canvas_h], dtype=torch.float32)
        keep = None
        draws: list = []
        if self.crop:
            crop = sample_iou_crop(boxes, canvas_h, canvas_w, rng, trials=self.crop_trials, draws=draws)
            if crop is not None:
                window, keep = crop
        flip = self.flip and rng.random() < 0.5
        return TrainParams(photometric, zoomed, (canvas_h, canvas_w), (top, left), window, keep, flip, tuple(draws))

    def apply_target(self, target: Target, params: TrainParams) -> Target:
        """The box part of :meth:`apply`: objects in continuous pixels of the stored image to ``xyxy_rel`` of the
        output, dropping those the crop leaves out. Needs no pixels, so loader workers can run it on the CPU while
        the image is decoded and rendered elsewhere (:mod:`ssd.data.gpu_pipeline`)."""
        top, left = params.image_tl
        window = params.window
        boxes = target.boxes.float().reshape(-1, 4) + torch.tensor([left, top, left, top], dtype=torch.float32)
        if params.keep is not None:
            target = target.select(params.keep)
            boxes = boxes[params.keep]
            boxes = torch.cat([torch.maximum(boxes[:, :2], window[:2]), torch.minimum(boxes[:, 2:], window[2:])], 1)
        # Boxes relative to the window, as fractions of it.
        wl, wt, wr, wb = window.tolist()
        boxes_rel = (boxes - torch.tensor([wl, wt, wl, wt])) / torch.tensor([wr - wl, wb - wt, wr - wl, wb - wt])
        if params.flip and self.mirror_boxes:
            boxes_rel = torch.stack([1 - boxes_rel[:, 2], boxes_rel[:, 1], 1 - boxes_rel[:, 0], boxes_rel[:, 3]], 1)
        boxes_rel = boxes_rel.clamp(0.0, 1.0)
        keep = (boxes_rel[:, 2] > boxes_rel[:, 0]) & (boxes_rel[:, 3] > boxes_rel[:, 1])
        return Target(boxes_rel, target.labels, target.difficult).select(keep)

    def render(self, image: Tensor, params: TrainParams) -> Tensor:
        """The pixel part of :meth:`apply`: the photometric distortions, then the one geometric resampling, of a
        uint8 image (3, H, W) to the S x S float output, on the image's device (a GPU decodes and renders there)."""
        if params.photometric is not None:
            image = PhotometricDistort.apply(image, params.photometric)
        return render_window(image, params.canvas_hw, params.image_tl, params.window, self.size, self.mean, params.flip)

    def apply(self, image: Tensor, target: Target, params: TrainParams) -> tuple[Tensor, Target]:
        """Apply drawn parameters to a uint8 image (3, H, W) and its objects (continuous pixels):
        :meth:`render` and :meth:`apply_target`, which do not depend on each other."""
        return self.render(image, params), self.apply_target(target, params)

    def __call__(self, image: Tensor, target: Target, rng: random.Random) -> tuple[Tensor, Target]:
        _, h, w = image.shape
        return self.apply(image, target, self.sample_params(h, w, target, rng))


class EvalTransform:
    """Resize to S x S as the model expects (``mode``, :func:`resize_for_model`) and scale to [0, 1]; boxes to
    ``xyxy_rel``."""

    def __init__(self, size: int, mode: str = "antialias") -> None:
        self.size = size
        self.mode = mode

    def __call__(self, image: Tensor, target: Target, rng: random.Random | None = None) -> tuple[Tensor, Target]:
        _, h, w = image.shape
        out = self.resize(image).float() / 255.0
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        return out, Target(target.boxes.float() / scale, target.labels, target.difficult)

    def resize(self, image: Tensor) -> Tensor:
        """The uint8 image (3, H, W) resized to (3, S, S) in 0-255, on any device: ``/ 255`` gives the model's
        input. uint8 in ``"antialias"`` mode (a quarter of the bytes through a loader), float32 in ``"bilinear"``."""
        if self.mode == "bilinear":
            size = (self.size, self.size)
            return torch.nn.functional.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False)[0]
        return TF.resize(image, [self.size, self.size], antialias=True)


def resize_for_model(image: Tensor, size: int, mode: str = "antialias") -> Tensor:
    """uint8 RGB (3, H, W) -> float32 (3, S, S) in [0, 1], as a model of this ``input_resize`` was trained to see
    it. ``"antialias"``: the uint8 image resized with antialiasing (ours), then scaled. ``"bilinear"``: the float
    image resized bilinearly without antialiasing, ``align_corners=False`` (torchvision's detection transform,
    which normalises first: a per-channel affine map, so the order changes float rounding only)."""
    return EvalTransform(size, mode).resize(image).float() / 255.0
