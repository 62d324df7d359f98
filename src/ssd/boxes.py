"""Box formats and the centre-size offset coder.

Every box variable names its format and frame:

* ``xyxy``: ``(x_min, y_min, x_max, y_max)``; ``cxcywh``: ``(centre x, centre y, width, height)``.
* ``rel``: fractions of the image side (the model's frame); ``abs``: continuous pixel coordinates of
  the original image, where pixel ``i`` spans ``[i, i + 1)`` (VOC's 1-based inclusive integers
  ``xmin..xmax`` become ``[xmin - 1, xmax]``: see :mod:`ssd.data.voc`).

Encoded deltas are ``loc_offsets``: for a prior ``(pcx, pcy, pw, ph)`` and a box ``(cx, cy, w, h)``,
``((cx - pcx) / (0.1 pw), (cy - pcy) / (0.1 ph), log(w / pw) / 0.2, log(h / ph) / 0.2)``; 0.1 and 0.2
are the "variances" of the original Caffe implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor

CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """(..., 4) centre-size -> (..., 4) corners, in the same frame."""
    cxcy, wh = boxes_cxcywh[..., :2], boxes_cxcywh[..., 2:]
    return torch.cat([cxcy - 0.5 * wh, cxcy + 0.5 * wh], dim=-1)


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) centre-size, in the same frame."""
    xy0, xy1 = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    return torch.cat([(xy0 + xy1) / 2, xy1 - xy0], dim=-1)


def encode(boxes_cxcywh_rel: Tensor, priors_cxcywh_rel: Tensor) -> Tensor:
    """Boxes (..., P, 4) matched to priors (P, 4), both cxcywh_rel -> loc_offsets (..., P, 4)."""
    cxcy = (boxes_cxcywh_rel[..., :2] - priors_cxcywh_rel[..., :2]) / (
        CENTER_VARIANCE * priors_cxcywh_rel[..., 2:]
    )
    wh = torch.log(boxes_cxcywh_rel[..., 2:] / priors_cxcywh_rel[..., 2:]) / SIZE_VARIANCE
    return torch.cat([cxcy, wh], dim=-1)


def decode(loc_offsets: Tensor, priors_cxcywh_rel: Tensor, size_clamp: float | None = None) -> Tensor:
    """loc_offsets (..., P, 4) w.r.t. priors (P, 4) -> boxes_cxcywh_rel (..., P, 4).

    ``size_clamp`` bounds ``0.2 * size_offset`` before ``exp`` (torchvision uses log(1000/16)), so that
    a wild prediction cannot overflow.
    """
    cxcy = loc_offsets[..., :2] * CENTER_VARIANCE * priors_cxcywh_rel[..., 2:] + priors_cxcywh_rel[..., :2]
    dwh = loc_offsets[..., 2:] * SIZE_VARIANCE
    if size_clamp is not None:
        dwh = dwh.clamp(max=size_clamp)
    wh = torch.exp(dwh) * priors_cxcywh_rel[..., 2:]
    return torch.cat([cxcy, wh], dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) -> (...); boxes with x_max < x_min or y_max < y_min have area 0."""
    wh = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes_a_xyxy: Tensor, boxes_b_xyxy: Tensor) -> Tensor:
    """IoU of every box in ``a`` (..., A, 4) with every box in ``b`` (..., B, 4) -> (..., A, B).

    Leading dimensions broadcast (e.g. priors (P, 4) against a padded batch (N, M, 4) gives (N, P, M)).
    Pairs whose union is empty have IoU 0.
    """
    a = boxes_a_xyxy.unsqueeze(-2)  # (..., A, 1, 4)
    b = boxes_b_xyxy.unsqueeze(-3)  # (..., 1, B, 4)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
