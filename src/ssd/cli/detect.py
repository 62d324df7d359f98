"""``ssd detect``: run a model over image files and folders; annotated copies and a JSON of detections.

Inputs are any mix of files and folders. Folders are scanned **recursively** for image extensions
(``.jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp``, any case), hidden files and folders and the
output folder skipped, in sorted order; files named on the command line are tried whatever their
extension. Each annotated copy goes to ``--out`` under its file name (for a folder, at its path
relative to that folder), in the same format; when two inputs map to the same output name the later
ones get ``_1``, ``_2``, ... before the extension (the JSON records every output path).

A file that cannot be read (not an image, empty, truncated, ...) is reported by name on stderr and
the others are still processed; the exit status is then 1, after a summary line. Invalid options
exit with status 2 before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssd.cli.checks import create_dirs, writable_dir, writable_file
from ssd.errors import SSDError

EXIT_SOME_FAILED = 1
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")
_PIL_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}  # fmt: skip


def _unit_interval(option: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0.0 <= v <= 1.0:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
        return v

    parse.__name__ = option
    return parse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive (give 1 or more)")
    return v


def register(sub) -> None:
    from ssd.detector import DEFAULTS

    p = sub.add_parser(
        "detect",
        help="detect objects in images and folders: annotated copies and a JSON of detections",
        usage="ssd detect [-h] CHECKPOINT INPUT [INPUT ...] [options]\n"
        "       ssd detect [-h] --onnx MODEL.onnx INPUT [INPUT ...] [options]",
        description="Run a model over image files and folders (folders are scanned recursively, sorted). "
        "For each image an annotated copy goes to --out (same file name and format); --json FILE collects "
        "every detection (file, class name, score, box x1, y1, x2, y2 in pixels of the original image, "
        "pixel i spanning [i, i+1)). Unreadable files are reported and skipped; the exit status is then 1.",
        epilog="With --onnx the model is a file written by `ssd export` run with onnxruntime (class names and "
        "input size come from its metadata; thresholds, per-class NMS and top-k run after it, as in PyTorch); "
        "leave CHECKPOINT out.",
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT INPUT", help="an ssd checkpoint (not with --onnx), then image files and folders")
    p.add_argument("--out", default="detections", metavar="DIR", help="folder for the annotated copies (default: detections)")
    p.add_argument("--json", metavar="FILE", help="write every detection to this JSON file")
    p.add_argument("--min-score", type=_unit_interval("--min-score"), default=DEFAULTS["min_score"], metavar="SCORE",
                   help=f"keep detections scoring above this, in [0, 1] (default {DEFAULTS['min_score']})")
    p.add_argument("--max-overlap", type=_unit_interval("--max-overlap"), default=DEFAULTS["max_overlap"], metavar="IOU",
                   help="per-class NMS: suppress boxes overlapping a better one by more than this IoU, "
                   f"in [0, 1] (default {DEFAULTS['max_overlap']})")
    p.add_argument("--top-k", type=_positive_int, default=DEFAULTS["top_k"], metavar="K", help=f"at most this many detections per image (default {DEFAULTS['top_k']})")
    p.add_argument("--suppress", action="append", default=[], metavar="CLASS[,CLASS]",
                   help="never report these classes (repeat the option or separate names by commas)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA if available)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"], metavar="N", help=f"images per forward pass (default {DEFAULTS['batch_size']})")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="run this exported model with onnxruntime instead of a checkpoint")
    p.set_defaults(func=run)


# --- validation ----------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    v: dict[str, Any] = {}
    paths = list(args.paths)
    if args.onnx:
        onnx = Path(args.onnx)
        if not onnx.is_file():
            raise SSDError(f"--onnx {args.onnx}: file not found")
        if paths and Path(paths[0]).suffix.lower() in _CHECKPOINT_SUFFIXES and Path(paths[0]).is_file():
            raise SSDError(f"--onnx runs MODEL.onnx on its own: leave out the checkpoint ({paths[0]})")
        v["onnx"], v["checkpoint"] = onnx, None
    else:
        if len(paths) < 2:
            raise SSDError("give a CHECKPOINT and at least one INPUT (image file or folder)")
        ckpt = Path(paths.pop(0))
        if not ckpt.is_file():
            raise SSDError(f"CHECKPOINT {ckpt}: " + ("is a folder, not a checkpoint file" if ckpt.is_dir() else "file not found"))
        v["onnx"], v["checkpoint"] = None, ckpt
    if not paths:
        raise SSDError("give at least one INPUT (image file or folder)")
    for p in paths:
        if not os.path.lexists(p):
            raise SSDError(f"INPUT {p}: no such file or folder")
    v["inputs"] = [Path(p) for p in paths]
    v["out"] = writable_dir(args.out, "--out")
    v["json"] = writable_file(args.json, "--json") if args.json else None
    suppress = [c.strip() for item in args.suppress for c in item.split(",") if c.strip()]
    v["suppress"] = suppress
    from ssd.device import resolve_device

    if args.onnx:
        if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
            raise SSDError(f"--device {args.device}: with --onnx use auto, cpu or cuda[:N]")
        v["device"] = args.device
    else:
        v["device"] = resolve_device(args.device, "--device")
    return v


def _collect(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(file, output path relative to --out) for every input; folders expanded; duplicates once."""
    from ssd.detector import iter_image_files

    items: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for inp in inputs:
        if inp.is_dir():
            files = iter_image_files(inp, recursive=True, exclude=[out_dir])
            if not files:
                raise SSDError(f"INPUT {inp}: no images in this folder (looked for {', '.join(_PIL_FORMATS)})")
            pairs = [(f, f.relative_to(inp)) for f in files]
        else:
            pairs = [(inp, Path(inp.name))]
        for f, rel in pairs:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            items.append((f, rel))
    return items


def _unique_outputs(items: list[tuple[Path, Path]]) -> list[Path]:
    used: set[str] = set()
    outs = []
    for _, rel in items:
        suffix = rel.suffix if rel.suffix.lower() in _PIL_FORMATS else rel.suffix + ".png"
        stem = rel.name[: len(rel.name) - len(rel.suffix)] if rel.suffix else rel.name
        cand, n = rel.with_name(stem + suffix), 0
        while str(cand).casefold() in used:  # casefold: distinct on case-insensitive file systems too
            n += 1
            cand = rel.with_name(f"{stem}_{n}{suffix}")
        used.add(str(cand).casefold())
        outs.append(cand)
    return outs


# --- running -------------------------------------------------------------------------------------


def _save(image, path: Path) -> None:
    fmt = _PIL_FORMATS.get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("JPEG", "BMP") and image.mode != "RGB":
        image = image.convert("RGB")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    from ssd.detector import Detector, load_image
    from ssd.visualize import draw_detections

    v = _validate(args)
    settings = dict(min_score=args.min_score, max_overlap=args.max_overlap, top_k=args.top_k, batch_size=args.batch_size)
    if v["onnx"] is not None:
        detector = Detector.from_onnx(v["onnx"], device=v["device"], **settings)
    else:
        detector = Detector.from_checkpoint(v["checkpoint"], device=v["device"], **settings)
    if v["suppress"]:
        unknown = [c for c in v["suppress"] if c not in detector.class_names]
        if unknown:
            raise SSDError(
                f"--suppress {unknown[0]}: not a class of this model; its classes are: {', '.join(detector.class_names)}"
            )
        detector.settings["suppress"] = tuple(v["suppress"])
    items = _collect(v["inputs"], v["out"])
    outputs = _unique_outputs(items)
    # Folders only once the options, the model and the inputs have passed: a refused command leaves nothing.
    create_dirs([(v["out"], "--out")] + ([(v["json"].parent, "--json")] if v["json"] else []))

    from tqdm import tqdm

    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    n_detections = 0
    bar = tqdm(total=len(items), unit="image", desc="detect", disable=len(items) <= 1, file=sys.stderr, dynamic_ncols=True)

    def report(file: Path, reason: str) -> None:
        failed.append({"file": str(file), "error": reason})
        tqdm.write(f"ssd detect: skipped {file}: {reason}", file=sys.stderr)

    def flush(batch: list[tuple[Path, Path, Any]]) -> None:
        nonlocal n_detections
        if not batch:
            return
        dets = detector([img for _, _, img in batch])
        for (file, out_rel, img), det in zip(batch, dets):
            det = replace(det, source=str(file))
            out_path = v["out"] / out_rel
            try:
                from PIL import Image

                pil = Image.fromarray(img.permute(1, 2, 0).numpy())
                _save(draw_detections(pil, det), out_path)
            except OSError as e:
                report(file, f"cannot write {out_path}: {e.strerror or e}")
                bar.update(1)
                continue
            rec = det.to_dict()
            rec = {"file": rec.pop("source"), "output": str(out_path), **rec}
            records.append(rec)
            n_detections += len(det)
            bar.update(1)

    batch: list[tuple[Path, Path, Any]] = []
    try:
        for (file, _), out_rel in zip(items, outputs):
            try:
                image = load_image(file)
            except SSDError as e:
                msg = str(e)
                prefix = f"{file}: "
                report(file, msg[len(prefix):] if msg.startswith(prefix) else msg)
                bar.update(1)
                continue
            batch.append((file, out_rel, image))
            if len(batch) >= detector.settings["batch_size"]:
                flush(batch)
                batch = []
        flush(batch)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0

    if v["json"] is not None:
        payload = {
            "model": str(v["onnx"] or v["checkpoint"]),
            "backend": detector.backend,
            "class_names": list(detector.class_names),
            "settings": {
                "min_score": args.min_score, "max_overlap": args.max_overlap, "top_k": args.top_k,
                "suppress": list(detector.settings["suppress"]),
            },
            "box_format": "x1, y1, x2, y2 in pixels of the original image (pixel i spans [i, i+1))",
            "images": records,
            "failed": failed,
        }  # fmt: skip
        try:
            _write_json(v["json"], payload)
        except OSError as e:
            raise SSDError(f"--json {v['json']}: cannot write ({e.strerror or e})") from None

    done = len(records)
    rate = f", {done / elapsed:.1f} images/s" if elapsed > 0 and done else ""
    where = f"annotated images in {v['out']}" + (f", detections in {v['json']}" if v["json"] else "")
    print(f"ssd detect: {done} image(s), {n_detections} detection(s){rate}; {where}")
    if failed:
        print(
            f"ssd detect: {len(failed)} of {len(items)} file(s) could not be processed: "
            + ", ".join(f["file"] for f in failed[:5]) + (", ..." if len(failed) > 5 else ""),
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return 0
