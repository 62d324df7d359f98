"""The tutorial's augmentations: seeded frequencies of every random choice, geometric invariants on VOCmini and
on random (also degenerate) boxes, the single-resample rendering against the naive composition, and the
determinism of the dataset and the batch sampler (workers, epochs, resume, ranks)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from conftest import VOCMINI, need
from ssd.config import IMAGENET_MEAN, VOC_CLASSES
from ssd.data.dataset import DetectionDataset, TrainBatchSampler, collate, read_image
from ssd.data.index import DatasetIndex, build_voc_index
from ssd.data.transforms import (
    CROP_MIN_IOUS,
    EvalTransform,
    PhotometricDistort,
    PhotometricParams,
    Target,
    TrainParams,
    TrainTransform,
    render_window,
    sample_iou_crop,
    sample_zoom_out,
)
from ssd.errors import SSDError

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.load_profile("ci")

MEAN = IMAGENET_MEAN
N = 10_000


# --------------------------------------------------------------------------------------------------
# helpers


def smooth_image(h: int, w: int) -> torch.Tensor:
    """A uint8 (3, h, w) image of slow sinusoids: resampling differences stay small on it."""
    y = torch.arange(h, dtype=torch.float32).view(h, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, w)
    channels = [0.5 + 0.4 * torch.sin(x / 23 + y / 31), 0.5 + 0.4 * torch.cos(x / 29 - y / 19), 0.5 + 0.3 * torch.sin((x + y) / 27)]
    return (torch.stack(channels) * 255).round().to(torch.uint8)


def expected_boxes(target: Target, params: TrainParams, mirror: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes_xyxy_rel, indices of the objects kept), computed from the drawn parameters the naive way, in float64."""
    top, left = params.image_tl
    # the shift onto the canvas and the centre test in float32, as the library does them; the rest in float64
    boxes32 = target.boxes.float().reshape(-1, 4) + torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = boxes32.double()
    wl, wt, wr, wb = (float(v) for v in params.window)
    index = torch.arange(len(boxes))
    if params.keep is not None:
        cx, cy = (boxes32[:, 0] + boxes32[:, 2]) / 2, (boxes32[:, 1] + boxes32[:, 3]) / 2
        strictly_inside = (cx > wl) & (cx < wr) & (cy > wt) & (cy < wb)
        assert torch.equal(params.keep, strictly_inside)
        boxes, index = boxes[strictly_inside], index[strictly_inside]
        boxes = torch.stack([boxes[:, 0].clamp(min=wl), boxes[:, 1].clamp(min=wt), boxes[:, 2].clamp(max=wr), boxes[:, 3].clamp(max=wb)], 1)
    rel = (boxes - torch.tensor([wl, wt, wl, wt], dtype=torch.float64)) / torch.tensor([wr - wl, wb - wt] * 2, dtype=torch.float64)
    if params.flip and mirror:
        rel = torch.stack([1 - rel[:, 2], rel[:, 1], 1 - rel[:, 0], rel[:, 3]], 1)
    rel = rel.clamp(0, 1)
    ok = (rel[:, 2] > rel[:, 0]) & (rel[:, 3] > rel[:, 1])
    return rel[ok], index[ok]


def check_train_output(image: torch.Tensor, out: torch.Tensor, target: Target, result: Target, params: TrainParams, size: int, mirror: bool = True):
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    b = result.boxes
    assert b.dtype == torch.float32 and b.shape == (len(result.labels), 4) and len(result.difficult) == len(result.labels)
    assert torch.isfinite(b).all()
    assert (b >= 0).all() and (b <= 1).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    # each object carries a unique label: labels and difficult flags come back with their own boxes
    labels = result.labels.tolist()
    assert len(set(labels)) == len(labels)
    index = [target.labels.tolist().index(v) for v in labels]
    assert result.difficult.tolist() == [bool(target.difficult[i]) for i in index]
    rel, kept = expected_boxes(target, params, mirror)
    # float32 pipeline vs float64 reference: a box the reference keeps with a tiny area may vanish, never the reverse
    big = ((rel[:, 2] - rel[:, 0]) > 1e-5) & ((rel[:, 3] - rel[:, 1]) > 1e-5)
    assert set(kept[big].tolist()) <= set(index) <= set(kept.tolist())
    ref = {k: r for k, r in zip(kept.tolist(), rel)}
    for i, box in zip(index, b):
        torch.testing.assert_close(box.double(), ref[i], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# frequencies over 10k seeded draws


def test_photometric_frequencies_ranges_and_order():
    rng = random.Random(1)
    distort = PhotometricDistort()
    applied, first = Counter(), Counter()
    for _ in range(N):
        p = distort.sample(rng)
        assert sorted(p.order) == sorted(PhotometricDistort.OPS) and set(p.factors) == set(PhotometricDistort.OPS)
        first[p.order[0]] += 1
        for op, f in p.factors.items():
            if f is None:
                continue
            applied[op] += 1
            if op == "hue":
                assert -18 / 255 <= f <= 18 / 255
            else:
                assert 0.5 <= f <= 1.5
    for op in PhotometricDistort.OPS:
        assert abs(applied[op] / N - 0.5) <= 0.02, (op, applied[op])
        assert abs(first[op] / N - 0.25) <= 0.02, (op, first[op])


def test_photometric_apply_follows_the_drawn_order():
    image = smooth_image(24, 32)
    none = PhotometricParams(("hue", "brightness", "contrast", "saturation"), dict.fromkeys(PhotometricDistort.OPS))
    assert torch.equal(PhotometricDistort.apply(image, none), image)
    factors = {"brightness": 1.4, "contrast": 0.6, "saturation": None, "hue": 0.05}
    a = PhotometricDistort.apply(image, PhotometricParams(("hue", "brightness", "saturation", "contrast"), factors))
    from ssd.data.color import adjust_hue

    manual = TF.adjust_contrast(TF.adjust_brightness(adjust_hue(image, 0.05), 1.4), 0.6)
    assert torch.equal(a, manual)
    b = PhotometricDistort.apply(image, PhotometricParams(("contrast", "brightness", "saturation", "hue"), factors))
    assert not torch.equal(a, b)


def test_zoom_out_and_flip_frequencies():
    t = TrainTransform(300, MEAN, crop=False)
    target = Target(torch.tensor([[10.0, 20, 60, 80]]), torch.tensor([1]), torch.tensor([False]))
    rng = random.Random(2)
    zoomed = flipped = 0
    scales = []
    for _ in range(N):
        p = t.sample_params(100, 120, target, rng)
        zoomed += p.zoomed
        flipped += p.flip
        ch, cw = p.canvas_hw
        top, left = p.image_tl
        if p.zoomed:
            assert 100 <= ch <= 400 and 120 <= cw <= 480
            assert 0 <= top <= ch - 100 and 0 <= left <= cw - 120
            scales.append(cw / 120)
        else:
            assert (ch, cw, top, left) == (100, 120, 0, 0)
        assert p.window.tolist() == [0, 0, cw, ch] and p.keep is None and p.crop_draws == ()
    assert abs(zoomed / N - 0.5) <= 0.02
    assert abs(flipped / N - 0.5) <= 0.02
    assert abs(sum(scales) / len(scales) - 2.5) <= 0.05  # scale uniform in [1, 4]
    # switched off: never
    off = TrainTransform(300, MEAN, zoom_out=1.0, crop=False, flip=False)
    assert not any(off.sample_params(100, 120, target, rng).zoomed or off.sample_params(100, 120, target, rng).flip for _ in range(200))


@pytest.mark.slow
def test_crop_options_drawn_uniformly():
    boxes = torch.tensor([[0, 0, 300, 300], [30, 40, 200, 220], [150, 100, 260, 280], [10, 200, 60, 260]], dtype=torch.float32)
    rng = random.Random(3)
    draws: list = []
    for _ in range(N):
        sample_iou_crop(boxes, 300, 300, rng, draws=draws)
    counts = Counter(draws)
    assert set(counts) == set(CROP_MIN_IOUS)
    for option in CROP_MIN_IOUS:
        assert abs(counts[option] / len(draws) - 1 / 7) <= 0.015, (option, counts[option], len(draws))
    assert len(draws) > N  # failed options are drawn again


def test_sample_params_records_the_crop_draws():
    t = TrainTransform(300, MEAN)
    target = Target(torch.tensor([[0.0, 0, 100, 100], [90, 90, 94, 94]]), torch.tensor([1, 2]), torch.tensor([False, True]))
    rng = random.Random(4)
    for _ in range(300):
        p = t.sample_params(100, 100, target, rng)
        assert len(p.crop_draws) >= 1 and all(d is not None for d in p.crop_draws[:-1])
        assert (p.keep is None) == (p.crop_draws[-1] is None)


def test_call_equals_sample_params_then_apply():
    t = TrainTransform(48, MEAN)
    image = smooth_image(40, 56)
    target = Target(torch.tensor([[3.0, 4, 30, 33], [20, 10, 50, 38]]), torch.tensor([1, 2]), torch.tensor([False, True]))
    for seed in range(10):
        a = t(image, target, random.Random(seed))
        b = t.apply(image, target, t.sample_params(40, 56, target, random.Random(seed)))
        assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


# --------------------------------------------------------------------------------------------------
# invariants on VOCmini images


@pytest.fixture(scope="module")
def vocmini_test() -> DatasetIndex:
    return build_voc_index("test", [(need(VOCMINI), "test")], VOC_CLASSES)


def test_train_transform_on_vocmini(vocmini_test):
    # the photometric distortions dominate on full-size images (slow on a busy CPU): on for two images, off for the rest
    full, geometric = TrainTransform(64, MEAN), TrainTransform(64, MEAN, photometric=False)
    records = [r for r in vocmini_test.images if len(r.labels) >= 2][:10]
    crops = flips = zooms = 0
    for k, r in enumerate(records):
        image = read_image(r.file)
        m = len(r.labels)
        # unique labels, so that each returned object can be traced to its input box
        target = Target(torch.from_numpy(r.boxes_xyxy_abs), torch.arange(1, m + 1), torch.from_numpy(r.difficult) | (torch.arange(m) % 3 == 0))
        t = full if k < 2 else geometric
        for seed in range(3):
            params = t.sample_params(r.height, r.width, target, random.Random(1000 * k + seed))
            out, result = t.apply(image, target, params)
            check_train_output(image, out, target, result, params, 64)
            crops += params.keep is not None
            flips += params.flip
            zooms += params.zoomed
    assert crops and flips and zooms  # every branch was exercised


def test_eval_transform_boxes_relative(vocmini_test):
    r = vocmini_test.images[0]
    image = read_image(r.file)
    target = Target(torch.from_numpy(r.boxes_xyxy_abs), torch.from_numpy(r.labels), torch.from_numpy(r.difficult))
    out, result = EvalTransform(96)(image, target)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, TF.resize(image, [96, 96], antialias=True).float() / 255)
    expected = target.boxes / torch.tensor([r.width, r.height, r.width, r.height], dtype=torch.float32)
    torch.testing.assert_close(result.boxes, expected)
    assert torch.equal(result.labels, target.labels) and torch.equal(result.difficult, target.difficult)
    assert (result.boxes >= 0).all() and (result.boxes <= 1).all()


def test_zoom_out_fill_is_the_model_mean_exactly():
    image = smooth_image(30, 40)
    target = Target(torch.tensor([[5.0, 5, 20, 25]]), torch.tensor([1]), torch.tensor([False]))
    t = TrainTransform(64, MEAN, photometric=False, zoom_out=4.0, crop=False, flip=False)
    mean = torch.tensor(MEAN, dtype=torch.float32)
    found = 0
    for seed in range(200):
        p = t.sample_params(30, 40, target, random.Random(seed))
        ch, cw = p.canvas_hw
        top, left = p.image_tl
        if not (p.zoomed and ch >= 60 and top > 4 and left > 4 and top + 30 < ch - 4 and left + 40 < cw - 4):
            continue
        found += 1
        out, _ = t.apply(image, target, p)
        for y, x in ((0, 0), (0, 63), (63, 0), (63, 63)):
            assert torch.equal(out[:, y, x], mean), (seed, y, x)
        # every output pixel away from the image's footprint is the mean, bit for bit
        s = 64 / cw
        xs = (torch.arange(64) + 0.5) / s
        ys = (torch.arange(64) + 0.5) * ch / 64
        outside = ((xs < left - 2 / s) | (xs > left + 40 + 2 / s)).view(1, 64) | ((ys < top - 2 * ch / 64) | (ys > top + 30 + 2 * ch / 64)).view(64, 1)
        assert outside.any() and torch.equal(out[:, outside], mean.view(3, 1).expand(3, int(outside.sum())))
    assert found >= 5
    # a 4x canvas with the image in the middle, built by hand
    p = TrainParams(None, True, (120, 160), (45, 60), torch.tensor([0.0, 0, 160, 120]), None, False)
    out, _ = t.apply(image, target, p)
    assert torch.equal(out[:, :8, :].reshape(3, -1), mean.view(3, 1).expand(3, 8 * 64))
    assert not torch.equal(out[:, 32, 32], mean)


def test_flip_mirrors_boxes_unless_told_not_to():
    image = smooth_image(50, 70)
    target = Target(torch.tensor([[5.0, 6, 30, 40], [40, 10, 69, 49]]), torch.tensor([1, 2]), torch.tensor([False, True]))
    t = TrainTransform(32, MEAN, photometric=False)
    broken = TrainTransform(32, MEAN, photometric=False, mirror_boxes=False)
    for seed in range(6):
        p = t.sample_params(50, 70, target, random.Random(seed))
        plain = TrainParams(p.photometric, p.zoomed, p.canvas_hw, p.image_tl, p.window, p.keep, False)
        mirrored = TrainParams(p.photometric, p.zoomed, p.canvas_hw, p.image_tl, p.window, p.keep, True)
        out0, t0 = t.apply(image, target, plain)
        out1, t1 = t.apply(image, target, mirrored)
        assert torch.equal(out1, out0.flip(-1))
        assert torch.equal(t1.labels, t0.labels) and torch.equal(t1.difficult, t0.difficult)
        torch.testing.assert_close(t1.boxes, torch.stack([1 - t0.boxes[:, 2], t0.boxes[:, 1], 1 - t0.boxes[:, 0], t0.boxes[:, 3]], 1))
        out2, t2 = broken.apply(image, target, mirrored)
        assert torch.equal(out2, out1) and torch.equal(t2.boxes, t0.boxes)  # image mirrored, boxes not


def _naive_render(image, canvas_hw, image_tl, window, size, fill):
    """Materialise the zoomed canvas, crop the window, resize: what render_window avoids doing."""
    (ch, cw), (top, left) = canvas_hw, image_tl
    _, h, w = image.shape
    canvas = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1).expand(3, ch, cw).clone()
    canvas[:, top : top + h, left : left + w] = image.float() / 255
    wl, wt, wr, wb = (int(v) for v in window)
    return TF.resize(canvas[:, wt:wb, wl:wr], [size, size], antialias=True)


def test_render_window_agrees_with_the_naive_composition(vocmini_test):
    rng = random.Random(5)
    real = read_image(vocmini_test.images[0].file)
    for trial in range(12):
        image = smooth_image(60, 80) if trial % 2 == 0 else real
        _, h, w = image.shape
        ch, cw, top, left = sample_zoom_out(h, w, 3.0, rng) if trial % 3 else (h, w, 0, 0)
        ww, wh = rng.randint(int(0.3 * cw), cw), rng.randint(int(0.3 * ch), ch)
        wl, wt = rng.randint(0, cw - ww), rng.randint(0, ch - wh)
        window = torch.tensor([wl, wt, wl + ww, wt + wh], dtype=torch.float32)
        size = rng.choice([32, 64, 150])
        ours = render_window(image, (ch, cw), (top, left), window, size, MEAN, False)
        naive = _naive_render(image, (ch, cw), (top, left), window, size, MEAN)
        assert ours.shape == naive.shape == (3, size, size)
        # compare away from the image's border, whose position the single resample rounds to whole output pixels
        sx, sy = size / ww, size / wh
        xs, ys = wl + (torch.arange(size) + 0.5) / sx, wt + (torch.arange(size) + 0.5) / sy
        mx, my = max(2.0, 2 / sx), max(2.0, 2 / sy)
        okx = ((xs - left).abs() > mx) & ((xs - left - w).abs() > mx)
        oky = ((ys - top).abs() > my) & ((ys - top - h).abs() > my)
        mask = oky.view(size, 1) & okx.view(1, size)
        assert mask.float().mean() > 0.5
        diff = (ours - naive).abs()[:, mask]
        if trial % 2 == 0:
            assert diff.max() <= 0.03, (trial, float(diff.max()))
        else:
            assert diff.mean() <= 0.015, (trial, float(diff.mean()))
        flipped = render_window(image, (ch, cw), (top, left), window, size, MEAN, True)
        assert torch.equal(flipped, ours.flip(-1))
    # no zoom, no crop: a plain resize, up to uint8 rounding
    image = smooth_image(45, 70)
    ours = render_window(image, (45, 70), (0, 0), torch.tensor([0.0, 0, 70, 45]), 64, MEAN, False)
    assert (ours - _naive_render(image, (45, 70), (0, 0), torch.tensor([0, 0, 70, 45]), 64, MEAN)).abs().max() <= 1.01 / 255


def test_crop_keeps_objects_with_centres_strictly_inside_and_clips_them():
    image = smooth_image(60, 60)
    boxes = torch.tensor([
        [5.0, 20, 30, 30],   # centre (17.5, 25) inside, left part outside -> clipped
        [0, 0, 20, 20],      # centre (10, 10) exactly on the window's corner -> dropped
        [40, 40, 60, 60],    # centre (50, 50) on the right/bottom edge -> dropped
        [20, 15, 30, 25],    # inside, untouched
        [45, 0, 59, 9],      # centre outside -> dropped
    ])  # fmt: skip
    target = Target(boxes, torch.arange(1, 6), torch.tensor([True, False, False, True, False]))
    window = torch.tensor([10.0, 10, 50, 50])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep = (centres[:, 0] > 10) & (centres[:, 0] < 50) & (centres[:, 1] > 10) & (centres[:, 1] < 50)
    p = TrainParams(None, False, (60, 60), (0, 0), window, keep, False)
    _, result = TrainTransform(40, MEAN, photometric=False).apply(image, target, p)
    assert result.labels.tolist() == [1, 4] and result.difficult.tolist() == [True, True]
    torch.testing.assert_close(result.boxes, torch.tensor([[0, 10, 20, 20], [10, 5, 20, 15]]) / 40)
    # and sample_iou_crop's mask is the strict test, also where centres fall on a window's edge
    rng = random.Random(6)
    grid = torch.tensor([[x, y, x + 20, y + 20] for x in range(0, 81, 10) for y in range(0, 81, 10)], dtype=torch.float32)
    on_edge = 0
    for _ in range(300):
        crop = sample_iou_crop(grid, 100, 100, rng)
        if crop is None:
            continue
        window, inside = crop
        c = (grid[:, :2] + grid[:, 2:]) / 2
        assert torch.equal(inside, (c[:, 0] > window[0]) & (c[:, 0] < window[2]) & (c[:, 1] > window[1]) & (c[:, 1] < window[3]))
        on_edge += int(((c[:, 0] == window[0]) | (c[:, 0] == window[2]) | (c[:, 1] == window[1]) | (c[:, 1] == window[3])).sum())
    assert on_edge > 0


# --------------------------------------------------------------------------------------------------
# property-based: random and degenerate boxes


@st.composite
def image_and_boxes(draw):
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    boxes = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["random", "zero_width", "zero_height", "point", "whole", "touching", "thin"]))
        coord = lambda hi: draw(st.floats(0, hi, allow_nan=False, width=32))  # noqa: E731
        x1, x2 = sorted((coord(w), coord(w)))
        y1, y2 = sorted((coord(h), coord(h)))
        if kind == "zero_width":
            x2 = x1
        elif kind == "zero_height":
            y2 = y1
        elif kind == "point":
            x2, y2 = x1, y1
        elif kind == "whole":
            x1, y1, x2, y2 = 0, 0, w, h
        elif kind == "touching":
            x1, y2 = 0.0, float(h)
        elif kind == "thin":
            x2 = min(x1 + 1e-3, w)
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**32 - 1))
    return h, w, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), seed


@given(data=image_and_boxes(), mirror=st.booleans())
def test_train_transform_property(data, mirror):
    h, w, boxes, seed = data
    m = len(boxes)
    g = torch.Generator().manual_seed(seed % 2**31)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    target = Target(boxes, torch.arange(1, m + 1) * 3, torch.rand(m, generator=g) < 0.5)
    t = TrainTransform(16, MEAN, mirror_boxes=mirror)
    params = t.sample_params(h, w, target, random.Random(seed))
    out, result = t.apply(image, target, params)
    check_train_output(image, out, target, result, params, 16, mirror)


@given(
    hw=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    rel=st.lists(st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_sample_iou_crop_property(hw, rel, seed):
    h, w = hw
    boxes = torch.tensor([[min(a, c) * w, min(b, d) * h, max(a, c) * w, max(b, d) * h] for a, b, c, d in rel], dtype=torch.float32)
    draws: list = []
    crop = sample_iou_crop(boxes, h, w, random.Random(seed), draws=draws)
    assert draws and all(d in CROP_MIN_IOUS for d in draws) and all(d is not None for d in draws[:-1])
    if crop is None:
        assert draws[-1] is None
        return
    window, inside = crop
    min_iou = draws[-1]
    l, t, r, b = window.tolist()
    assert all(v == int(v) for v in (l, t, r, b))
    assert 0 <= l < r <= w and 0 <= t < b <= h
    assert r - l >= int(0.3 * w) and b - t >= int(0.3 * h) and 0.5 < (b - t) / (r - l) < 2
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    strict = (centres[:, 0] > l) & (centres[:, 0] < r) & (centres[:, 1] > t) & (centres[:, 1] < b)
    assert torch.equal(inside, strict) and inside.any()
    bx = boxes.double()
    iw = (torch.minimum(bx[:, 2], torch.tensor(r)) - torch.maximum(bx[:, 0], torch.tensor(l))).clamp(min=0)
    ih = (torch.minimum(bx[:, 3], torch.tensor(b)) - torch.maximum(bx[:, 1], torch.tensor(t))).clamp(min=0)
    inter = iw * ih
    iou = inter / ((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1]) + (r - l) * (b - t) - inter)
    # the tutorial's rule: some object reaches the minimum IoU (not necessarily one that is kept) ...
    assert iou.max() >= min_iou - 1e-6
    # ... which above 0.5 is necessarily a kept one: an object whose centre is not strictly inside has IoU <= 0.5
    if min_iou > 0.5:
        assert (iou[inside] >= min_iou - 1e-6).any()


# --------------------------------------------------------------------------------------------------
# dataset and sampler determinism


@pytest.fixture(scope="module")
def small_dataset(vocmini_test) -> DetectionDataset:
    index = DatasetIndex("small", vocmini_test.classes, vocmini_test.images[:8])
    return DetectionDataset(index, TrainTransform(48, MEAN), seed=3)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def test_dataset_is_keyed_by_epoch_and_index(small_dataset):
    ds = small_dataset
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert _same(a, b) and a.index == 5 and a.failed == ()
    assert _same(ds[5], ds[(0, 5)])
    assert not torch.equal(ds[(3, 5)].image, a.image)
    assert not torch.equal(ds[(2, 4)].image, a.image)
    other_seed = DetectionDataset(ds.index, ds.transform, seed=4)
    assert not torch.equal(other_seed[(2, 5)].image, a.image)


def test_dataloader_workers_give_identical_batches(small_dataset):
    def batches(workers: int):
        sampler = TrainBatchSampler(len(small_dataset), 3, seed=1)
        sampler.start(1)
        loader = DataLoader(small_dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return list(loader)

    zero, two = batches(0), batches(2)
    assert len(zero) == len(two) == 2
    for a, b in zip(zero, two):
        assert _same(a, b)
        assert a.images.shape == (3, 3, 48, 48) and a.boxes_xyxy_rel.shape[:2] == a.labels.shape


def test_batch_sampler_epochs_resume_and_ranks():
    n, batch = 23, 4
    sampler = TrainBatchSampler(n, batch, seed=7)
    assert sampler.batches_per_epoch() == 5 and len(sampler) == 5
    epochs = []
    for epoch in range(3):
        sampler.start(epoch)
        batches = list(sampler)
        assert len(batches) == 5 and all(len(b) == batch and all(e == epoch for e, _ in b) for b in batches)
        flat = [i for b in batches for _, i in b]
        assert len(set(flat)) == len(flat) == 20 and set(flat) <= set(range(n))
        epochs.append(flat)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    # resume mid-epoch: exactly the rest of the full iteration
    sampler.start(1)
    full = list(sampler)
    for b in range(6):
        sampler.start(1, b)
        assert list(sampler) == full[b:] and len(sampler) == 5 - b
    # a fresh sampler with the same seed repeats; another seed does not
    again = TrainBatchSampler(n, batch, seed=7)
    again.start(1)
    assert list(again) == full
    other = TrainBatchSampler(n, batch, seed=8)
    other.start(1)
    assert list(other) != full
    # two ranks' slices, concatenated, are the single-process batch of twice the size
    for epoch, first in ((0, 0), (2, 0), (2, 1)):
        single = TrainBatchSampler(n, 2 * batch, seed=7)
        single.start(epoch, first)
        ranks = [TrainBatchSampler(n, batch, seed=7, rank=r, world_size=2) for r in range(2)]
        for s in ranks:
            s.start(epoch, first)
        assert len(ranks[0]) == len(ranks[1]) == len(single) == 2 - first
        assert [a + b for a, b in zip(*ranks)] == list(single)
        assert not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))
    with pytest.raises(SSDError, match="fewer than one global batch"):
        TrainBatchSampler(7, 4, world_size=2)


def test_collate_pads_variable_object_counts(small_dataset):
    samples = [small_dataset[(0, i)] for i in range(4)]
    batch = collate(samples)
    m = max(len(s.labels) for s in samples)
    assert batch.images.shape == (4, 3, 48, 48) and batch.labels.shape == (4, m) and batch.boxes_xyxy_rel.shape == (4, m, 4)
    for k, s in enumerate(samples):
        c = len(s.labels)
        assert torch.equal(batch.labels[k, :c], s.labels) and (batch.labels[k, c:] == 0).all()
        assert torch.equal(batch.boxes_xyxy_rel[k, :c], s.boxes_xyxy_rel) and torch.equal(batch.difficult[k, :c], s.difficult)
    assert batch.indices.tolist() == [0, 1, 2, 3] and batch.failed == ()


def test_fast_hue_equals_torchvision_up_to_rounding():
    import torchvision.transforms.v2.functional as TF

    from ssd.data.color import adjust_hue

    g = torch.Generator().manual_seed(7)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=g)
    image[:, :8] = 128  # greys keep their value
    for factor in (-0.5, -0.07, -18 / 255, 0.0, 0.01, 18 / 255, 0.25, 0.5):
        ours, theirs = adjust_hue(image, factor).int(), TF.adjust_hue(image, factor).int()
        assert (ours - theirs).abs().max() <= 1, factor
        assert ((ours - theirs).abs() > 0).float().mean() < 0.15
    assert torch.equal(adjust_hue(image, 0.1)[:, :8], image[:, :8])
    with pytest.raises(ValueError):
        adjust_hue(image, 0.6)
