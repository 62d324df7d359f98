"""int8 models (ssd.quantize): calibration input, the file written, loading it everywhere a model loads, bad input.

The accuracy bound (int8 mAP within 0.01 of fp32) is checked on trained models in tests/test_learning.py (synthetic)
and tests/test_int8_accuracy.py (VOCmini photos, the demo's model).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ssd
from conftest import VOCMINI, need
from ssd.cli import main
from ssd.data.index import build_voc_index
from ssd.detector import Detector
from ssd.errors import SSDError
from ssd.evaluate import evaluate, evaluate_detector
from ssd.settings import DetectSettings

pytest.importorskip("onnxruntime", reason="int8 models run with onnxruntime")
pytest.importorskip("onnxscript", reason="exporting needs onnxscript")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = ssd.build_model("small", ssd.VOC_CLASSES).eval()
    images = root / "images"
    images.mkdir()
    for src in sorted((need(VOCMINI) / "JPEGImages").glob("*.jpg"))[:6]:
        shutil.copy(src, images / src.name)
    return {"root": root, "model": model, "ckpt": ssd.save_checkpoint(model, root / "small.ckpt"), "images": images}


def test_calibration_files_are_a_fixed_sample_and_bad_sources_are_named(small, tmp_path):
    from ssd.quantize import calibration_files

    files = calibration_files(small["images"], 4)
    assert len(files) == 4 and files == sorted(files) and files == calibration_files(small["images"], 4)
    assert calibration_files(small["images"], 100) == sorted(small["images"].iterdir())  # all of them, no more
    index = build_voc_index("test", [(need(VOCMINI), "test")], ssd.VOC_CLASSES).save(tmp_path / "test.json")
    assert len(calibration_files(index, 10)) == 10
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for source, count, message in [(tmp_path / "missing", 5, "no such file or folder"),
                                   (tmp_path / "empty", 5, "no images to calibrate on"),
                                   (tmp_path / "notes.txt", 5, "give a dataset index"),
                                   (small["images"], 0, "give a positive number")]:  # fmt: skip
        with pytest.raises(SSDError, match=message):
            calibration_files(source, count)


@pytest.mark.slow  # a browser, a subprocess or a quantization
def test_int8_export_loads_wherever_a_model_loads(small, tmp_path, capsys, caplog, monkeypatch):
    out = tmp_path / "small-int8.onnx"
    argv = ["export", small["ckpt"], out, "--int8", "--calibrate", small["images"], "--calibration-images", "4"]
    assert main([str(a) for a in argv]) == 0
    assert "calibrated on 4 images" in capsys.readouterr().out
    from ssd.export import OnnxModel

    onnx_model = OnnxModel(out, device="cpu")
    assert onnx_model.quantization["calibration_images"] == 4 and onnx_model.quantization["ops"][0] == "Conv"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops  # int8 convolutions; the softmax stays float

    # its outputs follow the float model's: same boxes and scores up to int8 rounding
    image = sorted(small["images"].iterdir())[0]
    fp32 = Detector(small["model"], device="cpu")
    int8 = Detector.from_onnx(out, device="cpu")
    prepared = [fp32.prepare(image)]
    (b32, s32), (b8, s8) = fp32.run_batch(prepared), int8.run_batch(prepared)
    assert b8.shape == b32.shape and s8.shape == s32.shape
    assert float((s8 - s32).abs().mean()) < 0.02 and float((b8 - b32).abs().mean()) < 0.02

    # ssd detect and ssd eval take it with --onnx
    assert main(["detect", "--onnx", str(out), str(image), "--out", str(tmp_path / "det"), "--json",
                 str(tmp_path / "d.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "d.json").read_text())
    index = build_voc_index("test", [(need(VOCMINI), "test")], ssd.VOC_CLASSES)
    index.images = index.images[:4]
    assert main(["eval", "--onnx", str(out), "--data", str(index.save(tmp_path / "t.json")), "--out",
                 str(tmp_path / "ev"), "--no-plot"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["checkpoint"] == str(out)

    # a CPU without 8-bit dot products: a one-line warning, and it still runs
    caplog.set_level(logging.WARNING, logger="ssd")
    monkeypatch.setattr("ssd.quantize.int8_dot_product_cpu", lambda: False)
    Detector.from_onnx(out, device="cpu")(image)
    assert any("may run slower" in r.getMessage() for r in caplog.records)


def test_int8_options_are_checked_before_any_work(small, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    for extra, message in [(["--int8"], "--int8 needs --calibrate"),
                           (["--calibrate", str(small["images"])], "--int8 needs --calibrate"),
                           (["--int8", "--calibrate", str(tmp_path / "none")], "no such file or folder"),
                           (["--int8", "--calibrate", str(small["images"]), "--batch", "4"], "dynamic batch"),
                           (["--int8", "--calibrate", str(small["images"]), "--calibration-images", "0"],
                            "positive number")]:  # fmt: skip
        assert main(["export", str(small["ckpt"]), str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()
    index = build_voc_index("test", [(need(VOCMINI), "test")], ssd.VOC_CLASSES).save(tmp_path / "t.json")
    for extra, message in [(["--amp", "on"], "--amp on applies to a checkpoint"),
                           (["--device", "mps"], "with --onnx use auto, cpu or cuda")]:  # fmt: skip
        assert main(["eval", "--onnx", str(small["ckpt"]), "--data", str(index), *extra]) == 2
        assert message in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["export", str(small["ckpt"]), str(out), "--int8", "--calibrate", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration images could be read" in err and "\n" not in err and not out.exists(), err


def test_evaluating_a_detector_equals_evaluate(small):
    """`ssd eval --onnx` scores through the Detector: on the PyTorch model it gives evaluate()'s detections exactly."""
    index = build_voc_index("test", [(need(VOCMINI), "test")], ssd.VOC_CLASSES)
    index.images = index.images[:6]
    settings = DetectSettings.for_evaluation().replace(min_score=0.3, batch_size=4)
    a = evaluate(small["model"], index, settings=settings, device="cpu")
    b = evaluate_detector(Detector(small["model"], device="cpu"), index, settings=settings)
    assert a.num_detections == b.num_detections > 0
    assert np.array_equal(a.det_image_idx, b.det_image_idx) and np.array_equal(a.det_labels, b.det_labels)
    assert np.allclose(a.det_scores, b.det_scores, atol=1e-6)
    assert np.allclose(a.det_boxes_xyxy_abs, b.det_boxes_xyxy_abs, atol=1e-3)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-9)
