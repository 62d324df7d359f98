"""``ssd export``: a checkpoint to ONNX (network, softmax and box decoding; NMS after onnxruntime)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssd.errors import SSDError
from ssd.paths import refuse_to_overwrite_inputs


def _batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'dynamic' or a positive batch size") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 'dynamic' or a positive batch size")
    return v


def _opset(text: str) -> int:
    from ssd.onnx_format import MIN_OPSET

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"{v}: the exporter writes opset {MIN_OPSET} or newer")
    return v


def register(sub) -> None:
    from ssd.onnx_format import DEFAULT_OPSET, MIN_OPSET

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch; run it with `ssd detect --onnx`)",
        description="Export the network plus softmax and box decoding to ONNX with torch's torch.export-based "
        "exporter (needs: pip install onnx onnxscript; onnxruntime to verify and run). Inputs: images float32 "
        "(N, 3, S, S) RGB in [0, 1] resized to the model's input side S; outputs: boxes (N, P, 4) xyxy "
        "fractions of the image and scores (N, P, C) softmax with column 0 the background. Thresholding, "
        "per-class NMS and top-k are a post-step after onnxruntime (ssd.postprocess.postprocess_decoded, which "
        "`ssd detect --onnx` runs). Class names, input size and the post-step's settings are stored in the "
        "file's metadata_props.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="an ssd checkpoint")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset, {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    p.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                   help="'dynamic' (default): any batch size; N: a fixed batch size")
    p.add_argument("--no-verify", action="store_true", help="skip running the file with onnxruntime against PyTorch")
    q = p.add_argument_group("int8 (fast CPU inference; see docs/performance.md)")
    q.add_argument("--int8", action="store_true",
                   help="quantize the convolutions to int8 with onnxruntime (needs --calibrate)")  # fmt: skip
    q.add_argument("--calibrate", metavar="DATA",
                   help="images that fix the int8 ranges: a dataset index (.json) or an image folder")  # fmt: skip
    q.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="how many of them (a fixed random sample; default 200)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise SSDError(f"CHECKPOINT {ckpt}: " + ("is a folder, not a checkpoint file" if ckpt.is_dir() else "file not found"))
    out = Path(args.out)
    if out.is_dir():
        raise SSDError(f"OUT.onnx {out}: is a folder; give a file name")
    if out.suffix.lower() != ".onnx":
        raise SSDError(f"OUT.onnx {out}: give a file name ending in .onnx")
    refuse_to_overwrite_inputs([("OUT.onnx", out)], [ckpt])
    if args.int8 or args.calibrate or args.calibration_images is not None:
        return _run_int8(args, ckpt, out)
    from ssd.checkpoint import load_model
    from ssd.export import export_onnx, require_export_dependencies

    require_export_dependencies()  # before loading anything: a missing package is the likeliest problem
    model = load_model(ckpt)
    info = export_onnx(model, out, opset=args.opset, batch=args.batch, verify=not args.no_verify)
    check = (
        f"; onnxruntime matches PyTorch (max abs difference {info['max_abs_diff']:.2g})"
        if info["max_abs_diff"] is not None
        else ("" if args.no_verify else "; not verified (pip install onnxruntime)")
    )
    print(
        f"wrote {out} (opset {info['opset']}, batch {info['batch']}, input {info['image_size']}x{info['image_size']}, "
        f"{len(info['class_names'])} classes){check}; run it with `ssd detect --onnx {out} IMAGES...`"
    )
    return 0


def _run_int8(args: argparse.Namespace, ckpt: Path, out: Path) -> int:
    """``--int8 --calibrate DATA``: calibrate and write the quantized model (ssd.quantize)."""
    if not (args.int8 and args.calibrate):
        raise SSDError("--int8 needs --calibrate DATA (images like those the model will see), and they go together")
    if args.batch is not None:
        raise SSDError("--batch: an int8 model has a dynamic batch; leave --batch out")
    from ssd.checkpoint import load_model
    from ssd.export import require_export_dependencies
    from ssd.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_files, int8_dot_product_cpu, quantize_onnx

    require_export_dependencies()
    count = DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    files = calibration_files(args.calibrate, count)
    refuse_to_overwrite_inputs([("OUT.onnx", out)], files)
    info = quantize_onnx(load_model(ckpt), out, files, opset=args.opset, progress=True, source=str(args.calibrate))
    if info["skipped"]:
        print(f"ssd: warning: {len(info['skipped'])} calibration image(s) could not be read, e.g. {info['skipped'][0]}",
              file=sys.stderr)  # fmt: skip
    print(f"wrote {out} (int8 convolutions, calibrated on {info['calibration_images']} images of {args.calibrate}, "
          f"input {info['image_size']}x{info['image_size']}, {len(info['class_names'])} classes); check its accuracy "
          f"with `ssd eval --onnx {out} --data INDEX.json`")  # fmt: skip
    if int8_dot_product_cpu() is False:  # said once the file is written: a failed export says only why it failed
        print("ssd: warning: this CPU has no 8-bit dot-product instructions (VNNI, AMX, Arm dot product): the int8 "
              "model works here but may run slower than fp32", file=sys.stderr)  # fmt: skip
    return 0
