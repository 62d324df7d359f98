"""Matching and the MultiBox loss: torchvision's SSD.compute_loss as an oracle, hand-checkable matching cases,
hard negative mining counts, and a slow per-image, per-object, per-prior reference of the matching rules."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import ssd300_vgg16
from torchvision.ops import box_iou

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd.config import get_preset
from ssd.loss import MultiBoxLoss, hard_negative_mask, match, pad_targets
from ssd.priors import priors_for

# --- helpers --------------------------------------------------------------------------------------


def _priors(xyxy: list[list[float]]) -> torch.Tensor:
    return xyxy_to_cxcywh(torch.tensor(xyxy, dtype=torch.float64))


def _gt(boxes: list[list[float]], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([boxes], dtype=torch.float64), torch.tensor([labels], dtype=torch.int64)


@pytest.fixture(scope="module")
def tv_ssd():
    torch.manual_seed(0)
    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()


@pytest.fixture(scope="module")
def tv_priors() -> torch.Tensor:
    return priors_for(get_preset("ssd300-torchvision"))


def _random_gt_without_collisions(g, priors_xyxy, counts):
    """Random boxes (fractions) per image whose best priors are all different."""
    boxes, labels = [], []
    for m in counts:
        while True:
            xy0 = torch.rand(m, 2, generator=g, dtype=torch.float64) * 0.7
            wh = torch.rand(m, 2, generator=g, dtype=torch.float64) * 0.45 + 0.03
            b = torch.cat([xy0, (xy0 + wh).clamp(max=1.0)], dim=1)
            best = box_iou(b, priors_xyxy).argmax(dim=1)
            if best.unique().numel() == m:
                break
        boxes.append(b)
        labels.append(torch.randint(1, 21, (m,), generator=g))
    return boxes, labels


# --- torchvision as the oracle --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_torchvision_compute_loss(tv_ssd, tv_priors, seed):
    from torchvision.ops import boxes as box_ops

    g = torch.Generator().manual_seed(seed)
    priors = tv_priors.double()
    p = priors.shape[0]
    priors_xyxy = cxcywh_to_xyxy(priors)
    counts = [int(torch.randint(1, 7, (), generator=g)) for _ in range(4)]
    counts[seed % 4] = 0  # one image without objects
    boxes, labels = _random_gt_without_collisions(g, priors_xyxy, counts)
    loc = torch.randn(4, p, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(4, p, 21, generator=g, dtype=torch.float64) * 2

    anchors_abs = priors_xyxy * 300
    targets, matched = [], []
    for b, lab in zip(boxes, labels):
        b_abs = b * 300
        targets.append({"boxes": b_abs, "labels": lab})
        if len(b):
            quality = box_ops.box_iou(b_abs, anchors_abs)
            best = quality.argmax(dim=1)
            assert best.unique().numel() == len(b)  # no best-prior collisions: torchvision's last-wins is moot
            matched.append(tv_ssd.proposal_matcher(quality))
        else:
            matched.append(torch.full((p,), -1, dtype=torch.int64))
    want = tv_ssd.compute_loss(
        targets, {"bbox_regression": loc, "cls_logits": logits}, [anchors_abs] * 4, matched
    )

    gt_boxes, gt_labels = pad_targets(boxes, labels)
    ours = MultiBoxLoss(tv_priors, loc_loss="smooth_l1")(loc, logits, gt_boxes, gt_labels)
    assert ours.loc.dtype == torch.float64
    torch.testing.assert_close(ours.loc, want["bbox_regression"], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.cls, want["classification"], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.total, want["bbox_regression"] + want["classification"], rtol=1e-6, atol=0)
    # The same positives as torchvision's matcher.
    m = match(priors, gt_boxes, gt_labels)
    for i, mi in enumerate(matched):
        assert torch.equal(m.labels[i] > 0, mi >= 0)


def test_l1_mean_option_reproduces_tutorial_golden_loss(tutorial_golden):
    g = tutorial_golden
    boxes = [g["gt_boxes_xyxy_rel_0"], g["gt_boxes_xyxy_rel_1"]]
    labels = [g["gt_labels_0"], g["gt_labels_1"]]
    gt_boxes, gt_labels = pad_targets(boxes, labels)
    out = MultiBoxLoss(g["priors_cxcy"], loc_loss="l1_mean")(g["loc_offsets"], g["cls_logits"], gt_boxes, gt_labels)
    torch.testing.assert_close(out.loc, g["loss_loc_l1_mean"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.cls, g["loss_conf"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.total, g["loss_total"], rtol=1e-6, atol=0)


# --- matching corner cases (hand-checkable) ---------------------------------------------------------
# Most boxes below span the full height, so IoU is the 1-D IoU of the x intervals; all coordinates are
# dyadic, so every IoU is exact.


def test_object_smaller_than_every_prior_gets_exactly_its_best_prior(tv_priors):
    priors = tv_priors.double()
    obj = [0.40, 0.41, 0.412, 0.423]
    gt_boxes, gt_labels = _gt([obj], [5])
    iou = box_iou(cxcywh_to_xyxy(priors), gt_boxes[0])[:, 0]
    assert iou.max() < 0.1
    m = match(priors, gt_boxes, gt_labels)
    pos = (m.labels[0] > 0).nonzero().flatten().tolist()
    assert pos == [int(iou.argmax())]
    assert m.labels[0, pos[0]] == 5
    assert torch.equal(m.boxes_xyxy_rel[0, pos[0]], gt_boxes[0, 0])
    # Without forcing, nothing reaches 0.5: no positives at all.
    assert (match(priors, gt_boxes, gt_labels, rule="threshold").labels == 0).all()
    assert torch.equal(match(priors, gt_boxes, gt_labels, rule="tutorial").labels, m.labels)


def test_threshold_half_is_positive_under_half_is_background():
    priors = _priors(
        [
            [0, 0, 0.5, 1],  # IoU 1 (the best prior)
            [0, 0, 0.25, 1],  # 0.5 exactly: positive
            [0, 0, 0.75, 1],  # 2/3
            [0.25, 0, 0.75, 1],  # 1/3: background
            [0, 0, 0.25 - 2**-7, 1],  # 0.484375: background
        ]
    )
    gt_boxes, gt_labels = _gt([[0, 0, 0.5, 1]], [4])
    m = match(priors, gt_boxes, gt_labels)
    assert m.labels.tolist() == [[4, 4, 4, 0, 0]]
    assert torch.equal(m.boxes_xyxy_rel[0, :3], gt_boxes[0, [0, 0, 0]])


def test_two_objects_with_one_best_prior_bipartite_gives_the_loser_its_next_best_tutorial_the_last_wins():
    priors = _priors(
        [
            [0, 0, 0.5, 1],  # A: IoU 0.75 with o0, 0.875 with o1 -> both objects' best prior
            [0.1875, 0, 0.625, 1],  # D: 0.625 with o0, 0.4 with o1 -> o0's second best, over the threshold
            [0.0625, 0, 0.3125, 1],  # E: 3/7 with o0 (under the threshold), 4/7 with o1
            [0.75, 0, 1, 1],  # F: overlaps nothing
        ]
    )
    o0, o1 = [0.125, 0, 0.5, 1], [0, 0, 0.4375, 1]
    for boxes, labels in [([o0, o1], [3, 7]), ([o1, o0], [7, 3])]:
        gt_boxes, gt_labels = _gt(boxes, labels)
        # bipartite: (A, o1) is the best pair; o0 then takes D, its best free prior; E is o1's by the threshold.
        assert match(priors, gt_boxes, gt_labels).labels.tolist() == [[7, 3, 7, 0]]
    # tutorial: A goes to the last object claiming it; the other keeps what the threshold gives it (D).
    assert match(priors, *_gt([o0, o1], [3, 7]), rule="tutorial").labels.tolist() == [[7, 3, 7, 0]]
    assert match(priors, *_gt([o1, o0], [7, 3]), rule="tutorial").labels.tolist() == [[3, 3, 7, 0]]


def test_equal_iou_ties_go_to_the_lower_prior_then_the_lower_object():
    priors = _priors([[0.25, 0, 0.75, 1], [0, 0, 0.125, 1]])  # A: IoU 1/3 with both objects; G: 0.25 with o0
    o0, o1 = [0, 0, 0.5, 1], [0.5, 0, 1, 1]
    for boxes, labels, first, second in [([o0, o1], [3, 7], 3, 0), ([o1, o0], [7, 3], 7, 3)]:
        gt_boxes, gt_labels = _gt(boxes, labels)
        # bipartite: the pair (A, object 0) first (equal IoU, lower object index); object 1 then takes its next
        # overlapping prior, G, if it overlaps it (o0 does, o1 does not)
        assert match(priors, gt_boxes, gt_labels).labels.tolist() == [[first, second]]
    assert (match(priors, gt_boxes, gt_labels, rule="threshold").labels == 0).all()


def test_forced_match_overrides_the_priors_own_best_object():
    priors = _priors([[0, 0, 0.5, 1], [0, 0, 0.4375, 1]])  # X, Y
    # o1's only (and best) prior is X (IoU 1/8); X's best object is o2 (7/8) whose own best prior is Y.
    o1, o2 = [0.375, 0, 1, 1], [0, 0, 0.4375, 1]
    gt_boxes, gt_labels = _gt([o1, o2], [2, 9])
    # bipartite: (Y, o2) first (IoU 1), then o1 takes X; tutorial: each takes its best prior, the same here
    assert match(priors, gt_boxes, gt_labels).labels.tolist() == [[2, 9]]
    assert match(priors, gt_boxes, gt_labels, rule="tutorial").labels.tolist() == [[2, 9]]
    assert match(priors, gt_boxes, gt_labels, rule="threshold").labels.tolist() == [[9, 9]]


def test_zero_area_boxes_and_padding_are_ignored(tv_priors):
    priors = tv_priors.double()
    real = [0.2, 0.3, 0.5, 0.7]
    alone = match(priors, *_gt([real], [6]))
    gt_boxes, gt_labels = _gt(
        [
            [0.3, 0.3, 0.3, 0.6],  # zero width, labelled
            real,
            [0.6, 0.6, 0.9, 0.55],  # negative height, labelled
            [0.21, 0.3, 0.5, 0.7],  # padding (label 0) that would otherwise win many priors
            [0.0, 0.0, 0.0, 0.0],  # padding
        ],
        [11, 6, 12, 0, 0],
    )
    m = match(priors, gt_boxes, gt_labels)
    assert torch.equal(m.labels, alone.labels)
    pos = m.labels > 0
    assert torch.equal(m.boxes_xyxy_rel[pos], alone.boxes_xyxy_rel[pos])
    # Only invalid objects: everything is background.
    assert (match(priors, gt_boxes[:, [0, 2, 3]], gt_labels[:, [0, 2, 3]]).labels == 0).all()


def test_image_without_objects_is_all_background_and_mines_no_negatives(tv_priors):
    g = torch.Generator().manual_seed(5)
    p = tv_priors.shape[0]
    gt_boxes, gt_labels = pad_targets(
        [torch.tensor([[0.1, 0.1, 0.4, 0.5]]), torch.zeros(0, 4)], [torch.tensor([3]), torch.zeros(0, dtype=torch.int64)]
    )
    m = match(tv_priors, gt_boxes, gt_labels)
    assert (m.labels[1] == 0).all() and (m.labels[0] > 0).any()
    ce = torch.rand(2, p, generator=g)
    neg = hard_negative_mask(ce, m.labels > 0, 3.0)
    assert neg[1].sum() == 0
    assert neg[0].sum() == 3 * (m.labels[0] > 0).sum()
    # A batch whose padded width is 0 works too.
    empty = match(tv_priors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64))
    assert empty.labels.shape == (2, p) and (empty.labels == 0).all()


# --- hard negative mining ---------------------------------------------------------------------------


def test_hard_negative_mask_hand_checked():
    loss = torch.tensor([[5.0, 1.0, 4.0, 3.0, 2.0, 0.0], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    pos = torch.tensor(
        [[False, True, False, False, False, False], [True, True, False, False, False, False], [False] * 6]
    )
    neg = hard_negative_mask(loss, pos, 3.0)
    # Image 0: 1 positive -> the 3 highest-loss negatives (5, 4, 3); the positive itself is never picked.
    assert neg[0].tolist() == [True, False, True, True, False, False]
    # Image 1: 2 positives -> 6 wanted, only 4 negatives exist: all of them.
    assert neg[1].tolist() == [False, False, True, True, True, True]
    # Image 2: no positives -> no negatives.
    assert not neg[2].any()


def test_mined_negatives_are_min_of_three_per_positive_and_negatives_and_the_hardest(tv_priors):
    g = torch.Generator().manual_seed(6)
    priors = tv_priors.double()
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.5, 0.2, 0.9, 0.4]]), torch.tensor([[0.3, 0.3, 0.35, 0.4]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 2]), torch.tensor([3]), torch.zeros(0, dtype=torch.int64)]
    gt_boxes, gt_labels = pad_targets(boxes, labels)
    pos = match(priors, gt_boxes.double(), gt_labels).labels > 0
    ce = torch.rand(3, priors.shape[0], generator=g, dtype=torch.float64)
    for ratio in (3.0, 1.0, 0.5):
        neg = hard_negative_mask(ce, pos, ratio)
        assert not (neg & pos).any()
        for i in range(3):
            n_pos, n_negs = int(pos[i].sum()), int((~pos[i]).sum())
            assert int(neg[i].sum()) == min(int(ratio * n_pos), n_negs)
            if neg[i].any():
                rest = ~pos[i] & ~neg[i]
                assert ce[i][neg[i]].min() > ce[i][rest].max()
    # More positives than negatives allow: every negative is taken.
    priors5 = _priors([[0, 0, 0.5, 1], [0, 0, 0.25, 1], [0, 0, 0.75, 1], [0.25, 0, 0.75, 1], [0.75, 0, 1, 1]])
    pos5 = match(priors5, *_gt([[0, 0, 0.5, 1]], [4])).labels > 0
    assert pos5.sum() == 3
    assert hard_negative_mask(torch.rand(1, 5, generator=g), pos5, 3.0).sum() == 2


# --- a slow reference of the matching rules ---------------------------------------------------------


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _brute_force_bipartite(priors_xyxy, gt_boxes, gt_labels, threshold=0.5):
    """The paper's matching, from its description, per image in plain Python: repeatedly take the (object, prior)
    pair of highest IoU among objects without a prior and priors without an object (pairs that overlap at all; ties:
    the lower prior index, then the lower object index), then give every other prior its best object (the lower
    index on ties) if the IoU reaches the threshold. Returns labels and the matched object index per prior."""
    all_labels, all_objs, collisions = [], [], 0
    for boxes, labels in zip(gt_boxes, gt_labels):
        valid = [j for j, (b, l) in enumerate(zip(boxes, labels)) if l > 0 and b[2] > b[0] and b[3] > b[1]]
        iou = {(q, j): _iou(priors_xyxy[q], boxes[j]) for q in range(len(priors_xyxy)) for j in valid}
        best_prior = {j: max(range(len(priors_xyxy)), key=lambda q: (iou[q, j], -q)) for j in valid}
        collisions += len(best_prior) - len(set(best_prior.values()))
        objs: list[int | None] = [None] * len(priors_xyxy)
        free_objs, free_priors = set(valid), set(range(len(priors_xyxy)))
        while True:
            pairs = [(v, -q, -j, q, j) for (q, j), v in iou.items() if v > 0 and q in free_priors and j in free_objs]
            if not pairs:
                break
            _, _, _, q, j = max(pairs)
            objs[q] = j
            free_objs.discard(j)
            free_priors.discard(q)
        for q in free_priors:
            cands = [(iou[q, j], -j) for j in valid if iou[q, j] >= threshold]
            if cands:
                objs[q] = -max(cands)[1]
        all_objs.append(objs)
        all_labels.append([labels[j] if j is not None else 0 for j in objs])
    return all_labels, all_objs, collisions


def _dyadic_priors():
    out = []
    for f in (8, 4, 2, 1):
        s = 1.0 / f
        for r in range(f):
            for c in range(f):
                cx, cy = (c + 0.5) / f, (r + 0.5) / f
                out += [[cx, cy, s, s], [cx, cy, 2 * s, s], [cx, cy, s, 2 * s], [cx, cy, 1.5 * s, 1.5 * s]]
    return torch.tensor(out, dtype=torch.float64)


def _colliding_batch():
    """Random boxes on a 1/32 grid (every IoU exact in both implementations) with exact duplicates, near twins,
    shifted copies, a zero-area box, padding and an image of padding only: many objects share a best prior."""
    g = torch.Generator().manual_seed(7)
    n, m, q = 8, 7, 32
    xy0 = torch.randint(0, q - 1, (n, m, 2), generator=g)
    wh = torch.randint(1, q // 2, (n, m, 2), generator=g)
    boxes = torch.cat([xy0, (xy0 + wh).clamp(max=q)], dim=-1).double() / q
    labels = torch.randint(1, 6, (n, m), generator=g)
    boxes[:, 1] = boxes[:, 0]  # exact duplicates: equal IoU claims on one prior
    boxes[:, 2, 2:] = boxes[:, 2, :2] + boxes[:, 0, 2:] - boxes[:, 0, :2] + 1 / q  # a near twin of object 0
    boxes[::2, 3] = boxes[::2, 0] + 1 / q  # the same box shifted by one step
    boxes[1, 4, 2] = boxes[1, 4, 0]  # zero area
    labels[2, 5:] = 0  # padding
    labels[3] = 0  # an image with padding only
    labels[5, 0] = 0
    return boxes, labels


def test_bipartite_matching_equals_a_brute_force_reference_with_collisions():
    priors = _dyadic_priors()
    priors_xyxy = cxcywh_to_xyxy(priors)
    boxes, labels = _colliding_batch()
    ref_labels, ref_objs, collisions = _brute_force_bipartite(priors_xyxy.tolist(), boxes.tolist(), labels.tolist())
    assert collisions >= 5  # the reference really exercises shared best priors
    got = match(priors, boxes, labels, rule="bipartite")
    assert got.labels.tolist() == ref_labels
    for i in range(boxes.shape[0]):
        for p_idx, j in enumerate(ref_objs[i]):
            if j is not None:
                assert got.boxes_xyxy_rel[i, p_idx].tolist() == boxes[i, j].tolist()


def test_tutorial_matching_equals_torchvisions_matcher_with_collisions(tv_ssd):
    """The ``tutorial`` rule against torchvision's own SSDMatcher (whose forced matches also let the last object
    win a shared prior), image by image, on boxes that share best priors; and the threshold rule against the
    same matcher's plain thresholding."""
    from torchvision.models.detection._utils import SSDMatcher  # what ssd300_vgg16 uses (its proposal_matcher)
    from torchvision.ops import box_iou as tv_box_iou

    priors = _dyadic_priors()
    priors_xyxy = cxcywh_to_xyxy(priors)
    boxes, labels = _colliding_batch()
    got = match(priors, boxes, labels, rule="tutorial")
    plain = match(priors, boxes, labels, rule="threshold")
    matcher = SSDMatcher(0.5)
    assert type(tv_ssd.proposal_matcher) is SSDMatcher
    for i in range(boxes.shape[0]):
        keep = (labels[i] > 0) & (boxes[i, :, 2:] > boxes[i, :, :2]).all(-1)
        want = torch.zeros(priors.shape[0], dtype=torch.int64)
        want_plain = torch.zeros_like(want)
        if keep.any():
            quality = tv_box_iou(boxes[i][keep], priors_xyxy)
            idx = matcher(quality)
            want = torch.where(idx >= 0, labels[i][keep][idx.clamp(min=0)], 0)
            plain_idx = super(SSDMatcher, matcher).__call__(quality)  # without the forced matches
            want_plain = torch.where(plain_idx >= 0, labels[i][keep][plain_idx.clamp(min=0)], 0)
        assert torch.equal(got.labels[i], want), i
        assert torch.equal(plain.labels[i], want_plain), i


# --- the loss itself --------------------------------------------------------------------------------


def test_loss_is_batched_additive_named_and_differentiable(tv_priors):
    g = torch.Generator().manual_seed(8)
    p = tv_priors.shape[0]
    boxes = [
        torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.5, 0.2, 0.9, 0.4]]),
        torch.zeros(0, 4),
        torch.tensor([[0.3, 0.3, 0.35, 0.4]]),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64), torch.tensor([3]), torch.zeros(0, dtype=torch.int64)]
    gt_boxes, gt_labels = pad_targets(boxes, labels)
    loc = torch.randn(4, p, 4, generator=g, requires_grad=True)
    logits = torch.randn(4, p, 21, generator=g, requires_grad=True)
    crit = MultiBoxLoss(tv_priors, alpha=2.0)
    out = crit(loc, logits, gt_boxes, gt_labels)
    assert out._fields == ("total", "loc", "cls")
    torch.testing.assert_close(out.total, out.cls + 2.0 * out.loc)
    out.total.backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(logits.grad).all()
    # Images without objects get no gradient at all (no positives, no mined negatives).
    assert (loc.grad[[1, 3]] == 0).all() and (logits.grad[[1, 3]] == 0).all()
    assert loc.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0

    # The batched loss is the per-image sums over the batch's positives.
    n_pos = match(tv_priors, gt_boxes, gt_labels).labels.gt(0).sum(dim=1)
    with torch.no_grad():
        sums = torch.zeros(2)
        for i in range(4):
            o = crit(loc[i : i + 1], logits[i : i + 1], gt_boxes[i : i + 1], gt_labels[i : i + 1])
            sums += torch.stack([o.loc, o.cls]) * max(1, int(n_pos[i]))
            if n_pos[i] == 0:
                assert o.loc == 0 and o.cls == 0
    torch.testing.assert_close(torch.stack([out.loc, out.cls]).detach() * n_pos.sum(), sums, rtol=1e-5, atol=0)

    # reduce_positives (data-parallel training) maps the local positive count to the divisor.
    seen = []
    out2 = crit(loc, logits, gt_boxes, gt_labels, reduce_positives=lambda k: seen.append(k) or k * 2)
    assert [int(k) for k in seen] == [int(n_pos.sum())]
    torch.testing.assert_close(out2.cls, out.cls / 2)
    torch.testing.assert_close(out2.loc, out.loc / 2)


def test_all_empty_batch_gives_zero_loss(tv_priors):
    p = tv_priors.shape[0]
    loc = torch.randn(2, p, 4, requires_grad=True)
    logits = torch.randn(2, p, 21, requires_grad=True)
    out = MultiBoxLoss(tv_priors)(loc, logits, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64))
    assert out.total == 0 and out.loc == 0 and out.cls == 0
    out.total.backward()
    assert torch.isfinite(loc.grad).all()


def test_l1_mean_divides_by_four_positives():
    priors = _priors([[0, 0, 0.5, 1], [0.5, 0, 1, 1]])
    gt_boxes, gt_labels = _gt([[0, 0, 0.5, 1]], [1])  # prior 0 positive with zero target offsets
    loc = torch.tensor([[[1.0, -2.0, 0.5, 0.0], [7.0, 7.0, 7.0, 7.0]]], dtype=torch.float64)
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    l1 = MultiBoxLoss(priors, loc_loss="l1_mean")(loc, logits, gt_boxes, gt_labels)
    assert l1.loc.item() == pytest.approx(3.5 / 4)
    sl1 = MultiBoxLoss(priors, loc_loss="smooth_l1")(loc, logits, gt_boxes, gt_labels)
    assert sl1.loc.item() == pytest.approx(0.5 + 1.5 + 0.125)
    # cls: CE of the positive plus the single negative (min(3, 1)), each log(2) with zero logits.
    assert sl1.cls.item() == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_outputs_are_matched_and_encoded_in_float32(tv_priors, dtype):
    """Under autocast the heads give float16/bfloat16; the targets must be those of float32."""
    g = torch.Generator().manual_seed(9)
    p = tv_priors.shape[0]
    gt_boxes, gt_labels = pad_targets(
        [torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), torch.tensor([[0.3, 0.2, 0.35, 0.3]])],
        [torch.tensor([1, 2]), torch.tensor([3])],
    )
    loc = (torch.randn(2, p, 4, generator=g)).to(dtype).requires_grad_()
    logits = (torch.randn(2, p, 21, generator=g)).to(dtype)
    crit = MultiBoxLoss(tv_priors)
    low = crit(loc, logits, gt_boxes, gt_labels)
    ref = crit(loc.detach().float(), logits.float(), gt_boxes, gt_labels)
    for a, b in zip(low, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    low.total.backward()
    assert loc.grad.dtype == dtype and torch.isfinite(loc.grad.float()).all()
