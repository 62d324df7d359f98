"""``ssd detect``: run a model over images, videos and streams; annotated copies and a JSON of detections.

Inputs are any mix of files, folders and stream URLs. Folders are scanned **recursively** for image extensions
(``.jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp``) and video extensions (:data:`ssd.video.VIDEO_EXTENSIONS`),
any case, hidden files and folders and the output folder skipped, in sorted order; files named on the command line
are tried whatever their extension. Whether a file is an image or a video is decided by its content (an animated
GIF is a video). A video (or a stream: ``rtsp://``, ``http(s)://``, ``udp://``, ...) becomes an annotated MP4 in
``--out`` and, with ``--json``, a JSON Lines file beside it, one record per processed frame (:mod:`ssd.video`). Each annotated copy goes to ``--out`` under its file name (for a folder, at its path
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
import time
from pathlib import Path
from typing import Any

from ssd.cli.checks import add_setting_options, create_dirs, settings_from_args, writable_dir, writable_file
from ssd.cli.detect_media import IMAGE_FORMATS, Input, add_video_options, collect_inputs, run_video, unique_outputs, video_options
from ssd.errors import SSDError
from ssd.paths import refuse_to_overwrite_inputs, write_atomically

EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")


_SETTINGS = ("min_score", "max_overlap", "top_k", "suppress", "batch_size")
"""The DetectSettings fields ``ssd detect`` has options for (all of them)."""


def register(sub) -> None:
    from ssd.device import DEVICE_HELP
    from ssd.settings import DetectSettings, defaults_explained

    p = sub.add_parser(
        "detect",
        help="detect objects in images, videos, streams and folders: annotated copies and a JSON of detections",
        usage="ssd detect [-h] CHECKPOINT INPUT [INPUT ...] [options]\n"
        "       ssd detect [-h] --onnx MODEL.onnx INPUT [INPUT ...] [options]",
        description="Run a model over image files, videos, stream URLs and folders (folders are scanned recursively, "
        "sorted; images and videos are told apart by content). For each image an annotated copy goes to --out (same "
        "file name and format), for each video an annotated MP4; --json FILE collects "
        "every detection (file, class name, score, box x1, y1, x2, y2 in pixels of the original image, "
        "pixel i spanning [i, i+1)). Unreadable files are reported and skipped; the exit status is then 1. "
        + defaults_explained(),
        epilog="With --onnx the model is a file written by `ssd export` run with onnxruntime (class names and "
        "input size come from its metadata; thresholds, per-class NMS and top-k run after it, as in PyTorch); "
        "leave CHECKPOINT out.",
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT INPUT", help="an ssd checkpoint (not with --onnx), then image files, videos, stream URLs and folders")
    p.add_argument("--out", default="detections", metavar="DIR", help="folder for the annotated copies (default: detections)")
    p.add_argument("--json", metavar="FILE", help="write every detection to this JSON file")
    add_setting_options(p, DetectSettings(), _SETTINGS)
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--onnx", metavar="MODEL.onnx", help="run this exported model with onnxruntime instead of a checkpoint")
    add_video_options(p)
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
    from ssd.video.source import is_stream_url, missing_file_message

    device = args.input_format is not None  # a capture device's name ("0", "video=Cam") is not a file
    for p in paths:
        if not device and not is_stream_url(p) and not os.path.lexists(p):
            raise SSDError("INPUT " + missing_file_message(p))
    v["inputs"] = [p if device or is_stream_url(p) else Path(p) for p in paths]
    v["video"] = video_options(args)
    v["out"] = writable_dir(args.out, "--out")
    v["json"] = writable_file(args.json, "--json") if args.json else None
    from ssd.device import resolve_device
    from ssd.settings import DetectSettings

    v["settings"] = settings_from_args(args, DetectSettings(), _SETTINGS)

    if args.onnx:
        if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
            raise SSDError(f"--device {args.device}: with --onnx use auto, cpu or cuda[:N]")
        v["device"] = args.device
    else:
        v["device"] = resolve_device(args.device, "--device")
    return v


# --- running -------------------------------------------------------------------------------------


def _save(image, path: Path) -> None:
    fmt = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
    kwargs: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("JPEG", "BMP") and image.mode != "RGB":
        image = image.convert("RGB")
    write_atomically(path, lambda f: image.save(f, format=fmt, **kwargs), sync=False)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), sync=False)


def _load_detector(v: dict[str, Any]):
    """The detector of the validated options, its settings checked against the model (``--suppress`` classes,
    ``--top-k`` at most its prior count)."""
    from ssd.detector import Detector

    if v["onnx"] is not None:
        detector = Detector.from_onnx(v["onnx"], device=v["device"])
    else:
        detector = Detector.from_checkpoint(v["checkpoint"], device=v["device"])
    detector.settings = detector.checked(v["settings"], prefix="--")
    return detector


class _Run:
    """Detections of every file, in batches of the detector's batch size: load_image (a failure is reported and
    the file skipped) -> Detector.prepare -> Detector.run_batch -> Detector.finish -> annotated copy and record."""

    def __init__(self, detector, out_dir: Path, bar) -> None:
        self.detector, self.out_dir, self.bar = detector, out_dir, bar
        self.records: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []
        self.videos: list[dict[str, Any]] = []
        self.n_detections = 0
        self.pending: list[tuple[Path, Path, Any, Any]] = []  # file, output path, uint8 image, PreparedImage

    def add_video(self, item: Input, out_rel: Path, with_json: bool, options: Any) -> bool:
        """One video or stream (images gathered so far go first); False when Ctrl-C ended it (its outputs are
        complete) and the run should stop."""
        self.flush()
        out_path = self.out_dir / out_rel
        try:
            summary = run_video(self.detector, item, out_path, out_path.with_suffix(".jsonl") if with_json else None,
                                options, show_bar=True)  # fmt: skip
        except SSDError as err:
            self.report(item.source, err)
            return True
        self.videos.append(summary.to_dict())
        self.n_detections += summary.detections
        self.bar.update(1)
        return not summary.interrupted

    def report(self, file: Path | str, reason: str | SSDError) -> None:
        """``file`` skipped for ``reason`` (an SSDError's message loses its leading ``file: ``)."""
        from ssd.progress import message
        from ssd.video.source import shown

        file = shown(file)
        reason, prefix = str(reason), f"{file}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        self.failed.append({"file": str(file), "error": reason})
        message(self.bar, f"ssd detect: skipped {file}: {reason}")
        self.bar.update(1)

    def add(self, file: Path, out_rel: Path) -> None:
        from ssd.detector import load_image

        try:
            image = load_image(file)
        except SSDError as err:
            self.report(file, err)
            return
        self.pending.append((file, out_rel, image, self.detector.prepare(image, source=str(file))))
        if len(self.pending) >= self.detector.settings.batch_size:
            self.flush()

    def flush(self) -> None:
        from PIL import Image

        from ssd.visualize import draw_detections

        if not self.pending:
            return
        batch, self.pending = self.pending, []
        prepared = [p for _, _, _, p in batch]
        dets = self.detector.finish(self.detector.run_batch(prepared), prepared, self.detector.settings)
        for (file, out_rel, image, _), det in zip(batch, dets):
            out_path = self.out_dir / out_rel
            try:
                _save(draw_detections(Image.fromarray(image.permute(1, 2, 0).numpy()), det), out_path)
            except OSError as err:
                self.report(file, f"cannot write {out_path}: {err.strerror or err}")
                continue
            rec = det.to_dict()
            self.records.append({"file": rec.pop("source"), "output": str(out_path), **rec})
            self.n_detections += len(det)
            self.bar.update(1)


def run(args: argparse.Namespace) -> int:
    v = _validate(args)
    items = collect_inputs(v["inputs"], v["out"])
    outputs = unique_outputs(items)
    writes = [("--out", v["out"] / rel) for rel in outputs]
    writes += [("--json", v["out"] / rel.with_suffix(".jsonl")) for item, rel in zip(items, outputs) if item.video and v["json"]]
    writes += [("--json", v["json"])] if v["json"] else []
    reads = [Path(item.source) for item in items if os.path.lexists(item.source)]  # files, not URLs or devices
    refuse_to_overwrite_inputs(writes, reads + [v["checkpoint"] or v["onnx"]])
    if v["json"] is not None and any(os.path.realpath(p) == os.path.realpath(v["json"]) for _, p in writes[:-1]):
        raise SSDError(f"--json {v['json']}: is also the name of an annotated copy or of a video's JSON Lines file "
                       "in --out; choose another name")  # fmt: skip
    detector = _load_detector(v)
    # Folders only once the options, the model and the inputs have passed: a refused command leaves nothing.
    create_dirs([(v["out"], "--out")] + ([(v["json"].parent, "--json")] if v["json"] else []))

    from ssd.progress import progress

    t0 = time.perf_counter()
    unit = "input" if any(item.video for item in items) else "image"
    bar = progress(len(items), "detect", unit, enabled=len(items) > 1)
    work = _Run(detector, v["out"], bar)
    interrupted = False
    try:
        for item, out_rel in zip(items, outputs):
            if not item.video:
                work.add(item.source, out_rel)
            elif not work.add_video(item, out_rel, v["json"] is not None, v["video"]):
                interrupted = True
                break
        work.flush()
    except KeyboardInterrupt:  # between videos or in images: what is written is complete; the summary follows
        interrupted = True
    finally:
        bar.close()
    _finish(v, detector, work, time.perf_counter() - t0)
    if interrupted:
        print("ssd detect: interrupted (Ctrl-C); the outputs written so far are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    if work.failed:
        failed = work.failed
        print(
            f"ssd detect: {len(failed)} of {len(items)} input(s) could not be processed: "
            + ", ".join(f["file"] for f in failed[:5]) + (", ..." if len(failed) > 5 else ""),
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return 0


def _finish(v: dict[str, Any], detector, work: _Run, elapsed: float) -> None:
    """The JSON summary (with --json) and the closing line."""
    if v["json"] is not None:
        payload = {
            "model": str(v["onnx"] or v["checkpoint"]),
            "backend": detector.backend,
            "class_names": list(detector.class_names),
            "settings": detector.settings.decoding_dict(),
            "box_format": "x1, y1, x2, y2 in pixels of the original image (pixel i spans [i, i+1))",
            "images": work.records,
            "videos": work.videos,
            "failed": work.failed,
        }
        try:
            _write_json(v["json"], payload)
        except OSError as err:
            raise SSDError(f"--json {v['json']}: cannot write ({err.strerror or err})") from err

    done = len(work.records)
    rate = f", {done / elapsed:.1f} images/s" if elapsed > 0 and done and not work.videos else ""
    frames = sum(s["frames"] for s in work.videos)
    videos = f", {len(work.videos)} video(s) ({frames} frames)" if work.videos else ""
    where = f"annotated copies in {v['out']}" + (f", detections in {v['json']}" if v["json"] else "")
    print(f"ssd detect: {done} image(s){videos}, {work.n_detections} detection(s){rate}; {where}")
