"""``ssd export``: a checkpoint to ONNX (network, softmax and box decoding; NMS after onnxruntime)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd.paths import refuse_to_overwrite_inputs
from ssd.errors import SSDError


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
