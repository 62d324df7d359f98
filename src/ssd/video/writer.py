"""The annotated video and its JSON Lines record, written on their own thread.

    detect_frames (main thread: the network) -> bounded queue -> AnnotatedWriter thread:
      draw_detections -> H.264 encoder -> MP4 in a temporary file    |  one JSON line per processed frame
      finish(): both renamed into place, complete and playable       |  abort(): both removed

The encoder is H.264 (``libx264``, preset ``veryfast``, CRF 20; yuv420p, or yuv444p where the frame's width or
height is odd, which 4:2:0 cannot hold) in MP4. Where the FFmpeg build has no H.264 encoder, MPEG-4 Part 2
(``mpeg4``) in MP4 is the fallback: it plays in VLC and ffplay but not in every browser.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from ssd.errors import SSDError
from ssd.paths import write_atomically
from ssd.video.pipeline import FrameDetections, VideoOptions, detect_frames
from ssd.video.source import VideoInfo, require_av

DEFAULT_RATE = Fraction(30)
"""The output's frame rate where the source declares none (some live streams)."""

_END, _ABORT = object(), object()


class _Aborted(Exception):
    """Raised on the writer thread so that the temporary files are removed."""


def pick_encoder() -> str:
    """``libx264`` where the FFmpeg build has it, else any H.264 encoder, else ``mpeg4`` (module docstring)."""
    av = require_av()
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError, or a hardware wrapper that cannot open here
            continue
    raise SSDError("this FFmpeg build has neither an H.264 nor an MPEG-4 encoder: cannot write videos")


class AnnotatedWriter(threading.Thread):
    """Draws detections on frames and encodes them into ``out_path`` (MP4), and writes ``records`` as JSON Lines
    into ``jsonl_path``, on its own thread; both appear only when :meth:`finish` completes them, the video first
    (a record file is never in place without its video)."""

    def __init__(self, out_path: Path, jsonl_path: Path | None, info: VideoInfo, maxsize: int = 16) -> None:
        super().__init__(name=f"ssd-encode-{out_path.name}", daemon=True)
        self.out_path, self.jsonl_path, self.info = out_path, jsonl_path, info
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.encoder = pick_encoder()

    def put(self, image: Any, detections: Any, record: dict[str, Any] | None) -> None:
        """One frame (uint8 (3, H, W)) with the detections to draw, and its record (None: no JSON line)."""
        while self.is_alive():
            try:
                self.queue.put((image, detections, record), timeout=0.1)
                return
            except queue.Full:
                continue
        self._raise_error()

    def finish(self) -> None:
        """Encode what is queued, close the files and rename them into place; SSDError where writing failed.
        Interrupted itself (a second Ctrl-C), it removes both files."""
        try:
            self._close(_END)
        except BaseException:
            self.abort()
            raise
        if self.error is not None:
            self._raise_error()

    def _raise_error(self) -> None:
        err = self.error
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise SSDError(f"{self.out_path}: cannot write the video: {reason}") from err

    def abort(self) -> None:
        """Stop and remove both files: nothing is left that looks complete."""
        self._close(_ABORT)

    def _close(self, sentinel: object) -> None:
        while self.is_alive():
            try:
                self.queue.put(sentinel, timeout=0.1)
                break
            except queue.Full:
                continue
        self.join()

    def run(self) -> None:
        try:
            if self.jsonl_path is None:
                write_atomically(self.out_path, lambda video: self._loop(video, None))
            else:  # the video renamed into place first, then its records
                write_atomically(self.jsonl_path, lambda jsonl: write_atomically(self.out_path, lambda video: self._loop(video, jsonl)))
        except _Aborted:
            pass
        except BaseException as err:  # reported by finish(); the consumer stops at its next put()
            self.error = err
            _drain(self.queue)

    def _loop(self, video_file: IO[bytes], jsonl: IO[bytes] | None) -> None:
        from PIL import Image

        from ssd.visualize import draw_detections

        av = require_av()
        container = av.open(video_file, mode="w", format="mp4")
        try:
            stream = self._add_stream(container)
            while True:
                item = self.queue.get()
                if item is _END:
                    break
                if item is _ABORT:
                    raise _Aborted
                image, detections, record = item
                if jsonl is not None and record is not None:
                    jsonl.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                drawn = draw_detections(Image.fromarray(image.permute(1, 2, 0).numpy()), detections)
                frame = av.VideoFrame.from_ndarray(np.asarray(drawn), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        finally:
            container.close()

    def _add_stream(self, container: Any) -> Any:
        info = self.info
        stream = container.add_stream(self.encoder, rate=info.rate or DEFAULT_RATE)
        stream.width, stream.height = info.width, info.height
        odd = info.width % 2 or info.height % 2
        stream.pix_fmt = "yuv444p" if odd and self.encoder != "mpeg4" else "yuv420p"
        if self.encoder == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        else:
            stream.bit_rate = max(1_000_000, info.width * info.height * 4)
        return stream


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


@dataclass
class VideoSummary:
    """What :func:`annotate_video` did: frames decoded and processed, detections, seconds, and whether Ctrl-C ended
    it (the outputs are complete either way)."""

    source: str
    output: Path
    jsonl: Path | None
    info: VideoInfo
    frames: int = 0
    processed: int = 0
    detections: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source, "output": str(self.output), "frames_jsonl": str(self.jsonl) if self.jsonl else None,
            "width": self.info.width, "height": self.info.height,
            "rate": float(self.info.rate) if self.info.rate else None, "frames": self.frames,
            "processed_frames": self.processed, "detections": self.detections, "interrupted": self.interrupted,
        }  # fmt: skip


def annotate_video(detector: Any, source: str | Path, out_path: Path, jsonl_path: Path | None,
                   options: VideoOptions, settings: Any, bar_factory: Any = None) -> VideoSummary:  # fmt: skip
    """Detect in every frame of ``source`` (``options`` choose which), write the annotated MP4 to ``out_path`` and,
    with ``jsonl_path``, one JSON line per processed frame (:meth:`FrameDetections.to_dict`).

    ``bar_factory(total, desc)`` makes the progress bar (frames; total from the container where it knows it).
    Ctrl-C ends the video early with both files complete (``interrupted`` in the summary; the caller decides what
    comes next). A source that fails (cannot be opened, decoding breaks, no frames) raises SSDError and leaves
    neither file behind.
    """
    with options.open(source) as video:
        summary = VideoSummary(video.info.source, out_path, jsonl_path, video.info)
        writer = AnnotatedWriter(out_path, jsonl_path, video.info, maxsize=2 * settings.batch_size)
        bar = bar_factory(_expected_frames(video.info, options), Path(video.info.source).name) if bar_factory else None
        t0 = time.perf_counter()
        writer.start()
        try:
            for frame, detections, processed in detect_frames(detector, video, options, settings):
                record = FrameDetections(frame.index, frame.time, detections).to_dict() if processed else None
                writer.put(frame.image, detections, record)
                summary.frames += 1
                summary.processed += processed
                summary.detections += len(detections) if processed else 0
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            if summary.frames == 0:  # nothing to keep: the interrupt goes on to the caller
                writer.abort()
                raise
            summary.interrupted = True
        except BaseException:
            writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
        if summary.frames == 0:
            writer.abort()
            raise SSDError(f"{source}: no frames to read" + (" in the part chosen by --start/--duration" if options.start or options.duration else ""))
        writer.finish()
        summary.seconds = time.perf_counter() - t0
    return summary


def _expected_frames(info: VideoInfo, options: VideoOptions) -> int | None:
    """Frames the progress bar expects: the container's count, or duration x rate, less the part left out."""
    if info.rate is None or (info.frames is None and info.duration is None):
        return info.frames
    rate = float(info.rate)
    total = info.frames if info.frames is not None else int(round(info.duration * rate))
    first = int(round(options.start * rate))
    count = max(0, total - first)
    if options.duration is not None:
        count = min(count, int(math.ceil(options.duration * rate)))
    if options.max_frames is not None:
        count = min(count, (options.max_frames - 1) * options.every + 1)
    return count

