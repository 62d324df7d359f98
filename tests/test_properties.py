"""Property-based tests (hypothesis) for box coding, matching, the loss and NMS, degenerate boxes included."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssd.boxes import cxcywh_to_xyxy, decode, encode, pairwise_iou, xyxy_to_cxcywh
from ssd.loss import MultiBoxLoss, match, pad_targets
from ssd.postprocess import grouped_nms
from ssd.priors import priors_for
from ssd.config import get_preset

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.load_profile("ci")

PRIORS = priors_for(get_preset("small", 3))
coord = st.floats(0.0, 1.0, allow_nan=False, width=32)


@st.composite
def boxes_xyxy(draw, max_boxes=6, degenerate=True):
    n = draw(st.integers(0, max_boxes))
    out = []
    for _ in range(n):
        x0, x1 = sorted((draw(coord), draw(coord)))
        y0, y1 = sorted((draw(coord), draw(coord)))
        if not degenerate and (x1 - x0 < 1e-3 or y1 - y0 < 1e-3):
            x1, y1 = min(x0 + 0.05, 1.0), min(y0 + 0.05, 1.0)
            x0, y0 = x1 - 0.05, y1 - 0.05
        out.append([x0, y0, x1, y1])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)


@given(boxes_xyxy(degenerate=False))
def test_encode_decode_round_trip(boxes):
    if len(boxes) == 0:
        return
    priors = PRIORS[: len(boxes)].double()
    back = cxcywh_to_xyxy(decode(encode(xyxy_to_cxcywh(boxes), priors), priors))
    torch.testing.assert_close(back, boxes, rtol=1e-9, atol=1e-9)


@given(boxes_xyxy(), boxes_xyxy())
def test_iou_is_symmetric_bounded_and_one_on_itself(a, b):
    iou = pairwise_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert torch.all((iou >= 0) & (iou <= 1 + 1e-12))
    torch.testing.assert_close(iou, pairwise_iou(b, a).T)
    positive = (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1])
    self_iou = pairwise_iou(a, a).diagonal()
    assert torch.all(self_iou[positive] > 1 - 1e-9) and torch.all(self_iou[~positive] == 0)


@given(st.lists(boxes_xyxy(), min_size=1, max_size=3))
def test_matching_invariants(per_image):
    labels = [torch.randint(1, 4, (len(b),), generator=torch.Generator().manual_seed(len(b))) for b in per_image]
    gt_boxes, gt_labels = pad_targets(per_image, labels)
    m = match(PRIORS.double(), gt_boxes, gt_labels)
    assert m.labels.shape == (len(per_image), len(PRIORS))
    for i, (b, l) in enumerate(zip(per_image, labels)):
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        pos = m.labels[i] > 0
        # every positive prior carries the label of a real (non-degenerate) object it regresses to
        if pos.any():
            matched = m.boxes_xyxy_rel[i][pos]
            assert all(any(torch.equal(mb, vb) for vb in b[valid]) for mb in matched)
            assert set(m.labels[i][pos].tolist()) <= set(l[valid].tolist())
        # bipartite matching: every real object that overlaps more priors than there are other objects owns at
        # least one positive prior (the others can take at most one each), and one with an overlapping prior owns
        # one unless all of those went to other objects
        real = b[valid]
        iou = pairwise_iou(real, cxcywh_to_xyxy(PRIORS.double()))
        for j in range(len(real)):
            overlapping = int((iou[j] > 0).sum())
            owned = (m.boxes_xyxy_rel[i][pos] == real[j]).all(-1).any()
            if overlapping > len(real) - 1:
                assert owned
        if not valid.any():
            assert not pos.any()


@given(st.lists(boxes_xyxy(), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_loss_is_finite_and_non_negative(per_image, seed):
    g = torch.Generator().manual_seed(seed)
    labels = [torch.randint(1, 4, (len(b),), generator=g) for b in per_image]
    gt_boxes, gt_labels = pad_targets([b.float() for b in per_image], labels)
    n, p = len(per_image), len(PRIORS)
    loc = torch.randn(n, p, 4, generator=g, requires_grad=True)
    logits = torch.randn(n, p, 4, generator=g, requires_grad=True)
    out = MultiBoxLoss(PRIORS)(loc, logits, gt_boxes, gt_labels)
    assert torch.isfinite(out.total) and out.loc >= 0 and out.cls >= 0
    out.total.backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(logits.grad).all()


def _greedy(boxes, scores, groups, threshold):
    keep = []
    for g in sorted(set(groups.tolist())):
        idx = [i for i in torch.argsort(scores, descending=True, stable=True).tolist() if groups[i] == g]
        alive = list(idx)
        while alive:
            best = alive.pop(0)
            keep.append(best)
            alive = [j for j in alive if pairwise_iou(boxes[best : best + 1], boxes[j : j + 1])[0, 0] <= threshold]
    return sorted(keep)


@given(boxes_xyxy(max_boxes=25), st.integers(0, 2**31 - 1), st.floats(0.1, 0.9))
def test_grouped_nms_equals_greedy_reference(boxes, seed, threshold):
    g = torch.Generator().manual_seed(seed)
    boxes = boxes.float() * 2 - 0.5  # negative coordinates too
    scores = torch.rand(len(boxes), generator=g)
    groups = torch.randint(0, 3, (len(boxes),), generator=g)
    want = _greedy(boxes, scores, groups, threshold)
    for method in ("matrix", "loop"):
        kept = grouped_nms(boxes, scores, groups, threshold, method=method)
        assert sorted(kept.tolist()) == want
