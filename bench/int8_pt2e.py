"""int8 through PyTorch's PT2E path (torchao's X86InductorQuantizer, torch.compile with freezing) against the
onnxruntime int8 model ``ssd export --int8`` writes: the network with softmax and decoding, batch 8 and batch 1.

    pip install torchao            # not a dependency of ssd: this script only measures the alternative
    PYTHONPATH=src python bench/int8_pt2e.py [--preset ssd300] [--checkpoint CKPT]

Both quantize the same model with the same 32 VOCmini calibration images; figures are medians of three calls
after a warm-up; the PT2E figure excludes export, calibration and inductor's compilation, reported apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
JPEGS = ROOT.parent / "shared" / "data" / "VOCmini" / "VOCdevkit" / "VOC2007" / "JPEGImages"


def median_seconds(fn, calls: int = 3) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pt2e_int8(wrapper: torch.nn.Module, calibration: torch.Tensor, example: torch.Tensor):
    """The wrapper exported, quantized by torchao's x86 quantizer, calibrated, converted and compiled."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True  # constant weights: lets inductor pre-pack the int8 convolutions
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}}).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for start in range(0, len(calibration), 8):
        prepared(calibration[start : start + 8])
    return torch.compile(convert_pt2e(prepared))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ssd300")
    p.add_argument("--checkpoint", help="a trained checkpoint instead of random weights")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        import torchao  # noqa: F401
    except ImportError:
        sys.exit("this measurement needs torchao: pip install torchao")
    import ssd
    from ssd.detector import Detector
    from ssd.export import OnnxModel
    from ssd.postprocess import DecodedSSD
    from ssd.quantize import calibration_files, quantize_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (ssd.load_model(args.checkpoint) if args.checkpoint else ssd.build_model(args.preset, ssd.VOC_CLASSES)).eval()
    files = calibration_files(JPEGS, 32)
    detector = Detector(model, device="cpu")
    calibration = torch.stack([detector.prepare(f).pixels for f in files])
    x8, x1 = calibration[:8].contiguous(), calibration[:1].contiguous()
    wrapper = DecodedSSD(model).eval()
    res: dict = {"preset": model.config.preset, "image_size": model.config.image_size, "threads": args.threads}
    with torch.no_grad():
        res["eager_fp32_b8_img_s"] = 8 / median_seconds(lambda: wrapper(x8))
        start = time.perf_counter()
        compiled = pt2e_int8(wrapper, calibration, x8)
        compiled(x8), compiled(x1)
        res["pt2e_prepare_and_compile_s"] = time.perf_counter() - start
        res["pt2e_b8_img_s"] = 8 / median_seconds(lambda: compiled(x8))
        res["pt2e_b1_ms"] = 1000 * median_seconds(lambda: compiled(x1))
        scores_pt2e, scores_fp32 = compiled(x8)[1], wrapper(x8)[1]
    with tempfile.TemporaryDirectory() as tmp:
        quantize_onnx(model, Path(tmp) / "int8.onnx", files)
        ort = OnnxModel(Path(tmp) / "int8.onnx", device="cpu")
        res["ort_b8_img_s"] = 8 / median_seconds(lambda: ort(x8.numpy()))
        res["ort_b1_ms"] = 1000 * median_seconds(lambda: ort(x1.numpy()))
        scores_ort = ort(x8.numpy())[1]
    res["pt2e_mean_abs_score_diff"] = float((scores_pt2e - scores_fp32).abs().mean())
    res["ort_mean_abs_score_diff"] = float(np.abs(scores_ort - scores_fp32.numpy()).mean())
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
