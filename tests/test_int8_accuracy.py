"""int8 keeps accuracy (issue 19): VOC07 mAP of the quantized model within 0.01 of the float model's.

Two models, both run through the same Detector path, float32 in PyTorch and int8 in onnxruntime:

- real photos: the small preset trained in the test on 32 VOCmini test images and scored on them. Trained on the
  images it is scored on, it detects enough there (mAP far from 0) for the bound to say something about the
  quantization on real pixels; it says nothing about generalisation, which quantization does not change.
- the demo's model: ``ssd demo`` writes it (CI runs the demo before the tests, into ``ssd-demo``); calibrated on
  32 of its training images and scored on its test split. Where no demo output exists the test is skipped, with
  the command that makes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import VOCMINI, need
from ssd.checkpoint import load_model
from ssd.config import VOC_CLASSES
from ssd.data.index import DatasetIndex, build_voc_index
from ssd.detector import Detector
from ssd.evaluate import evaluate_detector
from ssd.training.config import TrainConfig
from ssd.training.loop import train

pytest.importorskip("onnxruntime", reason="int8 models run with onnxruntime")
pytest.importorskip("onnxscript", reason="exporting needs onnxscript")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOUND = 0.01  # the bound on |int8 mAP - fp32 mAP|


def _fp32_and_int8_map(model, calibration: list[Path], index: DatasetIndex, tmp_path: Path) -> tuple[float, float]:
    from ssd.quantize import quantize_onnx

    quantize_onnx(model, tmp_path / "int8.onnx", calibration)
    fp32 = evaluate_detector(Detector(model, device="cpu"), index).voc.mAP
    int8 = evaluate_detector(Detector.from_onnx(tmp_path / "int8.onnx", device="cpu"), index).voc.mAP
    print(f"VOC07 mAP: fp32 {fp32:.4f}, int8 {int8:.4f} (difference {int8 - fp32:+.4f})")
    return fp32, int8


def test_int8_keeps_accuracy_on_real_photos(tmp_path):
    full = build_voc_index("test", [(need(VOCMINI), "test")], VOC_CLASSES)
    photos = DatasetIndex("vocmini-test-32", full.classes, full.images[:32])
    train_json = photos.save(tmp_path / "photos.json")
    cfg = TrainConfig(
        train_data=str(train_json), out_dir=str(tmp_path / "run"), preset="small", image_size=128, batch_norm=True,
        pretrained_base="none", batch_size=8, reference_batch=8, iterations=250, milestones=(200,),
        optimizer="adamw", lr=2e-3, warmup=20, grad_clip=10.0, augment="flip", workers=0, seed=0, progress=False,
        tensorboard=False, log_every=50, checkpoint_every=10_000,
    )  # fmt: skip
    torch.manual_seed(0)
    model = load_model(train(cfg, log=lambda m: None).model_path)
    fp32, int8 = _fp32_and_int8_map(model, [Path(r.file) for r in photos.images[:16]], photos, tmp_path)
    assert fp32 >= 0.5, f"the overfit model detects too little ({fp32:.3f}) for the bound to mean anything"
    assert abs(int8 - fp32) <= BOUND


def test_int8_keeps_the_demo_models_accuracy(tmp_path):
    from ssd.quantize import calibration_files

    demo = Path(os.environ.get("SSD_DEMO_DIR", ROOT / "ssd-demo"))
    needed = [demo / "run" / "model.ckpt", demo / "data" / "train.json", demo / "data" / "test.json"]
    if not all(p.exists() for p in needed):
        pytest.skip(f"no demo output in {demo}: run `ssd demo --out {demo}` first (CI does, before the tests)")
    model = load_model(needed[0])
    test = DatasetIndex.load(needed[2])
    fp32, int8 = _fp32_and_int8_map(model, calibration_files(needed[1], 32), test, tmp_path)
    assert abs(int8 - fp32) <= BOUND  # (the demo's own mAP is CI's check of the demo)
