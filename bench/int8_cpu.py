"""int8 on the CPU: the quantized model (ssd.quantize) against our fp32 model and torchvision's, in one process.

    PYTHONPATH=src python bench/int8_cpu.py --out int8.json          # or: bench/compare.py --only int8

Three SSD300s with random weights and 21 classes, each called as a user calls it, from JPEG files to detections:
ours fp32 (``Detector`` on the PyTorch model), ours int8 (``Detector.from_onnx`` on ``ssd export --int8``'s file,
calibrated on VOCmini images) and torchvision's ``ssd300_vgg16`` (``decode_image``, then ``model(images)``, which
resizes, normalises and post-processes inside). Figures: single-image latency and batch-8 throughput, medians of
timed windows after a warm-up. The issue's bars: int8 throughput at least 2.5x our fp32's at batch 8, and its
latency at most 0.4x torchvision's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VOCMINI = ROOT.parent / "shared" / "data" / "VOCmini" / "VOCdevkit" / "VOC2007"


def _median_seconds(fn, windows: int, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def run(windows: int = 3, iters: int = 2, calibration_images: int = 32, voc: Path = VOCMINI) -> dict:
    import torchvision
    from torchvision.io import decode_image
    from torchvision.models.detection import ssd300_vgg16

    import ssd
    from ssd.detector import Detector
    from ssd.quantize import calibration_files, int8_dot_product_cpu, quantize_onnx

    files = [str(p) for p in sorted((voc / "JPEGImages").glob("*.jpg"))[:8]]
    torch.manual_seed(0)
    model = ssd.build_model("ssd300", ssd.VOC_CLASSES).eval()
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        quantize_onnx(model, Path(tmp) / "int8.onnx", calibration_files(voc / "JPEGImages", calibration_images))
        quantize_s = time.perf_counter() - start
        int8 = Detector.from_onnx(Path(tmp) / "int8.onnx", device="cpu")
    fp32 = Detector(model, device="cpu", owns_model=True)

    def torchvision_call(paths: list[str]) -> None:
        with torch.inference_mode():
            tv([decode_image(p).float() / 255 for p in paths])

    calls = {"ours_fp32": lambda paths: fp32(paths), "ours_int8": lambda paths: int8(paths),
             "torchvision_fp32": torchvision_call}  # fmt: skip
    res: dict = {"batch": len(files), "calibration_images": calibration_images, "quantize_s": round(quantize_s, 1),
                 "int8_dot_product_cpu": int8_dot_product_cpu(), "torch_threads": torch.get_num_threads()}  # fmt: skip
    for name, call in calls.items():
        res[f"{name}_latency_ms"] = 1000 * _median_seconds(lambda: call(files[:1]), windows, iters)
        res[f"{name}_batch_img_s"] = len(files) / _median_seconds(lambda: call(files), windows, max(1, iters // 2))
    res["int8_over_fp32_throughput"] = res["ours_int8_batch_img_s"] / res["ours_fp32_batch_img_s"]
    res["int8_over_torchvision_latency"] = res["ours_int8_latency_ms"] / res["torchvision_fp32_latency_ms"]
    res["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--voc", type=Path, default=VOCMINI)
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.windows, args.iters, args.calibration_images, args.voc)
    res["device"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    res["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
