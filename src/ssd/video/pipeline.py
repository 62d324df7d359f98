"""Detections on every frame of a video, on the one inference path (the Detector's steps), batched.

    OpenedVideo -> Decoder thread (decode, RGB, Detector.prepare; bounded queue)
      -> detect_frames: batches of ``batch_size`` processed frames -> Detector.run_batch -> Detector.finish
      -> every frame in order, with its detections (a skipped frame, ``every`` > 1: the last processed frame's)

Memory is bounded whatever the video's length: the decoder's queue holds ``2 * batch_size`` frames, the batch
being gathered at most ``max(4 * batch_size, 16)`` (a batch runs early when skipped frames fill it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ssd.errors import SSDError
from ssd.video.source import DecodedFrame, Decoder, OpenedVideo, is_stream_url, missing_file_message, open_video


def _check(name: str, ok: bool, what: str) -> None:
    if not ok:
        raise SSDError(f"{name}: {what}")


@dataclass(frozen=True)
class VideoOptions:
    """Which frames to read and how long to wait.

    ``every``: the network sees one frame in ``every`` (the others keep the last boxes in the annotated video and
    have no record); ``max_frames``: stop after that many processed frames; ``start`` / ``duration``: the part
    of the video, in seconds; ``timeout``: seconds to wait for data before a source counts as unreachable or
    stalled; ``input_format``: FFmpeg's demuxer or device (``v4l2``, ``avfoundation``, ...), None to detect.
    """

    every: int = 1
    max_frames: int | None = None
    start: float = 0.0
    duration: float | None = None
    timeout: float = 10.0
    input_format: str | None = None

    def __post_init__(self) -> None:
        _check("every", isinstance(self.every, int) and self.every >= 1, f"must be a whole number >= 1, got {self.every!r}")
        _check("max_frames", self.max_frames is None or (isinstance(self.max_frames, int) and self.max_frames >= 1),
               f"must be a whole number >= 1, got {self.max_frames!r}")  # fmt: skip
        _check("start", math.isfinite(self.start) and self.start >= 0, f"must be seconds >= 0, got {self.start!r}")
        _check("duration", self.duration is None or (math.isfinite(self.duration) and self.duration > 0),
               f"must be seconds > 0, got {self.duration!r}")  # fmt: skip
        _check("timeout", math.isfinite(self.timeout) and self.timeout > 0, f"must be seconds > 0, got {self.timeout!r}")

    def open(self, source: str | Path) -> OpenedVideo:
        return open_video(source, timeout=self.timeout, input_format=self.input_format)


@dataclass(frozen=True, eq=False)
class FrameDetections:
    """One processed frame: ``frame`` (its index in the video), ``time`` (presentation time, seconds),
    ``detections`` (:class:`~ssd.detector.ImageDetections`, boxes in the frame's pixels) and ``image`` (uint8 RGB
    H x W x 3, only when asked for with ``with_frames``)."""

    frame: int
    time: float
    detections: Any
    image: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record: ``frame``, ``time`` (rounded to 1e-6 s), then the detections' own record."""
        return {"frame": self.frame, "time": round(self.time, 6), **self.detections.to_dict()}


def detect_frames(detector: Any, video: OpenedVideo, options: VideoOptions, settings: Any) -> Iterator[tuple[DecodedFrame, Any, bool]]:
    """Every decoded frame of ``video`` in order as ``(frame, detections, processed)``; ``processed`` says whether
    the network saw this frame (else ``detections`` are the last processed frame's). The decoding thread ends when
    the generator does, however it ends."""
    source = video.info.source
    batch_size = settings.batch_size
    decoder = Decoder(
        video, lambda image: detector.prepare(image, source=source), every=options.every, start=options.start,
        duration=options.duration, max_processed=options.max_frames, timeout=options.timeout, maxsize=2 * batch_size,
    )  # fmt: skip
    window = max(4 * batch_size, 16)
    decoder.start()
    try:
        pending: list[DecodedFrame] = []
        last = None
        for frame in decoder:
            pending.append(frame)
            if sum(f.prepared is not None for f in pending) >= batch_size or len(pending) >= window:
                last = yield from _run_batch(detector, pending, settings, last)
                pending = []
        if pending:
            yield from _run_batch(detector, pending, settings, last)
    finally:
        decoder.stop()
        decoder.join(timeout=options.timeout + 5)


def _run_batch(detector: Any, frames: list[DecodedFrame], settings: Any, last: Any) -> Iterator[tuple[DecodedFrame, Any, bool]]:
    """One batch: the processed frames through the network, then every frame in order with its detections (a
    skipped frame: the last processed frame's, ``last`` before the batch's first); returns the batch's last."""
    prepared = [f.prepared for f in frames if f.prepared is not None]
    found = iter(detector.finish(detector.run_batch(prepared), prepared, settings) if prepared else [])
    for frame in frames:
        processed = frame.prepared is not None
        if processed:
            last = next(found)
        yield frame, last, processed
    return last


class FrameStream:
    """:meth:`ssd.detector.Detector.stream`'s iterator of :class:`FrameDetections`, read lazily. ``close()`` (or
    ``with``, or the end of the frames) stops the decoding thread and closes the source, whether or not it was
    read; a ``for`` loop left early leaves that to the garbage collector, so close a long stream you stop reading."""

    def __init__(self, detector: Any, video: OpenedVideo, options: VideoOptions, settings: Any, with_frames: bool):
        self.video = video
        self._frames = self._generate(detector, options, settings, with_frames)

    def _generate(self, detector: Any, options: VideoOptions, settings: Any, with_frames: bool) -> Iterator[FrameDetections]:
        try:
            for frame, detections, processed in detect_frames(detector, self.video, options, settings):
                if processed:
                    image = frame.image.permute(1, 2, 0).numpy() if with_frames else None
                    yield FrameDetections(frame.index, frame.time, detections, image)
        finally:
            self.video.close()

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> FrameDetections:
        return next(self._frames)

    def close(self) -> None:
        """Stop decoding and close the source (idempotent)."""
        frames = getattr(self, "_frames", None)
        if frames is not None:
            frames.close()
            self.video.close()  # a stream never read: its generator never ran

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def stream_detections(detector: Any, source: str | Path, options: VideoOptions | None = None, *,
                      with_frames: bool = False, **overrides: Any) -> FrameStream:  # fmt: skip
    """:meth:`ssd.detector.Detector.stream`: the source is opened now (an SSDError here names what is wrong), the
    frames are decoded and detected as the :class:`FrameStream` is read."""
    options = options or VideoOptions()
    settings = detector.resolve(**overrides)
    if not is_stream_url(source) and not options.input_format and not Path(source).exists():
        raise SSDError(missing_file_message(source))
    return FrameStream(detector, options.open(source), options, settings, with_frames)
