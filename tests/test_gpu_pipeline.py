"""The GPU input pipeline (ssd.data.gpu_pipeline), run on the CPU: the same draws, targets and (with the CPU
decoder) pixels as the regular loader, through a real DataLoader; PNGs, truncated and corrupt files handled as
the regular loader handles them; the split TrainTransform (apply = render + apply_target) device-clean."""

from __future__ import annotations

import dataclasses
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader

from conftest import VOCMINI, need
from ssd.config import IMAGENET_MEAN, VOC_CLASSES
from ssd.data.dataset import DetectionDataset, TrainBatchSampler, collate, read_image, sample_seed
from ssd.data.gpu_pipeline import (
    EncodedDetectionDataset,
    collate_encoded,
    jpeg_size,
    read_encoded,
    render_batch,
    render_batches,
)
from ssd.data.index import DatasetIndex, ImageRecord, build_voc_index
from ssd.data.transforms import EvalTransform, PhotometricParams, Target, TrainParams, TrainTransform, render_window
from ssd.errors import SSDError

SEED = 5
# (epoch, k) keys whose draws cover zoom-out, the crop, the flip and every photometric operation (asserted below).
KEYS = [(0, 0), (0, 7), (1, 7), (2, 31), (3, 64), (5, 100), (8, 150), (13, 199)]


def full_augmentation() -> TrainTransform:
    return TrainTransform(300, IMAGENET_MEAN, photometric=True, zoom_out=4.0, crop=True)


@pytest.fixture(scope="module")
def trainval() -> DatasetIndex:
    return build_voc_index("trainval", [(need(VOCMINI), "trainval")], VOC_CLASSES)


def same_params(a: TrainParams, b: TrainParams) -> bool:
    return (
        a.photometric == b.photometric and a.zoomed == b.zoomed and a.canvas_hw == b.canvas_hw
        and a.image_tl == b.image_tl and torch.equal(a.window, b.window) and a.flip == b.flip
        and a.crop_draws == b.crop_draws
        and (a.keep is None and b.keep is None or a.keep is not None and b.keep is not None and torch.equal(a.keep, b.keep))
    )  # fmt: skip


def assert_same_batch(ours, theirs) -> None:
    assert ours._fields == theirs._fields
    for name in ("images", "boxes_xyxy_rel", "labels", "difficult", "indices", "orig_sizes"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    assert ours.failed == theirs.failed


def record_like(record: ImageRecord, file, image_id: str) -> ImageRecord:
    return ImageRecord(image_id, str(file), record.width, record.height, record.boxes_xyxy_abs, record.labels, record.difficult)


# --------------------------------------------------------------------------------------------------


def test_same_draws_targets_and_pixels_as_the_cpu_path(trainval):
    t = full_augmentation()
    cpu = DetectionDataset(trainval, t, seed=SEED)
    enc = EncodedDetectionDataset(trainval, t, seed=SEED)
    samples, expected = [], []
    for epoch, k in KEYS:
        s = enc[(epoch, k)]
        record = trainval.images[k]
        assert s.encoded and s.data.dim() == 1 and s.data.dtype == torch.uint8 and s.index == k
        image = read_image(record.file)
        assert s.image_hw == tuple(image.shape[1:])  # the header's size is the decoded one
        target = Target(torch.from_numpy(record.boxes_xyxy_abs).float(), torch.from_numpy(record.labels).long(),
                        torch.from_numpy(record.difficult).bool())  # fmt: skip
        drawn = t.sample_params(*image.shape[1:], target, random.Random(sample_seed(SEED, epoch, k)))
        assert same_params(s.params, drawn), (epoch, k)
        reference = cpu[(epoch, k)]
        for name in ("boxes_xyxy_rel", "labels", "difficult"):
            assert torch.equal(getattr(s, name), getattr(reference, name)), (epoch, k, name)
        assert (s.index, s.orig_size, s.failed) == (reference.index, reference.orig_size, reference.failed)
        samples.append(s)
        expected.append(reference)
    # The keys exercise every kind of draw, so the pixel comparison below covers every rendering step.
    params = [s.params for s in samples]
    assert any(p.zoomed for p in params) and any(not p.zoomed for p in params)
    assert any(p.keep is not None for p in params) and any(p.keep is None for p in params)
    assert any(p.flip for p in params) and any(not p.flip for p in params)
    for op in ("brightness", "contrast", "saturation", "hue"):
        assert any(p.photometric.factors[op] is not None for p in params), op

    batch = render_batch(collate_encoded(samples), t, "cpu")
    # decode_jpeg and decode_image (the CPU path) run the same libjpeg-turbo decoder: bit-identical images.
    assert_same_batch(batch, collate(expected))
    assert batch.images.shape == (len(KEYS), 3, 300, 300) and batch.images.dtype == torch.float32


def test_through_a_dataloader_with_workers(trainval):
    """Samples and batches cross the worker processes (pickling, shared memory) unchanged."""
    t = full_augmentation()
    enc = EncodedDetectionDataset(trainval, t, seed=SEED)
    sampler = TrainBatchSampler(len(enc), 4, seed=SEED)
    sampler.start(epoch=2)
    loader = DataLoader(enc, batch_sampler=sampler, collate_fn=collate_encoded, num_workers=1)
    batches = []
    for batch in render_batches(loader, t, torch.device("cpu")):
        batches.append(batch)
        if len(batches) == 2:
            break
    keys = list(iter(sampler))[:2]
    cpu = DetectionDataset(trainval, t, seed=SEED)
    for batch, batch_keys in zip(batches, keys):
        assert_same_batch(batch, collate([cpu[key] for key in batch_keys]))


def test_png_truncated_and_corrupt_files_as_the_cpu_path(trainval, tmp_path):
    t = full_augmentation()
    jpgs = [trainval.images[i] for i in range(4)]
    png = tmp_path / "a.png"
    Image.fromarray(read_image(jpgs[0].file).permute(1, 2, 0).numpy()).save(png)
    data = open(jpgs[1].file, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])  # the header parses; the end-of-image marker is missing
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    records = [record_like(jpgs[0], png, "png"), record_like(jpgs[1], truncated, "truncated"),
               record_like(jpgs[2], garbage, "garbage"), record_like(jpgs[3], jpgs[3].file, "good"),
               record_like(jpgs[0], tmp_path / "missing.jpg", "missing")]  # fmt: skip
    index = DatasetIndex("mixed", VOC_CLASSES, records)

    assert jpeg_size(png.read_bytes()) is None and jpeg_size(truncated.read_bytes()) is None
    image, encoded, hw = read_encoded(str(png))
    assert not encoded and torch.equal(image, read_image(str(png))) and hw == tuple(image.shape[1:])
    with pytest.raises(SSDError, match="missing.jpg: file not found"):
        read_encoded(str(tmp_path / "missing.jpg"))

    cpu = DetectionDataset(index, t, seed=SEED)
    enc = EncodedDetectionDataset(index, t, seed=SEED)
    keys = [(0, 0), (0, 1), (0, 4), (3, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = [enc[key] for key in keys]
        expected = [cpu[key] for key in keys]
    assert [s.encoded for s in samples] == [False, True, False, True]
    assert samples[1].index == 3 and samples[1].failed == (str(truncated), str(garbage))
    assert samples[2].index == 0 and samples[2].failed == (str(tmp_path / "missing.jpg"),)
    with pytest.warns(UserWarning, match="garbage.jpg"):
        enc[(0, 2)]
    assert_same_batch(render_batch(collate_encoded(samples), t, "cpu"), collate(expected))

    all_bad = DatasetIndex("bad", VOC_CLASSES, records[1:3])
    with pytest.raises(SSDError, match="2 images in a row could not be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EncodedDetectionDataset(all_bad, t, max_replacements=1)[0]


def test_a_jpeg_that_fails_only_in_the_main_process_is_replaced_within_its_batch(trainval, tmp_path):
    """A header and an end-of-image marker but no scan: the worker passes the bytes on, no decoder can decode them."""
    t = full_augmentation()
    data = open(trainval.images[1].file, "rb").read()
    broken = tmp_path / "no_scan.jpg"
    broken.write_bytes(data[: data.find(b"\xff\xda")] + b"\xff\xd9")
    assert jpeg_size(broken.read_bytes()) is not None
    records = [trainval.images[0], record_like(trainval.images[1], broken, "broken"), trainval.images[2]]
    enc = EncodedDetectionDataset(DatasetIndex("broken", VOC_CLASSES, records), t, seed=SEED)
    samples = [enc[(1, k)] for k in range(3)]
    assert samples[1].encoded
    with pytest.warns(UserWarning, match="no_scan.jpg: cannot decode image; using .* in its place"):
        batch = render_batch(collate_encoded(samples), t, "cpu")
    assert batch.images.shape == (3, 3, 300, 300)
    assert batch.indices.tolist() == [0, 2, 2] and batch.failed == (str(broken),)
    assert torch.equal(batch.images[1], batch.images[2]) and torch.equal(batch.labels[1], batch.labels[2])

    lone = collate_encoded([samples[1]])
    with pytest.raises(SSDError, match="no image of the batch could be decoded"):
        render_batch(lone, t, "cpu")


def test_apply_is_render_plus_apply_target_and_render_stays_on_the_images_device(trainval):
    t = full_augmentation()
    record = trainval.images[3]
    image = read_image(record.file)
    target = Target(torch.from_numpy(record.boxes_xyxy_abs).float(), torch.from_numpy(record.labels).long(),
                    torch.from_numpy(record.difficult).bool())  # fmt: skip
    params = t.sample_params(*image.shape[1:], target, random.Random(11))
    out, result = t.apply(image, target, params)
    assert torch.equal(out, t.render(image, params))
    assert all(torch.equal(a, b) for a, b in zip(result, t.apply_target(target, params)))

    window = torch.tensor([-20.0, -10.0, 80.0, 50.0])  # beyond the image: the fill shows
    small = image[:, :40, :60].contiguous()
    for flip in (False, True):
        out = render_window(small, (40, 60), (0, 0), window, 32, IMAGENET_MEAN, flip)
        assert out.device == small.device and out.dtype == torch.float32 and out.shape == (3, 32, 32)
        # The fill is built on the image's device: a meta image (no data, any tensor made elsewhere would clash)
        # renders to a meta output.
        meta = render_window(small.to("meta"), (40, 60), (0, 0), window, 32, IMAGENET_MEAN, flip)
        assert meta.device.type == "meta" and meta.dtype == torch.float32 and meta.shape == (3, 32, 32)


class DeviceMixing(TorchFunctionMode):
    """Records the torch functions called with tensors (not 0-dim scalars) on more than one device: on a GPU each
    would fail ("indices should be either on cpu or on the same device") or copy across the bus."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        if len({t.device for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}) > 1:
            self.mixed.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def render_on_meta(ops: dict) -> list[str]:
    """``TrainTransform.render`` of a zoomed, cropped, flipped sample with the given photometric factors, on a meta
    image (shapes only): the functions that mixed devices."""
    t = full_augmentation()
    target = Target(torch.tensor([[10.0, 10, 100, 90]]), torch.tensor([1]), torch.tensor([False]))
    params = t.sample_params(120, 160, target, random.Random(0))
    params = dataclasses.replace(params, photometric=PhotometricParams(tuple(ops), ops), zoomed=True, canvas_hw=(240, 320),
                                 image_tl=(40, 50), window=torch.tensor([30.0, 20, 230, 200]), flip=True)  # fmt: skip
    mode = DeviceMixing()
    with mode:
        out = t.render(torch.zeros(3, 120, 160, dtype=torch.uint8, device="meta"), params)
    assert out.device.type == "meta" and out.shape == (3, 300, 300) and out.dtype == torch.float32
    return mode.mixed


def test_render_uses_only_the_images_device():
    assert render_on_meta({"brightness": 1.2, "contrast": 0.8, "saturation": 1.3}) == []


def test_hue_uses_only_the_images_device():
    assert render_on_meta({"hue": 0.05}) == []


def test_bad_input_is_refused_clearly(trainval):
    with pytest.raises(SSDError, match="EvalTransform lacks sample_params, apply_target, render"):
        EncodedDetectionDataset(trainval, EvalTransform(300))
    with pytest.raises(SSDError, match="empty batch"):
        collate_encoded([])
