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


MatchRule = Literal["bipartite", "tutorial", "threshold"]
MATCH_RULES: tuple[str, ...] = ("bipartite", "tutorial", "threshold")


def match(
    priors_cxcywh_rel: Tensor,
    gt_boxes_xyxy_rel: Tensor,
    gt_labels: Tensor,
    threshold: float = 0.5,
    rule: MatchRule = "bipartite",
) -> Matches:
    """Assign every prior of every image a ground-truth object or background.

    Padding (label 0) and zero-area boxes are dropped first. Then, by ``rule``:

    - ``"bipartite"`` (the paper's, from MultiBox, and the original Caffe SSD's ``MatchBBox``): objects take
      distinct priors greedily, the (object, prior) pair of highest IoU first, among pairs that overlap at all (ties:
      the lower prior index, then the lower object index, Caffe's loop order), until every object has one or none
      is left; so an object whose best prior another object took gets its next best. Then every other prior takes
      the object it overlaps most (the lower index on ties) if that IoU reaches ``threshold``.
    - ``"tutorial"`` (the tutorial's and torchvision's): each prior takes the object it overlaps most if the IoU
      reaches ``threshold``; then each object claims its best prior (the lower prior index on ties) whatever the
      IoU, and where several objects claim one prior the last of them keeps it.
    - ``"threshold"``: the threshold alone, no claims (only to show what the claims are for).

    No Python loop over images or priors and no host synchronisation; ``"bipartite"`` runs one round per object
    slot of the batch (M), on each object's M best priors.

    Args:
        priors_cxcywh_rel: (P, 4). gt_boxes_xyxy_rel: (N, M, 4). gt_labels: (N, M), 0 = padding.
    """
    if rule not in MATCH_RULES:
        raise ValueError(f"rule must be one of {', '.join(MATCH_RULES)}, not {rule!r}")
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
    best_iou, best_obj = iou.max(dim=2)  # (N, P): each prior's best object
    if rule == "tutorial":
        claimed_by = _last_claims(iou, valid)
    elif rule == "bipartite":
        claimed_by = _bipartite_claims(iou)
    else:
        claimed_by = torch.full((n, p), -1, dtype=torch.int64, device=device)
    claimed = claimed_by >= 0
    best_obj = torch.where(claimed, claimed_by, best_obj)
    labels = torch.gather(gt_labels, 1, best_obj)
    labels = torch.where(claimed | (best_iou >= threshold), labels, 0)
    boxes = torch.gather(gt_boxes_xyxy_rel, 1, best_obj.unsqueeze(-1).expand(n, p, 4))
    return Matches(labels, boxes)


def _last_claims(iou: Tensor, valid: Tensor) -> Tensor:
    """The tutorial's claims: each valid object its best prior (the first on ties); where several claim one prior,
    the highest object index. Returns (N, P) the claiming object per prior, -1 where none."""
    n, p, m = iou.shape
    obj_prior = iou.argmax(dim=1)  # (N, M)
    dump = n * p  # one flat slot per (image, prior), plus one for invalid objects
    slot = torch.where(valid, torch.arange(n, device=iou.device).unsqueeze(1) * p + obj_prior, dump).reshape(-1)
    obj_idx = torch.arange(m, device=iou.device).repeat(n)
    winner = torch.full((dump + 1,), -1, dtype=torch.int64, device=iou.device)
    return winner.scatter_reduce(0, slot, obj_idx, "amax")[:dump].view(n, p)


def _bipartite_claims(iou: Tensor) -> Tensor:
    """Greedy bipartite matching of objects to priors (see :func:`match`). Returns (N, P) the object matched to each
    prior, -1 where none.

    An object can lose at most M - 1 priors to others, so its match lies among its M best priors: each round looks
    at those (N, M objects, K = M candidates), takes the pair of highest IoU per image (ties: the lower prior
    index, then the lower object index), and retires its object and prior."""
    n, p, m = iou.shape
    k = min(m, p)
    # Each object's K best priors, best first, the lower prior index first on ties (a stable sort).
    order = torch.sort(iou.transpose(1, 2), dim=2, descending=True, stable=True).indices[..., :k]  # (N, M, K)
    cand_iou = torch.gather(iou.transpose(1, 2), 2, order)  # (N, M, K)
    alive = cand_iou > 0  # pairs that overlap at all (padding and invalid objects have -1)
    obj_ids = torch.arange(m, device=iou.device).view(1, m, 1).expand(n, m, k)
    tie_key = order * m + obj_ids  # the lower prior, then the lower object
    big = p * m
    claimed_by = torch.full((n, p + 1), -1, dtype=torch.int64, device=iou.device)  # column p: a dump
    rows = torch.arange(n, device=iou.device)
    for _ in range(m):
        score = cand_iou.masked_fill(~alive, -1.0)
        top = score.flatten(1).amax(dim=1, keepdim=True)  # (N, 1)
        key = torch.where(alive & (score == top.unsqueeze(-1)), tie_key, big).flatten(1)
        choice = key.argmin(dim=1)  # (N,)
        found = key.gather(1, choice.unsqueeze(1)).squeeze(1) < big
        obj = choice // k
        prior = order.flatten(1).gather(1, choice.unsqueeze(1)).squeeze(1)
        claimed_by[rows, torch.where(found, prior, p)] = torch.where(found, obj, -1)
        # Retire the object (all its candidates) and the prior (in every object's candidates).
        retire = found.view(n, 1, 1) & ((obj_ids == obj.view(n, 1, 1)) | (order == prior.view(n, 1, 1)))
        alive = alive & ~retire
    return claimed_by[:, :p]


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
        matching: MatchRule = "bipartite",
    ) -> None:
        super().__init__()
        if loc_loss not in ("smooth_l1", "l1_mean"):
            raise ValueError(f"loc_loss must be smooth_l1 or l1_mean, not {loc_loss!r}")
        self.register_buffer("priors_cxcywh", priors_cxcywh_rel.clone(), persistent=False)
        self.threshold = threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.loc_loss = loc_loss
        if matching not in MATCH_RULES:
            raise ValueError(f"matching must be one of {', '.join(MATCH_RULES)}, not {matching!r}")
        self.matching = matching

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
        matches = match(priors, gt_boxes_xyxy_rel.to(priors.dtype), gt_labels, self.threshold, self.matching)
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
