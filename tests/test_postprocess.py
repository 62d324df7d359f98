"""Decoding: torchvision's SSD.postprocess_detections as an oracle, grouped NMS against a slow greedy reference,
and the semantics of min_score, top_k, image sizes and empty images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import ssd300_vgg16
from torchvision.ops import nms

from ssd.boxes import cxcywh_to_xyxy, decode, xyxy_to_cxcywh
from ssd.config import DecodeConfig, get_preset
from ssd.postprocess import Detections, grouped_nms, postprocess
from ssd.priors import priors_for


@pytest.fixture(scope="module")
def tv_ssd():
    torch.manual_seed(0)
    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()


@pytest.fixture(scope="module")
def tv_config():
    return get_preset("ssd300-torchvision")


@pytest.fixture(scope="module")
def tv_priors(tv_config):
    return priors_for(tv_config)


def _head_outputs(g, n, p, c, background_logit, loc_scale=1.0):
    """Raw outputs with spread scores: a high background logit and randn * 3 for the classes."""
    loc = torch.randn(n, p, 4, generator=g) * loc_scale
    loc[:, ::97, 2:] = 40.0  # wild sizes: exercise the size clamp and the clipping
    logits = torch.randn(n, p, c, generator=g) * 3
    logits[..., 0] = background_logit
    return loc, logits


# --- slow references ------------------------------------------------------------------------------


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _slow_nms(boxes: list, scores: list, threshold: float) -> list[int]:
    """Greedy NMS: best score first; a box survives unless a kept box overlaps it by more than threshold."""
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -scores[j]):
        if all(_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def _slow_grouped_nms(boxes, scores, groups, threshold) -> list[int]:
    out = []
    for grp in sorted(set(groups)):
        idx = [i for i, gg in enumerate(groups) if gg == grp]
        kept = _slow_nms([boxes[i] for i in idx], [scores[i] for i in idx], threshold)
        out += [idx[k] for k in kept]
    return out


def _slow_postprocess(loc, logits, priors, min_score, max_overlap, top_k):
    """One image at a time, one class at a time, in plain Python (no clipping, no candidate cap)."""
    scores = F.softmax(logits.float(), dim=-1)
    boxes = cxcywh_to_xyxy(decode(loc.float(), priors.float()))
    out = []
    for i in range(len(logits)):
        dets = []
        for c in range(1, logits.shape[-1]):
            cand = [q for q in range(len(priors)) if scores[i, q, c].item() > min_score]
            b = [boxes[i, q].tolist() for q in cand]
            s = [scores[i, q, c].item() for q in cand]
            dets += [(s[k], c, b[k]) for k in _slow_nms(b, s, max_overlap)]
        dets.sort(key=lambda d: -d[0])
        out.append(dets[:top_k])
    return out


# --- torchvision as the oracle --------------------------------------------------------------------


@pytest.mark.parametrize("seed,background_logit", [(0, 12.0), (1, 12.0), (2, 8.0)])
def test_postprocess_equals_torchvision(tv_ssd, tv_config, tv_priors, seed, background_logit):
    assert (tv_ssd.score_thresh, tv_ssd.nms_thresh, tv_ssd.detections_per_img, tv_ssd.topk_candidates) == (
        0.01, 0.45, 200, 400,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    n, p = 2, tv_priors.shape[0]
    loc, logits = _head_outputs(g, n, p, 21, background_logit)
    anchors = cxcywh_to_xyxy(tv_priors) * 300
    with torch.no_grad():
        want = tv_ssd.postprocess_detections(
            {"bbox_regression": loc, "cls_logits": logits}, [anchors] * n, [(300, 300)] * n
        )
    got = postprocess(
        loc, logits, tv_priors, tv_config.decode, min_score=0.01, max_overlap=0.45, top_k=200,
        image_sizes=[(300, 300)] * n,
    )  # fmt: skip
    assert tv_config.decode == DecodeConfig(size_clamp=math.log(1000 / 16), clip_boxes=True, candidates_per_class=400)
    n_cand = (F.softmax(logits, -1)[..., 1:] > 0.01).sum(dim=1)
    if background_logit == 8.0:
        assert (n_cand > 400).all()  # the candidate cap matters
    else:
        assert (n_cand > 10).all() and (n_cand < 400).all()
    for det, ref in zip(got, want):
        assert len(ref["scores"]) == 200  # the top_k cap matters too
        assert torch.unique(ref["scores"]).numel() == len(ref["scores"])  # distinct: the order is defined
        assert len(det.scores) == len(ref["scores"])
        assert torch.equal(det.labels, ref["labels"])
        torch.testing.assert_close(det.scores, ref["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(det.boxes / 300, ref["boxes"] / 300, rtol=0, atol=1e-4)
        assert det.boxes.min() >= 0 and det.boxes.max() <= 300


def test_postprocess_equals_torchvision_when_the_candidate_cap_bites(tv_ssd, tv_config, tv_priors):
    """One class with ~790 candidates on the large, overlapping priors: the 400 cap decides what survives NMS."""
    g = torch.Generator().manual_seed(9)
    n, p = 2, tv_priors.shape[0]
    loc = torch.randn(n, p, 4, generator=g) * 0.3
    logits = torch.full((n, p, 21), -20.0)
    logits[..., 0] = 0.0
    logits[..., 3] = torch.randn(n, p, generator=g) + 1.0
    logits[:, : 38 * 38 * 4 + 19 * 19 * 6, 3] = -20.0  # only maps 10x10 and smaller
    anchors = cxcywh_to_xyxy(tv_priors) * 300
    with torch.no_grad():
        want = tv_ssd.postprocess_detections(
            {"bbox_regression": loc, "cls_logits": logits}, [anchors] * n, [(300, 300)] * n
        )
    got = postprocess(loc, logits, tv_priors, tv_config.decode, image_sizes=[(300, 300)] * n)
    uncapped = postprocess(
        loc, logits, tv_priors, DecodeConfig(tv_config.decode.size_clamp, True, None), image_sizes=[(300, 300)] * n
    )
    for det, ref, unc in zip(got, want, uncapped):
        assert (F.softmax(logits, -1)[..., 3] > 0.01).sum(dim=1).min() > 700
        assert len(ref["scores"]) < 200 and len(unc.scores) > len(ref["scores"])  # the cap changes the answer
        assert torch.unique(ref["scores"]).numel() == len(ref["scores"])
        assert len(det.scores) == len(ref["scores"])
        assert torch.equal(det.labels, ref["labels"])
        torch.testing.assert_close(det.scores, ref["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(det.boxes / 300, ref["boxes"] / 300, rtol=0, atol=1e-4)


# --- grouped NMS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["matrix", "loop"])
@pytest.mark.parametrize("seed,offset", [(0, 0.0), (1, -60.0)])
def test_grouped_nms_equals_slow_reference(seed, offset, method):
    g = torch.Generator().manual_seed(seed)
    k = 400
    xy0 = torch.rand(k, 2, generator=g, dtype=torch.float64) * 80 + offset
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 30 + 1
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    scores = torch.rand(k, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 13, (k,), generator=g)
    groups[:3] = 99  # a group of three ...
    groups[3] = 100  # ... and a group of one
    if offset < 0:
        assert (boxes < 0).any() and (boxes > 0).any()
    for thr in (0.3, 0.45, 0.7):
        keep = grouped_nms(boxes, scores, groups, thr, method=method)
        want = _slow_grouped_nms(boxes.tolist(), scores.tolist(), groups.tolist(), thr)
        assert keep.tolist() == want
        if thr < 0.5:
            assert 0 < len(want) < k  # some suppressed, some kept
    assert grouped_nms(boxes[:0], scores[:0], groups[:0], 0.45, method=method).shape == (0,)


@pytest.mark.parametrize("pairs", [1, 50, 2000])
def test_matrix_nms_in_chunks_and_its_fallback_are_exact(monkeypatch, pairs):
    """A small padded-block budget forces chunks of groups (50, 2000) or the per-group fallback (1)."""
    import ssd.postprocess as pp

    g = torch.Generator().manual_seed(3)
    k = 300
    xy0 = torch.rand(k, 2, generator=g) * 60
    boxes = torch.cat([xy0, xy0 + 5 + torch.rand(k, 2, generator=g) * 25], dim=1)
    scores = torch.rand(k, generator=g)
    groups = torch.randint(0, 9, (k,), generator=g) * 7  # sparse ids
    want = grouped_nms(boxes, scores, groups, 0.45, method="loop")
    monkeypatch.setattr(pp, "MATRIX_NMS_PAIRS", pairs)
    assert grouped_nms(boxes, scores, groups, 0.45, method="matrix").tolist() == want.tolist()
    # with a per-group cap as well
    want_capped = grouped_nms(boxes, scores, groups, 0.45, max_per_group=10, method="loop")
    assert grouped_nms(boxes, scores, groups, 0.45, max_per_group=10, method="matrix").tolist() == want_capped.tolist()
    assert len(want_capped) < len(want)


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6])
def test_an_iou_exactly_at_the_threshold_is_decided_as_torchvision_does(threshold):
    """Pixel-aligned boxes give IoUs that are exactly float32(threshold); torchvision's CPU kernel compares in
    double, so float32(0.3) > 0.3 suppresses. Both methods must decide the same way."""
    boxes, want = [], []
    for h in range(1, 11):  # IoU h / 10 with [0, 0, 10, 10]
        boxes.append([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, float(h)]])
    boxes = torch.tensor(boxes).reshape(-1, 4)
    scores = torch.tensor([1.0, 0.5] * 10)
    groups = torch.arange(10).repeat_interleave(2)
    want = grouped_nms(boxes, scores, groups, threshold, method="loop")
    assert grouped_nms(boxes, scores, groups, threshold, method="matrix").tolist() == want.tolist()
    for g in range(10):  # and both equal torchvision's nms on each pair
        assert nms(boxes[2 * g : 2 * g + 2], scores[2 * g : 2 * g + 2], threshold).numel() == int((want // 2 == g).sum())


def test_grouped_nms_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method"):
        grouped_nms(torch.zeros(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.long), 0.5, method="fast")
    with pytest.raises(ValueError, match="max_per_group"):
        grouped_nms(torch.rand(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.long), 0.5, max_per_group=0)
    from ssd import SSDError

    with pytest.raises(SSDError, match="candidates_per_class"):
        DecodeConfig(candidates_per_class=0)


def test_grouped_nms_keeps_groups_apart_with_negative_coordinates():
    # The coordinate-offset trick (shift group g by g * (max coordinate + 1)) would move the second box
    # of group 1 exactly onto the first box of group 0 and suppress it.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [-2.0, -2.0, -1.0, -1.0], [-2.0, -2.0, -1.0, -1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    groups = torch.tensor([0, 1, 2])
    for method in ("matrix", "loop"):
        assert sorted(grouped_nms(boxes, scores, groups, 0.45, method=method).tolist()) == [0, 1, 2]
        # Within one group the duplicate is suppressed.
        assert grouped_nms(boxes, scores, torch.tensor([0, 1, 1]), 0.45, method=method).tolist() == [0, 1]


def test_postprocess_without_clipping_equals_slow_reference():
    """The tutorial's decoding (no clip, no cap) on boxes that cross the image border, against plain loops."""
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(150, 2, generator=g) * 1.2 - 0.1  # some priors hang over the border
    sizes = torch.rand(150, 2, generator=g) * 0.4 + 0.05
    priors = torch.cat([centres, sizes], dim=1)
    loc, logits = _head_outputs(g, 3, 150, 6, background_logit=3.0, loc_scale=0.5)
    loc[:, ::97, 2:] = 2.0
    got = postprocess(loc, logits, priors, DecodeConfig(), min_score=0.05, max_overlap=0.45, top_k=40)
    want = _slow_postprocess(loc, logits, priors, 0.05, 0.45, 40)
    assert any((d.boxes < 0).any() for d in got)
    for det, ref in zip(got, want):
        assert len(det.scores) == len(ref)
        assert torch.unique(det.scores).numel() == len(det.scores)
        assert det.labels.tolist() == [c for _, c, _ in ref]
        torch.testing.assert_close(det.scores, torch.tensor([s for s, _, _ in ref]), rtol=0, atol=0)
        torch.testing.assert_close(det.boxes, torch.tensor([b for _, _, b in ref]), rtol=0, atol=1e-6)


# --- semantics ------------------------------------------------------------------------------------


def _disjoint_priors(k: int) -> torch.Tensor:
    """k side-by-side priors that do not overlap (so NMS never interferes)."""
    x = torch.arange(k, dtype=torch.float32) / k
    return xyxy_to_cxcywh(torch.stack([x, torch.zeros(k), x + 0.5 / k, torch.full((k,), 0.5)], dim=1))


def test_min_score_is_strictly_above():
    priors = _disjoint_priors(4)
    logits = torch.tensor([[[0.0, 1.0, -1.0], [0.0, 0.5, -2.0], [0.0, 0.2, 0.1], [5.0, -5.0, -5.0]]])
    loc = torch.zeros(1, 4, 4)
    scores = F.softmax(logits.float(), dim=-1)
    threshold = float(scores[0, 1, 1])  # exactly the score of prior 1, class 1
    det = postprocess(loc, logits, priors, min_score=threshold, max_overlap=0.45, top_k=200)[0]
    kept = {(round(float(s), 7), int(l)) for s, l in zip(det.scores, det.labels)}
    want = {(round(float(scores[0, q, c]), 7), c) for q in range(4) for c in (1, 2) if scores[0, q, c] > threshold}
    assert kept == want
    assert (round(threshold, 7), 1) not in kept
    assert (det.scores > threshold).all()
    # Zero offsets decode to the priors themselves.
    assert {tuple(b) for b in det.boxes.tolist()} <= {tuple(b) for b in cxcywh_to_xyxy(priors).tolist()}


def test_decode_config_is_applied():
    priors = _disjoint_priors(6)  # widths 1/12, heights 0.5
    loc = torch.zeros(1, 6, 4)
    loc[0, 0, 2] = 40.0  # 0.2 * 40 = 8 > log(1000 / 16): the width is capped at 62.5 x the prior's
    logits = torch.full((1, 6, 3), -10.0)
    logits[0, :, 0] = 0.0
    logits[0, :, 1] = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5])
    plain = postprocess(loc, logits, priors, DecodeConfig())[0]
    assert len(plain.scores) == 6
    assert plain.boxes[0, 2] - plain.boxes[0, 0] == pytest.approx(math.exp(8) / 12, rel=1e-5)
    clamp = math.log(1000 / 16)
    capped = postprocess(loc, logits, priors, DecodeConfig(size_clamp=clamp))[0]
    assert capped.boxes[0, 2] - capped.boxes[0, 0] == pytest.approx(62.5 / 12, rel=1e-5)
    clipped = postprocess(loc, logits, priors, DecodeConfig(size_clamp=clamp, clip_boxes=True))[0]
    assert clipped.boxes.min() >= 0 and clipped.boxes.max() <= 1
    assert clipped.boxes[0].tolist() == [0.0, 0.0, 1.0, 0.5]
    # At most the best 2 candidates per class reach NMS.
    two = postprocess(loc, logits, priors, DecodeConfig(candidates_per_class=2))[0]
    assert torch.equal(two.scores, plain.scores[:2]) and torch.equal(two.boxes, plain.boxes[:2])


def test_top_k_per_image_is_the_best_prefix(tv_config, tv_priors):
    g = torch.Generator().manual_seed(4)
    loc, logits = _head_outputs(g, 2, tv_priors.shape[0], 21, 12.0)
    full = postprocess(loc, logits, tv_priors, tv_config.decode, top_k=10_000)
    for top_k in (1, 7, 200):
        cut = postprocess(loc, logits, tv_priors, tv_config.decode, top_k=top_k)
        for c_det, f_det in zip(cut, full):
            assert len(f_det.scores) > 200
            assert len(c_det.scores) == top_k
            assert torch.equal(c_det.scores, f_det.scores[:top_k])
            assert torch.equal(c_det.labels, f_det.labels[:top_k])
            assert torch.equal(c_det.boxes, f_det.boxes[:top_k])
    for det in full:
        assert (det.scores[:-1] >= det.scores[1:]).all()


def test_image_sizes_scale_boxes_to_pixels(tv_config, tv_priors):
    g = torch.Generator().manual_seed(5)
    loc, logits = _head_outputs(g, 2, tv_priors.shape[0], 21, 12.0)
    rel = postprocess(loc, logits, tv_priors, tv_config.decode)
    sizes = [(200, 400), (375, 500)]  # (height, width)
    for image_sizes in (sizes, torch.tensor(sizes)):
        abs_ = postprocess(loc, logits, tv_priors, tv_config.decode, image_sizes=image_sizes)
        for r, a, (h, w) in zip(rel, abs_, sizes):
            torch.testing.assert_close(a.boxes, r.boxes * torch.tensor([w, h, w, h], dtype=torch.float32))
            assert torch.equal(a.labels, r.labels) and torch.equal(a.scores, r.scores)


def test_image_without_candidates_gives_typed_empty_results(tv_config, tv_priors):
    g = torch.Generator().manual_seed(6)
    p = tv_priors.shape[0]
    loc, logits = _head_outputs(g, 3, p, 21, 12.0)
    logits[1, :, 0] = 100.0  # all background
    dets = postprocess(loc, logits, tv_priors, tv_config.decode, image_sizes=[(300, 300)] * 3)
    assert len(dets) == 3 and all(isinstance(d, Detections) for d in dets)
    assert len(dets[0].scores) > 0 and len(dets[2].scores) > 0
    empty = dets[1]
    assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == torch.float32
    assert empty.labels.shape == (0,) and empty.labels.dtype == torch.int64
    assert empty.scores.shape == (0,) and empty.scores.dtype == torch.float32
    logits[:, :, 0] = 100.0
    for det in postprocess(loc, logits, tv_priors, DecodeConfig()):
        assert det.boxes.shape == (0, 4) and det.labels.shape == (0,) and det.scores.shape == (0,)
        assert det.labels.dtype == torch.int64 and det.boxes.dtype == torch.float32


@pytest.mark.parametrize("preset", ["ssd300-torchvision", "ssd300"])
def test_batch_equals_per_image(preset):
    config = get_preset(preset)
    priors = priors_for(config)
    g = torch.Generator().manual_seed(7)
    loc, logits = _head_outputs(g, 3, priors.shape[0], 21, 10.0)
    sizes = [(300, 400), (120, 90), (500, 500)]
    batch = postprocess(loc, logits, priors, config.decode, top_k=150, image_sizes=sizes)
    for i, det in enumerate(batch):
        (one,) = postprocess(loc[i : i + 1], logits[i : i + 1], priors, config.decode, top_k=150, image_sizes=sizes[i : i + 1])
        assert len(det.scores) == 150
        assert torch.equal(det.labels, one.labels)
        assert torch.equal(det.scores, one.scores)
        assert torch.equal(det.boxes, one.boxes)
        assert det.labels.min() >= 1 and det.labels.max() <= 20


def test_one_rule_for_the_decoding_settings():
    """Every command and API takes the same ranges (ssd.postprocess.check_settings)."""
    from ssd import SSDError
    from ssd.postprocess import check_settings

    check_settings(0.0, 0.0, 1)  # an overlap of 0: any touching box is suppressed
    check_settings(1.0, 1.0, 200)
    for bad, name in (((1.5, 0.45, 200), "--min-score"), ((0.01, float("nan"), 200), "--max-overlap"),
                      ((0.01, 0.45, 0), "--top-k"), ((0.01, 0.45, 2.0), "--top-k"), ((True, 0.45, 200), "--min-score")):  # fmt: skip
        with pytest.raises(SSDError, match=f"^{name} must be"):
            check_settings(*bad, prefix="--")
    with pytest.raises(SSDError, match="^max_overlap must be in"):
        check_settings(0.01, -0.1, 200)


@pytest.mark.parametrize("min_score", [0.0, 1e-6, 0.01, 0.2, 0.9])
def test_candidate_prefilter_equals_thresholding_the_full_softmax(min_score):
    """Rows are skipped before the softmax only when no class can pass: the same candidates, bit for bit."""
    from ssd.postprocess import _candidates

    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 500, 6, generator=g) * 3
    logits[..., 0] += torch.rand(3, 500, generator=g) * 12  # background from weak to overwhelming
    logits[0, :5] = torch.tensor([0.0, math.log(min_score) if min_score > 0 else -5.0, 0, 0, 0, 0])  # near the bound
    # Rows just either side of the bound: the best foreground logit log(min_score) -+ 0.005 below the background.
    if min_score > 0:
        logits[1, :2] = 0.0
        logits[1, 0, 0], logits[1, 0, 1] = 5.0, 5.0 + math.log(min_score) - 0.005  # kept for the softmax
        logits[1, 1, 0], logits[1, 1, 1] = 5.0, 5.0 + math.log(min_score) - 0.02  # dropped before it
    scores = torch.softmax(logits, -1)[..., 1:]
    img, prior, cls = (scores > min_score).nonzero(as_tuple=True)
    rows_seen = []
    real_softmax = F.softmax

    def counting_softmax(x, dim):
        rows_seen.append(x.shape[0] if x.ndim == 2 else x.shape[0] * x.shape[1])
        return real_softmax(x, dim=dim)

    import ssd.postprocess as pp

    pp.F.softmax, saved = counting_softmax, pp.F.softmax
    try:
        got = _candidates(logits, min_score)
    finally:
        pp.F.softmax = saved
    for a, b in zip(got, (img, prior, cls, scores[img, prior, cls])):
        assert torch.equal(a, b)
    assert len(img) > 0
    if min_score >= 0.01:  # most rows (a strong background) never reach the softmax
        assert rows_seen[0] < 0.8 * logits.shape[0] * logits.shape[1]


@pytest.mark.parametrize("top_k", [1, 3, 10, 500])
@pytest.mark.parametrize("method", ["matrix", "loop"])
def test_nms_on_each_images_best_candidates_first_equals_nms_on_all(top_k, method, monkeypatch):
    """_select runs NMS on each image's 2 * top_k best candidates, then again on all candidates of the images
    where fewer than top_k survive: the result must equal NMS over every candidate, then the top_k."""
    import functools

    import ssd.postprocess as pp

    g = torch.Generator().manual_seed(top_k)
    n, k, per = 4, 3, 200
    img = torch.arange(n).repeat_interleave(per)
    cls = torch.randint(0, k, (n * per,), generator=g)
    xy = torch.rand(n * per, 2, generator=g) * 0.5
    # image 0: heavy overlap (almost everything suppressed, so the first pass cannot find top_k survivors)
    xy[:per] = 0.2 + torch.rand(per, 2, generator=g) * 0.01
    boxes = torch.cat([xy, xy + 0.2 + torch.rand(n * per, 2, generator=g) * 0.2], 1)
    scores = torch.rand(n * per, generator=g)
    scores[per : per + 20] = 0.5  # ties
    monkeypatch.setattr(pp, "grouped_nms", functools.partial(grouped_nms, method=method))
    got = pp._select(n, k, img, cls, scores, boxes, 0.45, top_k, None, None)
    keep = grouped_nms(boxes, scores, img * k + cls, 0.45, method="loop")  # everything at once
    for i in range(n):
        mine = keep[img[keep] == i]
        order = sorted(mine.tolist(), key=lambda j: (-float(scores[j]), j))[:top_k]
        assert torch.equal(got[i].scores, scores[order]) and torch.equal(got[i].labels, cls[order] + 1)
        assert torch.equal(got[i].boxes, boxes[order])
