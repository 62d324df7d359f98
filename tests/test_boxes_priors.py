"""Box coding, IoU and prior generation against torchvision, Caffe's SSD512 sizes and hand-computed numbers;
and the order contract between the priors and the flattened head outputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.ops import box_convert, box_iou

from ssd import build_model
from ssd.boxes import (
    CENTER_VARIANCE,
    SIZE_VARIANCE,
    box_area,
    cxcywh_to_xyxy,
    decode,
    encode,
    pairwise_iou,
    xyxy_to_cxcywh,
)
from ssd.config import EXTRA, PRESETS, get_preset
from ssd.priors import make_priors, priors_for


def _random_xyxy(g: torch.Generator, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    xy0 = torch.rand(*shape, 2, generator=g, dtype=dtype) * 0.8
    wh = torch.rand(*shape, 2, generator=g, dtype=dtype) * 0.5 + 0.01
    return torch.cat([xy0, xy0 + wh], dim=-1)


# --- box coding -----------------------------------------------------------------------------------


def test_format_round_trips_and_torchvision_agree():
    g = torch.Generator().manual_seed(0)
    xyxy = _random_xyxy(g, (3, 50))
    cxcywh = xyxy_to_cxcywh(xyxy)
    torch.testing.assert_close(cxcywh.reshape(-1, 4), box_convert(xyxy.reshape(-1, 4), "xyxy", "cxcywh"))
    torch.testing.assert_close(cxcywh_to_xyxy(cxcywh), xyxy, rtol=0, atol=1e-12)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh, rtol=0, atol=1e-12)


def test_hand_checked_format_and_encoding():
    box = torch.tensor([[0.2, 0.4, 0.6, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(xyxy_to_cxcywh(box), torch.tensor([[0.4, 0.6, 0.4, 0.4]], dtype=torch.float64))
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.8]], dtype=torch.float64)
    want = torch.tensor(
        [[(0.4 - 0.5) / (0.1 * 0.2), (0.6 - 0.5) / (0.1 * 0.8), math.log(0.4 / 0.2) / 0.2, math.log(0.4 / 0.8) / 0.2]],
        dtype=torch.float64,
    )
    assert (CENTER_VARIANCE, SIZE_VARIANCE) == (0.1, 0.2)
    torch.testing.assert_close(encode(xyxy_to_cxcywh(box), prior), want, rtol=1e-12, atol=1e-12)
    # Zero offsets decode to the prior itself.
    torch.testing.assert_close(decode(torch.zeros(1, 4, dtype=torch.float64), prior), prior)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(1)
    priors = xyxy_to_cxcywh(_random_xyxy(g, (200,)))
    boxes = xyxy_to_cxcywh(_random_xyxy(g, (5, 200)))  # (N, P, 4) against (P, 4)
    offsets = encode(boxes, priors)
    assert offsets.shape == (5, 200, 4)
    torch.testing.assert_close(decode(offsets, priors), boxes, rtol=1e-12, atol=1e-12)
    offsets2 = torch.randn(5, 200, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(encode(decode(offsets2, priors), priors), offsets2, rtol=1e-10, atol=1e-10)


def test_decode_matches_torchvision_box_coder():
    from torchvision.models.detection._utils import BoxCoder

    g = torch.Generator().manual_seed(2)
    priors = xyxy_to_cxcywh(_random_xyxy(g, (100,)))
    offsets = torch.randn(100, 4, generator=g, dtype=torch.float64) * 3
    clamp = math.log(1000.0 / 16)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=clamp)
    want = coder.decode_single(offsets, cxcywh_to_xyxy(priors))
    torch.testing.assert_close(cxcywh_to_xyxy(decode(offsets, priors, size_clamp=clamp)), want)
    boxes = xyxy_to_cxcywh(_random_xyxy(g, (100,)))
    torch.testing.assert_close(encode(boxes, priors), coder.encode_single(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(priors)))


def test_decode_size_clamp_caps_exp():
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.2]], dtype=torch.float64)
    offsets = torch.tensor([[0.0, 0.0, 1e4, 50.0]], dtype=torch.float64)  # 0.2 * offset = 2000, 10
    clamp = math.log(1000.0 / 16)
    out = decode(offsets, prior, size_clamp=clamp)
    torch.testing.assert_close(out[0, 2], torch.tensor(0.1 * 1000 / 16, dtype=torch.float64))
    torch.testing.assert_close(out[0, 3], torch.tensor(0.2 * 1000 / 16, dtype=torch.float64))
    assert torch.isinf(decode(offsets, prior)[0, 2])  # no clamp: exp(2000) overflows
    # Under the clamp nothing changes; the clamp only bounds from above.
    small = torch.tensor([[0.3, -0.2, -40.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(decode(small, prior, size_clamp=clamp), decode(small, prior))


# --- IoU ------------------------------------------------------------------------------------------


def test_pairwise_iou_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    a, b = _random_xyxy(g, (40,)), _random_xyxy(g, (30,))
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(a, b), rtol=1e-12, atol=1e-12)


def test_pairwise_iou_broadcasts_priors_against_padded_batch():
    g = torch.Generator().manual_seed(4)
    priors = _random_xyxy(g, (25,))  # (P, 4)
    gt = _random_xyxy(g, (3, 7))  # (N, M, 4)
    iou = pairwise_iou(priors, gt)
    assert iou.shape == (3, 25, 7)
    for i in range(3):
        torch.testing.assert_close(iou[i], box_iou(priors, gt[i]), rtol=1e-12, atol=1e-12)


def test_iou_hand_checked():
    # Two unit squares offset by half a side in x and y: intersection 0.25, union 2 - 0.25.
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0.5, 1.5, 1.5]], dtype=torch.float64)
    assert pairwise_iou(a, b).item() == pytest.approx(0.25 / (2 - 0.25), abs=1e-15)
    assert pairwise_iou(a, a).item() == 1.0
    disjoint = torch.tensor([[2.0, 2.0, 3.0, 3.0]], dtype=torch.float64)
    assert pairwise_iou(a, disjoint).item() == 0.0
    degenerate = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    assert pairwise_iou(degenerate, degenerate).item() == 0.0  # empty union -> 0, not NaN
    assert box_area(torch.tensor([[1.0, 1.0, 0.0, 2.0]])).item() == 0.0


# --- priors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset,count,maps,per_pos",
    [
        ("ssd300", 8732, (38, 19, 10, 5, 3, 1), (4, 6, 6, 6, 4, 4)),
        ("ssd300-torchvision", 8732, (38, 19, 10, 5, 3, 1), (4, 6, 6, 6, 4, 4)),
        ("ssd512", 24564, (64, 32, 16, 8, 4, 2, 1), (4, 6, 6, 6, 6, 4, 4)),
    ],
)
def test_prior_counts(preset, count, maps, per_pos):
    cfg = get_preset(preset)
    assert cfg.feature_map_sizes == maps
    assert cfg.priors.priors_per_position == per_pos
    assert cfg.num_priors == count
    priors = priors_for(cfg)
    assert priors.shape == (count, 4) and priors.dtype == torch.float32
    assert sum(f * f * a for f, a in zip(maps, per_pos)) == count


def _map_offsets(cfg) -> list[int]:
    out, start = [], 0
    for f, a in zip(cfg.feature_map_sizes, cfg.priors.priors_per_position):
        out.append(start)
        start += f * f * a
    return out


def test_ssd300_hand_computed_priors():
    cfg = get_preset("ssd300")
    priors = priors_for(cfg).double()
    off = _map_offsets(cfg)
    assert off == [0, 5776, 7942, 8542, 8692, 8728]
    c = 0.5 / 38
    # conv4_3, cell (0, 0): order 1, extra, 2, 1/2.
    torch.testing.assert_close(priors[0], torch.tensor([c, c, 0.1, 0.1], dtype=torch.float64), atol=1e-7, rtol=0)
    e = math.sqrt(0.1 * 0.2)
    torch.testing.assert_close(priors[1], torch.tensor([c, c, e, e], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        priors[2], torch.tensor([c, c, 0.1 * math.sqrt(2), 0.1 / math.sqrt(2)], dtype=torch.float64), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(
        priors[3], torch.tensor([c, c, 0.1 / math.sqrt(2), 0.1 * math.sqrt(2)], dtype=torch.float64), atol=1e-7, rtol=0
    )
    # conv4_3, row 0, column 1 comes next (row-major), then row 1 after 38 cells.
    torch.testing.assert_close(priors[4, :2], torch.tensor([1.5 / 38, c], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(priors[38 * 4, :2], torch.tensor([c, 1.5 / 38], dtype=torch.float64), atol=1e-7, rtol=0)
    # conv7 (19x19): ratios 1, extra, 2, 3, 0.5, 0.333 of scale 0.2.
    p = priors[off[1] : off[1] + 6]
    torch.testing.assert_close(p[:, 0], torch.full((6,), 0.5 / 19, dtype=torch.float64), atol=1e-7, rtol=0)
    want_w = [0.2, math.sqrt(0.2 * 0.375), 0.2 * math.sqrt(2), 0.2 * math.sqrt(3), 0.2 * math.sqrt(0.5), 0.2 * math.sqrt(0.333)]
    torch.testing.assert_close(p[:, 2], torch.tensor(want_w, dtype=torch.float64), atol=1e-7, rtol=0)
    # conv10_2 (3x3, scale 0.725): its 2:1 prior is 0.725 * sqrt(2) > 1 wide, clamped to 1.
    p = priors[off[4] : off[4] + 4]
    torch.testing.assert_close(p[2, 2:], torch.tensor([1.0, 0.725 / math.sqrt(2)], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(p[3, 2:], torch.tensor([0.725 / math.sqrt(2), 1.0], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(p[1, 2:], torch.full((2,), math.sqrt(0.725 * 0.9), dtype=torch.float64), atol=1e-7, rtol=0)
    # conv11_2 (1x1): centre 0.5, scale 0.9, the literal extra prior 1.0, 2:1 and 1:2 clamped to 1.
    want = torch.tensor(
        [
            [0.5, 0.5, 0.9, 0.9],
            [0.5, 0.5, 1.0, 1.0],
            [0.5, 0.5, 1.0, 0.9 / math.sqrt(2)],
            [0.5, 0.5, 0.9 / math.sqrt(2), 1.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(priors[off[5] :], want, atol=1e-7, rtol=0)
    assert priors.min() >= 0 and priors.max() <= 1


def test_ssd300_torchvision_priors_equal_default_box_generator():
    cfg = get_preset("ssd300-torchvision")
    gen = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    grid = [[f, f] for f in cfg.feature_map_sizes]
    want = gen._grid_default_boxes(grid, [300, 300], dtype=torch.float32)
    torch.testing.assert_close(priors_for(cfg), want, rtol=0, atol=1e-6)
    # The same through the public forward, which returns absolute xyxy anchors per image.
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    fmaps = [torch.zeros(1, 1, f, f) for f in cfg.feature_map_sizes]
    anchors = gen(images, fmaps)[0]
    torch.testing.assert_close(cxcywh_to_xyxy(priors_for(cfg)) * 300, anchors, rtol=0, atol=1e-4)


def test_ssd512_priors_are_caffes_and_equal_torchvisions_generator_given_the_same_scales():
    """The paper's SSD512 as Caffe's ssd_pascal_512.py builds it: sizes 7% and 15% of 512 px on conv4_3, then 15% to
    90% in steps of 15 (each map's max size the next map's min size, up to 105%), steps 8 to 512, no clipping;
    torchvision's DefaultBoxGenerator given those scales and steps is the independent oracle."""
    cfg = get_preset("ssd512")
    min_ratio, max_ratio, n = 15, 90, 7  # Caffe's computation, as in its script
    step = (max_ratio - min_ratio) // (n - 2)
    min_sizes = [512 * 7 / 100] + [512 * r / 100 for r in range(min_ratio, max_ratio + 1, step)]
    max_sizes = [512 * 15 / 100] + [512 * (r + step) / 100 for r in range(min_ratio, max_ratio + 1, step)]
    assert cfg.priors.min_sizes == pytest.approx(min_sizes) and cfg.priors.max_sizes == pytest.approx(max_sizes)
    assert max_sizes[-1] == pytest.approx(537.6) and cfg.priors.clip == "none"
    gen = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[s / 512 for s in min_sizes] + [max_sizes[-1] / 512],
        steps=[8, 16, 32, 64, 128, 256, 512],
        clip=False,
    )
    grid = [[f, f] for f in cfg.feature_map_sizes]
    want = gen._grid_default_boxes(grid, [512, 512], dtype=torch.float64)
    priors = priors_for(cfg).double()
    torch.testing.assert_close(priors, want, rtol=0, atol=1e-6)
    # Hand-computed spot checks: the first prior, and the last map's 2:1 prior, wider than the image (unclipped).
    c = 4 / 512  # (0 + 0.5) * 8 / 512
    torch.testing.assert_close(priors[0], torch.tensor([c, c, 0.07, 0.07], dtype=torch.float64), atol=1e-7, rtol=0)
    last = priors[_map_offsets(cfg)[6] :]
    torch.testing.assert_close(last[1, 2:], torch.full((2,), math.sqrt(460.8 * 537.6) / 512, dtype=torch.float64),
                               atol=1e-7, rtol=0)  # fmt: skip
    torch.testing.assert_close(last[2, 2:], torch.tensor([0.9 * math.sqrt(2), 0.9 / math.sqrt(2)], dtype=torch.float64),
                               atol=1e-7, rtol=0)  # fmt: skip


def test_clip_modes():
    from ssd.config import PriorConfig

    ratios = ((1.0, EXTRA, 2.0),)
    for clip, want in [
        ("none", [[0.5, 0.5, 0.9, 0.9], [0.5, 0.5, 1.2, 1.2], [0.5, 0.5, 0.9 * math.sqrt(2), 0.9 / math.sqrt(2)]]),
        ("wh", [[0.5, 0.5, 0.9, 0.9], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 0.9 / math.sqrt(2)]]),
    ]:
        cfg = PriorConfig(aspect_ratios=ratios, scales=(0.9,), last_extra_scale=1.2, clip=clip)
        torch.testing.assert_close(make_priors(cfg, [1], 300).double(), torch.tensor(want, dtype=torch.float64), atol=1e-7, rtol=0)
    # "all" also clamps centres (offset 0 with steps places centres outside on the right/bottom).
    cfg = PriorConfig(aspect_ratios=((1.0,),), scales=(0.5, 0.6), steps=(400,), offset=1.0, clip="all")
    p = make_priors(cfg, [2], 300)
    assert p[:, :2].max() == 1.0  # (1 + 1) * 400 / 300 > 1 clamped
    cfg = dataclasses.replace(cfg, clip="wh")
    assert make_priors(cfg, [2], 300)[:, :2].max() > 1.0


# --- order contract and shapes ------------------------------------------------------------------


def _expected_prior(cfg, k: int, row: int, col: int, a: int) -> list[float]:
    """Prior (cx, cy, w, h) of map k, cell (row, col), ratio slot a, from the configuration's words."""
    f = cfg.feature_map_sizes[k]
    s, extra = cfg.priors.map_scales(cfg.image_size)[k]
    r = cfg.priors.aspect_ratios[k][a]
    w, h = (extra, extra) if r == EXTRA else (s * math.sqrt(r), s / math.sqrt(r))
    return [min(max(v, 0.0), 1.0) for v in ((col + 0.5) / f, (row + 0.5) / f, w, h)]


def test_head_outputs_follow_prior_order_map_row_col_prior(monkeypatch):
    torch.manual_seed(0)
    model = build_model("small", class_names=3).eval()
    cfg = model.config
    c = cfg.num_classes
    sizes, chans = cfg.feature_map_sizes, cfg.source_channels
    per_pos = cfg.priors.priors_per_position
    # Synthetic source maps: channel 0 holds the row, channel 1 the column of each cell.
    fmaps = []
    for f, ch in zip(sizes, chans):
        x = torch.zeros(1, ch, f, f)
        x[0, 0] = torch.arange(f, dtype=torch.float32).view(f, 1)
        x[0, 1] = torch.arange(f, dtype=torch.float32).view(1, f)
        fmaps.append(x)
    with torch.no_grad():
        for k, (loc, cls) in enumerate(zip(model.loc_heads, model.cls_heads)):
            loc.weight.zero_()
            loc.bias.zero_()
            cls.weight.zero_()
            for a in range(per_pos[k]):
                # loc channel a*4 + j: (row, column, prior slot, map index) via the 3x3 kernel's centre tap.
                loc.weight[a * 4 + 0, 0, 1, 1] = 1.0
                loc.weight[a * 4 + 1, 1, 1, 1] = 1.0
                loc.bias[a * 4 + 2] = a
                loc.bias[a * 4 + 3] = k
                cls.bias[a * c : (a + 1) * c] = 100 * k + 10 * a + torch.arange(c, dtype=torch.float32)
    monkeypatch.setattr(model, "features", lambda images: fmaps)
    with torch.no_grad():
        loc, logits = model(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    assert loc.shape == (1, cfg.num_priors, 4) and logits.shape == (1, cfg.num_priors, c)
    codes = loc[0].round().long().tolist()
    # The flattened order is exactly (map, row, column, prior).
    want_codes = [
        [row, col, a, k] for k, (f, na) in enumerate(zip(sizes, per_pos)) for row in range(f) for col in range(f) for a in range(na)
    ]
    assert codes == want_codes
    for p, (row, col, a, k) in enumerate(codes):
        assert logits[0, p].tolist() == [100 * k + 10 * a + j for j in range(c)]
    # And model.priors_cxcywh lists the prior of that same (map, row, column, slot) at each index.
    want_priors = torch.tensor([_expected_prior(cfg, k, row, col, a) for row, col, a, k in codes], dtype=torch.float64)
    torch.testing.assert_close(model.priors_cxcywh.double(), want_priors, rtol=0, atol=1e-6)


def test_real_forward_bias_pattern_and_feature_sizes():
    """Without patching: zero head weights, biases encoding (map, slot); the real feature maps' sizes."""
    torch.manual_seed(0)
    model = build_model("small", class_names=2).eval()
    cfg = model.config
    with torch.no_grad():
        fmaps = model.features(torch.rand(1, 3, cfg.image_size, cfg.image_size))
        assert [tuple(m.shape[1:]) for m in fmaps] == [(ch, f, f) for ch, f in zip(cfg.source_channels, cfg.feature_map_sizes)]
        for k, loc in enumerate(model.loc_heads):
            loc.weight.zero_()
            a = torch.arange(loc.bias.numel()) // 4
            loc.bias.copy_((10 * k + a).float())
        loc, _ = model(torch.rand(1, 3, cfg.image_size, cfg.image_size))
    want = torch.cat(
        [
            (10 * k + torch.arange(na, dtype=torch.float32)).repeat(f * f)
            for k, (f, na) in enumerate(zip(cfg.feature_map_sizes, cfg.priors.priors_per_position))
        ]
    )
    assert torch.equal(loc[0, :, 0], want) and torch.equal(loc[0, :, 3], want)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_output_shapes_of_every_preset(preset):
    torch.manual_seed(0)
    model = build_model(preset, class_names=4).eval()
    cfg = model.config
    with torch.no_grad():
        loc, logits = model(torch.rand(1, 3, cfg.image_size, cfg.image_size))
    assert loc.shape == (1, cfg.num_priors, 4)
    assert logits.shape == (1, cfg.num_priors, 5)
    assert model.priors_cxcywh.shape == (cfg.num_priors, 4)
    assert torch.isfinite(loc).all() and torch.isfinite(logits).all()
