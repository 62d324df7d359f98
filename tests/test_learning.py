"""Learning: the small preset overfits 32 synthetic images, and the check can fail.

The same overfit runs three times: as it should (AP >= 0.9), with the forced best-prior match switched off,
and with a horizontal flip that does not mirror the boxes; each broken variant must fall clearly short. The
evaluation set is the 32 training images plus their mirror images (boxes mirrored correctly): a model trained
with unmirrored boxes has learned the wrong geometry for mirrored scenes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd.checkpoint import load_model
from ssd.data.index import DatasetIndex, ImageRecord, build_voc_index
from ssd.data.synthetic import SyntheticConfig, generate_synthetic
from ssd.training.config import TrainConfig
from ssd.training.loop import train
from ssd.evaluate import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory) -> tuple[Path, DatasetIndex]:
    root = tmp_path_factory.mktemp("overfit")
    # six compact shapes (the demo's earlier classes): the figures in docs/performance.md are for this data
    config = SyntheticConfig(num_trainval=32, num_test=1, seed=11, small_fraction=0.28,
                             classes=("circle", "square", "triangle", "star", "cross", "ring"))  # fmt: skip
    summary = generate_synthetic(root / "VOC", config)
    index = build_voc_index("train", [(summary.voc_root, "trainval")], summary.classes)
    train_path = index.save(root / "train.json")
    mirrored = []
    (root / "mirror").mkdir()
    for r in index.images:
        with Image.open(r.file) as im:
            path = root / "mirror" / f"{r.id}.png"
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
        b = r.boxes_xyxy_abs
        boxes = np.stack([r.width - b[:, 2], b[:, 1], r.width - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
        mirrored.append(ImageRecord(f"{r.id}m", str(path), r.width, r.height, boxes, r.labels, r.difficult))
    both = DatasetIndex("train+mirrored", index.classes, index.images + mirrored)
    return train_path, both


def _overfit(data: Path, out: Path, **changes) -> float:
    cfg = TrainConfig(
        train_data=str(data), out_dir=str(out), preset="small", image_size=128, batch_norm=True,
        batch_size=8, reference_batch=8, iterations=300, milestones=(), optimizer="adamw", lr=1e-3,
        warmup=20, grad_clip=10.0, augment="flip", workers=0, seed=0, progress=False, tensorboard=False,
        log_every=50, checkpoint_every=10_000,
    )  # fmt: skip
    torch.manual_seed(0)
    result = train(dataclasses.replace(cfg, **changes), log=lambda m: None)
    return load_model(result.model_path)


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def good_model(overfit_data, tmp_path_factory, threads):
    return _overfit(overfit_data[0], tmp_path_factory.mktemp("good"))


@pytest.mark.slow
def test_overfits_and_each_broken_variant_falls_short(overfit_data, good_model, tmp_path, threads):
    data, eval_index = overfit_data
    good = evaluate(good_model, eval_index).voc.mAP
    no_forced = evaluate(_overfit(data, tmp_path / "noforce", matching="threshold"), eval_index).voc.mAP
    bad_flip = evaluate(_overfit(data, tmp_path / "badflip", mirror_boxes=False), eval_index).voc.mAP
    print(f"VOC07 AP: correct {good:.3f}, no forced match {no_forced:.3f}, unmirrored flip {bad_flip:.3f}")
    assert good >= 0.9
    assert no_forced <= good - 0.2
    assert bad_flip <= good - 0.2


@pytest.mark.slow
def test_int8_keeps_the_trained_models_accuracy(overfit_data, good_model, tmp_path, threads):
    """The int8 model (convolutions quantized, calibrated on 16 of the training images) scores within 0.01 VOC07 mAP
    of the float model, both run through the same Detector path."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ssd.detector import Detector
    from ssd.evaluate import evaluate_detector
    from ssd.quantize import calibration_files, quantize_onnx

    data, eval_index = overfit_data
    quantize_onnx(good_model, tmp_path / "int8.onnx", calibration_files(data, 16))
    fp32 = evaluate_detector(Detector(good_model, device="cpu"), eval_index).voc.mAP
    int8 = evaluate_detector(Detector.from_onnx(tmp_path / "int8.onnx", device="cpu"), eval_index).voc.mAP
    print(f"VOC07 AP: fp32 {fp32:.4f}, int8 {int8:.4f}")
    assert fp32 >= 0.9 and abs(int8 - fp32) <= 0.01
