"""Matching priors to ground truth, and the MultiBox loss, vectorised over the batch.

Ground truth arrives padded: ``gt_boxes_xyxy_rel`` (N, M, 4) and ``gt_labels`` (N, M) where label 0
marks padding (see :func:`pad_targets`). Nothing loops over images, objects or priors in Python, and
nothing waits for the device (no ``.item()``, no boolean indexing).
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd.boxes import box_area, cxcywh_to_xyxy, encode, pairwise_iou, xyxy_to_cxcywh


class Matches(NamedTuple):
    """Per prior: its class target (0 = background) and the ground-truth box it regresses to."""

    labels: Tensor  # (N, P) int64
    boxes_xyxy_rel: Tensor  # (N, P, 4); meaningful where labels > 0


class LossOutput(NamedTuple):
    """The MultiBox loss and its named parts (``total = cls + alpha * loc``)."""

    total: Tensor
    loc: Tensor
    cls: Tensor


def pad_targets(
    boxes: Sequence[Tensor], labels: Sequence[Tensor], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Lists of per-image boxes (M_i, 4) and labels (M_i,) -> padded (N, M, 4) and (N, M); label 0 pads."""
    n = len(boxes)
    m = max((len(b) for b in boxes), default=0)
    device = device or (boxes[0].device if n else None)
    dtype = boxes[0].dtype if n and boxes[0].is_floating_point() else torch.float32
    out_boxes = torch.zeros(n, m, 4, dtype=dtype, device=device)
    out_labels = torch.zeros(n, m, dtype=torch.int64, device=device)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        out_boxes[i, : len(b)] = b
        out_labels[i, : len(l)] = l
    return out_boxes, out_labels


def match(
    priors_cxcywh_rel: Tensor,
    gt_boxes_xyxy_rel: Tensor,
    gt_labels: Tensor,
    threshold: float = 0.5,
    force_best_prior: bool = True,
) -> Matches:
    """Assign every prior of every image a ground-truth object or background.

    Rules: padding (label 0) and zero-area boxes are dropped first; each prior takes the object
    with which it has the highest IoU (the lowest index on ties); each object then claims its own
    best prior (when several objects claim the same prior, the one with the higher IoU with it
    keeps it, the lower index on ties); priors whose IoU is under ``threshold`` are background,
    except claimed ones.

    Args:
        priors_cxcywh_rel: (P, 4). gt_boxes_xyxy_rel: (N, M, 4). gt_labels: (N, M), 0 = padding.
    """
    n, m = gt_labels.shape
    p = priors_cxcywh_rel.shape[0]
    device = gt_labels.device
    if m == 0:
        return Matches(
            torch.zeros(n, p, dtype=torch.int64, device=device),
            torch.zeros(n, p, 4, dtype=gt_boxes_xyxy_rel.dtype, device=device),
        )
    valid = (gt_labels > 0) & (box_area(gt_boxes_xyxy_rel) > 0)  # (N, M)
    iou = pairwise_iou(cxcywh_to_xyxy(priors_cxcywh_rel), gt_boxes_xyxy_rel)  # (N, P, M)
    iou = iou.masked_fill(~valid.unsqueeze(1), -1.0)
    best_iou, best_obj = iou.max(dim=2)  # (N, P)

    if force_best_prior:
        obj_iou, obj_prior = iou.max(dim=1)  # (N, M): each object's best prior
        claims = valid & (obj_iou > 0)
        # One flat slot per (image, prior) plus a dump slot for objects that claim nothing.
        dump = n * p
        slot = torch.where(claims, torch.arange(n, device=device).unsqueeze(1) * p + obj_prior, dump)
        slot, obj_iou = slot.reshape(-1), obj_iou.reshape(-1)
        obj_idx = torch.arange(m, device=device).repeat(n)
        win_iou = torch.full((dump + 1,), -2.0, dtype=iou.dtype, device=device)
        win_iou = win_iou.scatter_reduce(0, slot, obj_iou, "amax")
        # Among the claimants with the winning IoU, the lowest object index.
        contender = torch.where(obj_iou == win_iou[slot], obj_idx, m)
        win_obj = torch.full((dump + 1,), m, dtype=torch.int64, device=device)
        win_obj = win_obj.scatter_reduce(0, slot, contender, "amin")[:dump].view(n, p)
        claimed = win_obj < m
        best_obj = torch.where(claimed, win_obj, best_obj)
        best_iou = torch.where(claimed, torch.ones_like(best_iou), best_iou)

    labels = torch.gather(gt_labels, 1, best_obj)
    labels = torch.where(best_iou >= threshold, labels, 0)
    boxes = torch.gather(gt_boxes_xyxy_rel, 1, best_obj.unsqueeze(-1).expand(n, p, 4))
    return Matches(labels, boxes)


def hard_negative_mask(cls_loss: Tensor, positives: Tensor, neg_pos_ratio: float) -> Tensor:
    """Per image, the ``neg_pos_ratio * positives`` negatives with the highest loss (N, P) bool.

    At most all negatives are taken; an image without positives contributes none.
    """
    loss = cls_loss.detach().masked_fill(positives, float("-inf"))
    order = loss.argsort(dim=1, descending=True)
    # The rank of each prior by loss: the inverse permutation of `order`, by one scatter (what a second
    # argsort of `order` gives, without its sort).
    positions = torch.arange(loss.shape[1], device=loss.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    num_pos = positives.sum(dim=1, keepdim=True)
    num_neg = torch.minimum(
        (neg_pos_ratio * num_pos).to(torch.int64), positives.shape[1] - num_pos
    )
    return (rank < num_neg) & ~positives


class MultiBoxLoss(nn.Module):
    """The SSD training loss: localisation on positives plus confidence with hard negative mining.

    ``loc``: smooth L1 (beta 1) of positives' offsets summed over coordinates and priors (the paper),
    or with ``loc_loss="l1_mean"`` the tutorial's ``nn.L1Loss`` mean over the 4 x N_pos coordinates.
    ``cls``: cross-entropy summed over positives and the hardest negatives (``neg_pos_ratio`` per
    positive, per image). ``loc`` (paper variant) and ``cls`` are divided by max(1, positives in the
    batch); ``total = cls + alpha * loc``.

    ``reduce_positives`` (for data-parallel training) maps the local positive count to the divisor,
    e.g. the count summed over all processes divided by the world size, so that averaging the
    processes' gradients gives the gradient of the global batch.
    """

    def __init__(
        self,
        priors_cxcywh_rel: Tensor,
        threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        alpha: float = 1.0,
        loc_loss: Literal["smooth_l1", "l1_mean"] = "smooth_l1",
        force_best_prior: bool = True,
    ) -> None:
        super().__init__()
        if loc_loss not in ("smooth_l1", "l1_mean"):
            raise ValueError(f"loc_loss must be smooth_l1 or l1_mean, not {loc_loss!r}")
        self.register_buffer("priors_cxcywh", priors_cxcywh_rel.clone(), persistent=False)
        self.threshold = threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.loc_loss = loc_loss
        self.force_best_prior = force_best_prior

    def forward(
        self,
        loc_offsets: Tensor,
        cls_logits: Tensor,
        gt_boxes_xyxy_rel: Tensor,
        gt_labels: Tensor,
        reduce_positives: Callable[[Tensor], Tensor] | None = None,
    ) -> LossOutput:
        """loc_offsets (N, P, 4), cls_logits (N, P, C), padded targets (N, M, 4) and (N, M)."""
        # Match and encode in at least float32: targets must not depend on the precision of the
        # predictions (under autocast the heads give float16/bfloat16, which flips matches).
        loc_offsets = loc_offsets.to(torch.promote_types(loc_offsets.dtype, torch.float32))
        priors = self.priors_cxcywh.to(loc_offsets.dtype)
        matches = match(priors, gt_boxes_xyxy_rel.to(priors.dtype), gt_labels, self.threshold, self.force_best_prior)
        pos = matches.labels > 0  # (N, P)
        num_pos = pos.sum()
        divisor = reduce_positives(num_pos) if reduce_positives is not None else num_pos.clamp(min=1)

        # Negatives regress to their own prior (zero offsets) so no log(0) appears, then are masked.
        target_cxcywh = torch.where(pos.unsqueeze(-1), xyxy_to_cxcywh(matches.boxes_xyxy_rel), priors)
        loc_target = encode(target_cxcywh, priors)
        if self.loc_loss == "smooth_l1":
            per_coord = F.smooth_l1_loss(loc_offsets, loc_target, reduction="none", beta=1.0)
            loc = (per_coord.sum(-1) * pos).sum() / divisor
        else:
            per_coord = (loc_offsets - loc_target).abs()
            loc = (per_coord.sum(-1) * pos).sum() / (4 * divisor)

        n, p, c = cls_logits.shape
        logits = cls_logits.reshape(n * p, c).to(torch.promote_types(cls_logits.dtype, torch.float32))
        ce = F.cross_entropy(logits, matches.labels.reshape(-1), reduction="none")
        ce = ce.view(n, p)
        hard_neg = hard_negative_mask(ce, pos, self.neg_pos_ratio)
        cls = (ce * (pos | hard_neg)).sum() / divisor
        return LossOutput(cls + self.alpha * loc, loc, cls)
