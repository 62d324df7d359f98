"""From raw network outputs to detections: softmax, decode, threshold, per-class NMS, top-k.

Two routes, with the same detections (tested exactly)::

    loc_offsets (N, P, 4), cls_logits (N, P, C)
      -> postprocess()                     candidates above min_score decoded, NMS, top-k    -> Detections
      -> decode_outputs() / DecodedSSD     boxes_xyxy_rel (N, P, 4), scores (N, P, C) softmax (the ONNX graph)
         -> postprocess_decoded()          threshold, suppressed classes, NMS, top-k         -> Detections

The whole batch is processed at once: candidates of every image and class are gathered in one
pass, suppressed with exact greedy NMS per (image, class) group, and the best ``top_k`` per image
are kept. NMS runs on the original coordinates of each group (no coordinate-offset trick, whose
float32 rounding can flip decisions near the threshold and which negative coordinates break), so
the result equals a slow per-image, per-class reference exactly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from ssd.boxes import cxcywh_to_xyxy, decode
from ssd.config import DecodeConfig
from ssd.settings import check_setting


class Detections(NamedTuple):
    """Detections of one image, best score first.

    ``boxes`` are ``xyxy_rel`` (fractions of the image) or, when image sizes were given,
    ``xyxy_abs`` (pixels of the original image); ``labels`` are in 1..C-1 (0 is background).
    """

    boxes: Tensor  # (K, 4)
    labels: Tensor  # (K,) int64
    scores: Tensor  # (K,)


# Largest padded (groups x K x K) block that matrix NMS builds at once: 2**24 pairs is 64 MB of float32
# IoU. Bigger inputs are cut into chunks of groups; a single group larger than this uses torchvision's nms.
MATRIX_NMS_PAIRS = 1 << 24

# On the CPU, groups up to this many candidates go through the matrix method, larger ones the loop.
CPU_MATRIX_MAX_GROUP = 64


def check_settings(min_score: Any, max_overlap: Any, top_k: Any, prefix: str = "") -> None:
    """The decoding settings' ranges (:func:`ssd.settings.check_setting`, the one rule of every command and
    API): scores and overlaps in [0, 1], top_k a positive integer. Raises :class:`~ssd.errors.SSDError` naming
    the setting as ``prefix + name`` (``--`` and dashes for the command line)."""
    for name, value in (("min_score", min_score), ("max_overlap", max_overlap), ("top_k", top_k)):
        check_setting(name, value, prefix)


def grouped_nms(
    boxes_xyxy: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    max_per_group: int | None = None,
    method: str = "auto",
) -> Tensor:
    """Exact greedy NMS within each group; boxes of different groups never suppress each other.

    Two exact methods give the same result:

    - ``"matrix"``: all groups at once. Each group's candidates, best first, are laid out in one padded
      (groups, K, K) IoU block and greedy NMS is solved for every group together (:func:`_matrix_nms`): a
      fixed number of kernel launches and a host sync per round, however many groups. The GPU default.
    - ``"loop"``: one torchvision ``nms`` call per group. Faster on a CPU, where that kernel skips the
      suppressed boxes and launches cost nothing, and the padded block's K x K work does not pay off
      (docs/performance.md). The CPU default.

    Args:
        boxes_xyxy: (K, 4); scores: (K,); groups: (K,) integer group ids.
        max_per_group: only the best-scoring this many boxes of each group take part (a candidate cap).
        method: ``"auto"`` (matrix on accelerators, loop on the CPU), ``"matrix"`` or ``"loop"``.
    Returns:
        indices of the kept boxes, ordered by group, then by descending score.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes_xyxy.device)
    # Sort by (group, -score): a stable sort by score, then a stable sort by group.
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(groups[by_score], stable=True).indices]
    _, inverse, counts = torch.unique_consecutive(groups[order], return_inverse=True, return_counts=True)
    if max_per_group is not None:
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(order.numel(), device=order.device) - starts[inverse]
        order = order[within < max_per_group]
        counts = counts.clamp(max=max_per_group)
    if method == "auto":
        # The CPU pays for the padded block's K x K work but nothing for launches: the matrix method wins
        # while groups are small (docs/performance.md), the loop when they are large.
        small = boxes_xyxy.device.type != "cpu" or int(counts.max()) <= CPU_MATRIX_MAX_GROUP
        method = "matrix" if small else "loop"
    if method not in ("matrix", "loop"):
        raise ValueError(f"method must be auto, matrix or loop, not {method!r}")
    if max_per_group is not None and max_per_group < 1:
        raise ValueError(f"max_per_group must be at least 1, got {max_per_group}")
    if method == "loop":
        return _looped_nms(boxes_xyxy, scores, order, counts, iou_threshold)
    # After the cap, group g's candidates are order[first[g] : first[g] + counts[g]].
    first = torch.cumsum(counts, 0) - counts
    keep = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    boxes_sorted = boxes_xyxy[order]
    # Groups, largest first, in chunks padded to their own largest group: padding every group to the widest
    # would cost (groups x widest^2) pairs when a few groups are much larger than the rest.
    by_size = torch.sort(counts, descending=True, stable=True).indices
    sizes = counts[by_size].tolist()
    lo = 0
    while lo < len(sizes):
        width = sizes[lo]
        hi = lo + max(1, MATRIX_NMS_PAIRS // (width * width))
        chunk = by_size[lo:hi]
        if width * width > MATRIX_NMS_PAIRS:  # one huge group: torchvision's kernel
            pos = first[chunk[0]] + torch.arange(width, device=order.device)
            keep[pos[nms(boxes_sorted[pos], scores[order[pos]], iou_threshold)]] = True
        else:
            slot = torch.arange(width, device=order.device)
            valid = slot < counts[chunk][:, None]
            pos = (first[chunk][:, None] + slot).clamp_(max=order.numel() - 1)
            kept = _matrix_nms(boxes_sorted[pos], valid, iou_threshold)
            keep[pos[valid]] = kept[valid]
        lo = hi
    return order[keep]


def _matrix_nms(boxes: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """Greedy NMS of many groups at once.

    Args:
        boxes: (G, K, 4) each group's candidates, best score first, padded; valid: (G, K) the real ones.
    Returns:
        (G, K) which are kept.

    Greedy NMS keeps box i when no kept, better box of its group overlaps it by more than the threshold. That
    rule defines ``keep`` uniquely, one rank after the other, so it is the only fixed point of
    ``keep = valid & ~any_j(keep[j] & overlaps[j, i])`` over better j; iterating that map from "keep all"
    makes every rank up to t final after t rounds, and it stops as soon as a round changes nothing (chains
    of suppression are short, so a handful of rounds in practice). The IoU is computed with the same float32
    operations as torchvision's nms kernel, so decisions near the threshold agree with it.
    """
    width = boxes.shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
    inter = w.mul_(h)
    iou = inter / ((area[:, :, None] + area[:, None, :]) - inter)
    # overlaps[g, j, i]: better box j (j < i) would suppress box i. torchvision's CPU kernel compares the
    # float32 IoU with the threshold in double precision; a float32 tensor compared with a Python float
    # rounds the threshold to float32 instead (0.3 becomes 0.30000001, so an IoU of exactly float32(0.3)
    # would survive). Comparing with the largest float32 not above the threshold gives the double result.
    better = torch.ones(width, width, dtype=torch.bool, device=boxes.device).triu_(1)
    overlaps = ((iou > _threshold_below(threshold, iou.dtype)) & better).to(boxes.dtype)
    keep = valid
    for _ in range(width):
        suppressed = torch.bmm(keep.to(boxes.dtype).unsqueeze(1), overlaps).squeeze(1) > 0
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value not above ``threshold``: ``x > it`` in ``dtype`` equals ``x > threshold`` in
    double precision, as torchvision's CPU nms compares (a Python float would be rounded to the nearest)."""
    t = torch.tensor(threshold, dtype=dtype)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def _looped_nms(boxes_xyxy: Tensor, scores: Tensor, order: Tensor, counts: Tensor, iou_threshold: float) -> Tensor:
    """One torchvision nms call per group, for groups too large for the padded block."""
    sorted_boxes, sorted_scores = boxes_xyxy[order], scores[order]
    kept = []
    start = 0
    for count in counts.tolist():
        end = start + count
        if count == 1:
            kept.append(order[start:end])
        else:
            kept.append(order[start + nms(sorted_boxes[start:end], sorted_scores[start:end], iou_threshold)])
        start = end
    return torch.cat(kept)


def postprocess(
    loc_offsets: Tensor,
    cls_logits: Tensor,
    priors_cxcywh: Tensor,
    decode_config: DecodeConfig = DecodeConfig(),
    *,
    min_score: float = 0.01,
    max_overlap: float = 0.45,
    top_k: int = 200,
    image_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
) -> list[Detections]:
    """Decode a batch of raw outputs into detections.

    Args:
        loc_offsets: (N, P, 4) w.r.t. ``priors_cxcywh`` (P, 4) ``cxcywh_rel``.
        cls_logits: (N, P, C), class 0 is background.
        decode_config: the model's size clamp, clipping and per-class candidate cap.
        min_score: keep class scores strictly above this.
        max_overlap: suppress boxes whose IoU with a better box of the same class exceeds this.
        top_k: keep at most this many detections per image (the best scores).
        image_sizes: (height, width) of each original image; boxes are then ``xyxy_abs`` pixels.
    Returns:
        one :class:`Detections` per image, best score first.
    """
    logits = cls_logits.float()
    n, _, c = logits.shape
    img, prior, cls, cand_scores = _candidates(logits, min_score)
    # Decode only the candidates' boxes (decoding is elementwise: the same values as decoding every prior).
    cand_boxes = cxcywh_to_xyxy(
        decode(loc_offsets.float()[img, prior], priors_cxcywh.float()[prior], decode_config.size_clamp)
    )
    if decode_config.clip_boxes:
        cand_boxes = cand_boxes.clamp(0.0, 1.0)
    return _select(n, c - 1, img, cls, cand_scores, cand_boxes, max_overlap, top_k,
                   decode_config.candidates_per_class, image_sizes)  # fmt: skip


def _candidates(logits: Tensor, min_score: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(image, prior, class, score) of every foreground score above ``min_score``, in (image, prior, class)
    order, with scores equal to ``softmax(logits)``'s.

    A softmax score is at most exp(logit - the row's largest logit), so a class whose logit is more than
    log(1 / min_score) below its row's best cannot pass. Rows with no such foreground class (most priors of
    a trained model, where the background wins by a wide margin) are dropped before any exp() is taken; the
    softmax runs on the remaining rows only, row by row exactly as over the whole tensor.
    """
    if min_score > 0:
        bound = math.log(min_score) - 0.01  # margin for the rounding of the difference
        # A row has a candidate when its best foreground logit is within the bound of its best logit.
        best_fg = logits[..., 1:].amax(dim=-1)
        rows = ((best_fg - torch.maximum(best_fg, logits[..., 0])) > bound).nonzero(as_tuple=True)
        scores = F.softmax(logits[rows], dim=-1)[:, 1:]  # (R, K)
        row, cls = (scores > min_score).nonzero(as_tuple=True)
        return rows[0][row], rows[1][row], cls, scores[row, cls]
    scores = F.softmax(logits, dim=-1)[..., 1:]
    img, prior, cls = (scores > min_score).nonzero(as_tuple=True)
    return img, prior, cls, scores[img, prior, cls]


def select_detections(
    boxes_xyxy_rel: Tensor,
    scores: Tensor,
    *,
    min_score: float = 0.01,
    max_overlap: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int | None = None,
    image_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
) -> list[Detections]:
    """Threshold, per-class NMS and top-k on decoded outputs: the second half of :func:`postprocess`.

    Args:
        boxes_xyxy_rel: (N, P, 4) decoded boxes. scores: (N, P, K) foreground class scores (column j is
            label j + 1). The other arguments as in :func:`postprocess`.
    """
    n, _, k = scores.shape
    img, prior, cls = (scores > min_score).nonzero(as_tuple=True)
    return _select(n, k, img, cls, scores[img, prior, cls], boxes_xyxy_rel[img, prior], max_overlap, top_k,
                   candidates_per_class, image_sizes)  # fmt: skip


def _rank_within_image(img: Tensor, scores: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``order`` of the candidates by (image, -score) (ties by candidate order), each candidate's ``rank`` in its
    image (0 = best) and the candidate ``counts`` per image."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(img[by_score], stable=True).indices]
    counts = torch.bincount(img, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[img[order]]
    return order, rank, counts


def _select(
    n: int, k: int, img: Tensor, cls: Tensor, cand_scores: Tensor, cand_boxes: Tensor, max_overlap: float,
    top_k: int, cap: int | None, image_sizes: Sequence[tuple[int, int]] | Tensor | None,
) -> list[Detections]:
    """Per-class NMS, then the best ``top_k`` of each image, from the candidates above the threshold.

    Each (image, class) group is capped at its best ``cap`` candidates inside grouped_nms: the same set as a
    per-class top-k followed by the threshold, without a top-k over every prior.

    Only each image's best candidates go through NMS at first (``2 * top_k`` of them, a score prefix): whether a
    box survives depends only on the better boxes of its group, all inside that prefix, so the prefix's
    decisions are final; when at least ``top_k`` of them survive, the image's ``top_k`` detections are among
    them. The images where fewer survive go through NMS again with all their candidates. Same result as NMS
    over everything (ties are broken by candidate order in both orderings), for a fraction of the work when
    candidates far outnumber ``top_k``."""
    groups = img * k + cls
    order, rank, counts = _rank_within_image(img, cand_scores, n)
    prefix = (rank < 2 * top_k).nonzero().squeeze(1)
    kept = prefix[grouped_nms(cand_boxes[prefix], cand_scores[prefix], groups[prefix], max_overlap, max_per_group=cap)]
    redo = (torch.bincount(img[kept], minlength=n) < top_k) & (counts > 2 * top_k)
    if bool(redo.any()):
        again = redo[img].nonzero().squeeze(1)  # every candidate of those images
        again_kept = again[grouped_nms(cand_boxes[again], cand_scores[again], groups[again], max_overlap,
                                       max_per_group=cap)]  # fmt: skip
        kept = torch.cat([kept[~redo[img[kept]]], again_kept])
    keep = torch.zeros(img.numel(), dtype=torch.bool, device=img.device)
    keep[kept] = True
    img, cls, cand_scores, cand_boxes = img[keep], cls[keep], cand_scores[keep], cand_boxes[keep]

    # Best top_k per image: order by (image, -score), rank within each image.
    order, rank, _ = _rank_within_image(img, cand_scores, n)
    sel = order[rank[order] < top_k]
    img, cls, cand_scores, cand_boxes = img[sel], cls[sel], cand_scores[sel], cand_boxes[sel]

    if image_sizes is not None:
        hw = torch.as_tensor(image_sizes, dtype=cand_boxes.dtype, device=cand_boxes.device).reshape(n, 2)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)  # (N, 4): w, h, w, h
        cand_boxes = cand_boxes * scale[img]

    per_image = torch.bincount(img, minlength=n).tolist()
    return [
        Detections(b, l + 1, s)
        for b, l, s in zip(
            cand_boxes.split(per_image), cls.split(per_image), cand_scores.split(per_image)
        )
    ]


# --- decoding every prior: the exported graph's outputs, and what runs after it -------------------------


def decode_outputs(
    loc_offsets: Tensor, cls_logits: Tensor, priors_cxcywh: Tensor, decode_config: DecodeConfig
) -> tuple[Tensor, Tensor]:
    """Raw outputs -> ``(boxes_xyxy_rel (N, P, 4), scores (N, P, C))`` for every prior: the box decoding (clipped
    to [0, 1] when ``decode_config`` clips) and the softmax, column 0 the background. float32."""
    scores = torch.softmax(cls_logits.float(), dim=-1)
    boxes_xyxy_rel = cxcywh_to_xyxy(decode(loc_offsets.float(), priors_cxcywh.float(), decode_config.size_clamp))
    if decode_config.clip_boxes:
        boxes_xyxy_rel = boxes_xyxy_rel.clamp(0.0, 1.0)
    return boxes_xyxy_rel, scores


class DecodedSSD(nn.Module):
    """An SSD followed by softmax and box decoding: ``images (N, 3, S, S) -> (boxes_xyxy_rel, scores)``.

    ``boxes_xyxy_rel`` (N, P, 4) are xyxy fractions of the image, ``scores`` (N, P, C) softmax scores with column
    0 the background (:func:`decode_outputs`). This is the graph :func:`ssd.export.export_onnx` writes and the
    Detector runs; :func:`postprocess_decoded` turns its outputs into detections.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc_offsets, cls_logits = self.model(images)
        return decode_outputs(loc_offsets, cls_logits, self.model.priors_cxcywh, self.model.config.decode)


def postprocess_decoded(
    boxes_xyxy_rel: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    *,
    min_score: float = 0.01,
    max_overlap: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int | None = None,
    image_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
    suppress_labels: Sequence[int] = (),
) -> list[Detections]:
    """Detections from decoded outputs (the ONNX graph's, or :class:`DecodedSSD`'s).

    Args:
        boxes_xyxy_rel: (N, P, 4) xyxy fractions of the image.
        scores: (N, P, C) softmax scores, column 0 background.
        min_score: keep class scores strictly above this.
        max_overlap: suppress boxes whose IoU with a better box of the same class exceeds this.
        top_k: at most this many detections per image (the best scores).
        candidates_per_class: at most this many best priors per image and class before NMS
            (``ModelConfig.decode.candidates_per_class``; stored in the ONNX metadata).
        image_sizes: (height, width) per original image; boxes are then in its pixels.
        suppress_labels: labels (1..C-1) dropped before NMS and top-k.
    Returns:
        one :class:`Detections` per image, best score first; with ``suppress_labels=()`` exactly what
        :func:`postprocess` returns for the raw outputs these were decoded from.
    """
    boxes = torch.as_tensor(boxes_xyxy_rel).float()
    fg_scores = torch.as_tensor(scores).float()[..., 1:]
    if len(suppress_labels):
        keep_cls = torch.ones(fg_scores.shape[-1], dtype=torch.bool, device=fg_scores.device)
        keep_cls[torch.as_tensor([int(l) - 1 for l in suppress_labels], device=fg_scores.device)] = False
        fg_scores = fg_scores * keep_cls  # suppressed classes score 0, never above min_score >= 0
    return select_detections(
        boxes, fg_scores, min_score=min_score, max_overlap=max_overlap, top_k=top_k,
        candidates_per_class=candidates_per_class, image_sizes=image_sizes,
    )  # fmt: skip
