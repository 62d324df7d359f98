"""What ``ssd detect`` reads and writes: its inputs (images, videos, streams), their output names, and the video
options and runs (:mod:`ssd.video` does the work)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, NamedTuple

from ssd.errors import SSDError

IMAGE_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}  # fmt: skip
"""Image outputs keep their input's format; anything else becomes PNG."""


class Input(NamedTuple):
    """One thing to detect in: a file path or a stream URL, its output path relative to ``--out``'s folder (before
    names are made unique), and whether it is a video (or stream)."""

    source: Path | str
    rel: Path
    video: bool


# --- options -------------------------------------------------------------------------------------


def add_video_options(parser: argparse.ArgumentParser) -> None:
    from ssd.cli.checks import non_negative, positive

    g = parser.add_argument_group(
        "videos and streams",
        "A video becomes an annotated MP4 (H.264) in --out; with --json, also a JSON Lines file beside it with one "
        "record per processed frame (frame index, time in seconds, detections). Ctrl-C ends a video or a stream "
        "with both files complete.",
    )
    g.add_argument("--every", type=positive(int), default=1, metavar="N",
                   help="detect in one frame in N; the frames between keep the last boxes in the video and have no "
                        "record (default: 1, every frame)")  # fmt: skip
    g.add_argument("--max-frames", type=positive(int), metavar="N", help="stop after N processed frames per video")
    g.add_argument("--start", type=non_negative, default=0.0, metavar="SECONDS", help="start at this time (default: 0)")
    g.add_argument("--duration", type=positive(float), metavar="SECONDS", help="process this many seconds")
    g.add_argument("--timeout", type=positive(float), default=10.0, metavar="SECONDS",
                   help="fail a source that sends no data for this long (default: 10)")  # fmt: skip
    g.add_argument("--input-format", metavar="FMT",
                   help="FFmpeg's demuxer or capture device for every input, which is then a source name for it "
                        "(e.g. v4l2 /dev/video0, avfoundation 0, dshow video=NAME, mjpeg FILE); default: detected")  # fmt: skip


def video_options(args: argparse.Namespace) -> Any:
    """The parsed video options as a :class:`~ssd.video.VideoOptions` (an error names the option)."""
    from ssd.video.pipeline import VideoOptions

    try:
        return VideoOptions(args.every, args.max_frames, args.start, args.duration, args.timeout, args.input_format)
    except SSDError as err:
        raise SSDError(f"--{str(err).replace('_', '-')}") from err


# --- inputs --------------------------------------------------------------------------------------


def is_video_file(path: Path) -> bool:
    """By content: what Pillow reads is an image (an animated GIF is a video); what it does not is an image where
    it has an image extension (the image path says what is wrong), else a video where it has a video extension or
    FFmpeg opens it as media (where it is not one, the video path says why)."""
    from PIL import Image

    from ssd.video.source import VIDEO_EXTENSIONS, ffmpeg_opens

    if not path.is_file():
        return True  # a device or a pipe: FFmpeg's
    try:
        with Image.open(path) as im:
            return im.format == "GIF" and getattr(im, "n_frames", 1) > 1
    except Exception:  # not an image Pillow knows: perhaps a video
        pass
    if path.suffix.lower() in IMAGE_FORMATS:
        return False  # a damaged image: FFmpeg's image demuxers would open it and call it a video
    return path.suffix.lower() in VIDEO_EXTENSIONS or ffmpeg_opens(path)


def stream_output_name(source: str) -> Path:
    """``rtsp://user:pw@host/live/cam1?x=1`` -> ``cam1``: a URL's last path part, else its host (never its user or
    password); a device name as it is; made a safe file name."""
    from urllib.parse import urlsplit

    from ssd.video.source import is_stream_url

    if is_stream_url(source):
        parts = urlsplit(source)
        name = parts.path.rstrip("/").rsplit("/", 1)[-1] or (parts.hostname or "")
    else:
        name = source
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "stream")


def collect_inputs(inputs: list[Path | str], out_dir: Path) -> list[Input]:
    """Every input once, folders expanded (images and videos, sorted), each with its kind and output name."""
    from ssd.detector import iter_image_files
    from ssd.video.source import VIDEO_EXTENSIONS

    items: list[Input] = []
    seen: set[Path | str] = set()
    for inp in inputs:
        if isinstance(inp, str):  # a URL, or a device name with --input-format
            if inp not in seen:
                seen.add(inp)
                items.append(Input(inp, stream_output_name(str(inp)), True))
            continue
        inp = Path(inp)
        if inp.is_dir():
            # earlier annotated copies in an --out inside the folder are not inputs; an --out that is the folder
            # itself (or holds it) is left to refuse_to_overwrite_inputs
            inside = out_dir.resolve() != inp.resolve() and out_dir.resolve().is_relative_to(inp.resolve())
            files = iter_image_files(inp, recursive=True, exclude=[out_dir] if inside else [], extensions=VIDEO_EXTENSIONS)
            if not files:
                raise SSDError(f"INPUT {inp}: no images or videos in this folder (looked for "
                               f"{', '.join(IMAGE_FORMATS)}, {', '.join(sorted(VIDEO_EXTENSIONS))})")  # fmt: skip
            pairs = [(f, f.relative_to(inp)) for f in files]
        else:
            pairs = [(inp, Path(inp.name))]
        for f, rel in pairs:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                items.append(Input(f, rel, is_video_file(f)))
    return items


def unique_outputs(items: list[Input]) -> list[Path]:
    """Output paths relative to ``--out``: images keep their format (else ``.png``), videos become ``.mp4``; a name
    taken already (case-insensitively) gets ``_1``, ``_2``, ... before the suffix."""
    used: set[str] = set()
    outs = []
    for item in items:
        rel = item.rel
        if item.video:
            suffix = ".mp4"
        else:
            suffix = rel.suffix if rel.suffix.lower() in IMAGE_FORMATS else rel.suffix + ".png"
        stem = rel.name[: len(rel.name) - len(rel.suffix)] if rel.suffix and (item.video or suffix == rel.suffix) else rel.name
        cand, n = rel.with_name(stem + suffix), 0
        while str(cand).casefold() in used or (item.video and str(cand.with_suffix(".jsonl")).casefold() in used):
            n += 1
            cand = rel.with_name(f"{stem}_{n}{suffix}")
        used.add(str(cand).casefold())
        if item.video:
            used.add(str(cand.with_suffix(".jsonl")).casefold())
        outs.append(cand)
    return outs


# --- running -------------------------------------------------------------------------------------


def run_video(detector: Any, item: Input, out_path: Path, jsonl_path: Path | None, options: Any, show_bar: bool) -> Any:
    """One video or stream -> annotated MP4 (+ JSON Lines): :func:`ssd.video.annotate_video` with a frame
    progress bar (frames/s shown). SSDError where the source fails; a summary otherwise (``interrupted`` after
    Ctrl-C, outputs complete)."""
    from ssd.progress import progress
    from ssd.video.writer import annotate_video

    def bar(total: int | None, name: str) -> Any:
        return progress(total, f"detect {name}", "frame", enabled=show_bar)

    return annotate_video(detector, item.source, out_path, jsonl_path, options, detector.settings, bar)
