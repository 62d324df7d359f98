"""Colour operations on uint8 images, written for speed on the CPU.

:func:`adjust_hue` equals torchvision's ``adjust_hue`` (a rotation of the HSV hue, saturation and
value unchanged) up to one grey level of rounding, at a fraction of its cost: a hue rotation keeps
each pixel's maximum and minimum channel, so the result needs the hue alone, not a full HSV round trip.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# For hue sector i (0..5), which of (v, q, p, t) each output channel takes.
_SECTOR_TABLE = torch.tensor(
    [
        [0, 1, 2, 2, 3, 0],  # red:   v, q, p, p, t, v
        [3, 0, 0, 1, 2, 2],  # green: t, v, v, q, p, p
        [2, 2, 3, 0, 0, 1],  # blue:  p, p, t, v, v, q
    ]
)


@functools.lru_cache(maxsize=8)
def _sector_table(device: torch.device) -> torch.Tensor:
    """The sector table on ``device``, copied there once (a copy per image would wait for the GPU each time)."""
    return _SECTOR_TABLE.to(device)


def adjust_hue(image: Tensor, hue_factor: float) -> Tensor:
    """Rotate the hue of a uint8 RGB image (3, H, W) by ``hue_factor`` turns (in [-0.5, 0.5])."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    if hue_factor == 0:
        return image.clone()
    x = image.float()
    r, g, b = x.unbind(0)
    maxc = x.amax(0)
    minc = x.amin(0)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sextants [0, 6), as in colorsys / torchvision.
    hue = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    hue = torch.remainder(hue / 6.0 + hue_factor, 1.0) * 6.0
    sector = hue.floor().clamp_(0, 5)
    frac = hue - sector
    v, p = maxc, minc
    q = maxc - chroma * frac
    t = minc + chroma * frac
    candidates = torch.stack([v, q, p, t])  # (4, H, W)
    index = _sector_table(image.device)[:, sector.long()]  # (3, H, W), on the image's device
    out = torch.gather(candidates, 0, index)
    return out.round_().clamp_(0, 255).to(torch.uint8)
