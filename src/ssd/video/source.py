"""Opening and decoding a video source with PyAV (FFmpeg): files, URLs, devices.

    source (path | URL | device name)
      -> open_video  -> OpenedVideo: the container, its first video stream, VideoInfo (size, rate, frame count)
      -> Decoder     -> a thread: frames in presentation order -> DecodedFrame (index, time, uint8 (3, H, W),
                        PreparedImage for the frames the network sees) -> a bounded queue

Everything FFmpeg can demux and decode is a source: mp4, mkv, avi, webm, mov, animated GIF, rtsp://, http(s)://,
udp://, and capture devices where FFmpeg has them (``input_format``: ``v4l2``, ``avfoundation``, ``dshow``). Every
network read waits at most ``timeout`` seconds, so a source that cannot be reached or stops sending fails with a
message instead of hanging. PyAV is an optional dependency (``pip install 'ssd-detector[video]'``).
"""

from __future__ import annotations

import math
import queue
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import torch
from torch import Tensor

from ssd.errors import SSDError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
"""A source given as a URL (``rtsp://``, ``http(s)://``, ``udp://``, ``rtmp://``, ``srt://``, ...): opened by FFmpeg,
never looked up as a file."""

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".m2ts", ".flv", ".wmv", ".ogv", ".3gp",
})  # fmt: skip
"""Extensions ``ssd detect`` picks up as videos in folders (a file named on the command line is recognised by its
content whatever it is called; animated GIFs are found as images and recognised as videos by content). MPEG-TS's
``.ts`` is left out: in a folder it is more often TypeScript; name such a file to have it read."""

_END = object()


def require_av() -> Any:
    """The ``av`` module, or an SSDError that says how to install it."""
    try:
        import av
    except ImportError as err:
        raise SSDError("video needs PyAV: pip install 'ssd-detector[video]' (or pip install av)") from err
    return av


def is_stream_url(source: str | Path) -> bool:
    """Whether ``source`` is a URL (:data:`URL`), which FFmpeg opens, rather than a file path."""
    return isinstance(source, str) and URL.match(source) is not None


def shown(source: str | Path) -> str:
    """``source`` as messages and records show it: a URL without its user name and password."""
    if not is_stream_url(source):
        return str(source)
    parts = urlsplit(str(source))
    if "@" not in parts.netloc:
        return str(source)
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def missing_file_message(source: str | Path) -> str:
    """The one message for a source that is neither a file nor a URL."""
    return f"{source}: no such file or folder (a stream is a URL: rtsp://, http(s)://, udp://, ...)"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says of its first video stream. ``rate``: frames per second (the stream's average
    rate, else its guessed rate; None where it says neither); ``frames``: the frame count where the container
    knows it (None for streams and some formats); ``duration`` in seconds (None where unknown)."""

    source: str
    width: int
    height: int
    rate: Fraction | None
    frames: int | None
    duration: float | None
    codec: str


@dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One decoded frame: ``index`` in the video (0-based presentation order; after ``start`` it is the
    presentation time times the frame rate, rounded), ``time`` its presentation time in seconds from the
    stream's start (the container's timestamps less the first one it declares), ``image`` uint8 RGB (3, H, W), and ``prepared`` (:meth:`ssd.detector.Detector.prepare`'s output)
    when the network is to see it, else None."""

    index: int
    time: float
    image: Tensor
    prepared: Any | None


class OpenedVideo:
    """An open container and its first video stream; ``close()`` (or ``with``) releases it. While a
    :class:`Decoder` still reads it (a network read runs out only at its timeout), closing is left to the decoder,
    so the container is never closed under a read."""

    def __init__(self, container: Any, stream: Any, info: VideoInfo) -> None:
        self.container, self.stream, self.info = container, stream, info
        self._lock = threading.Lock()
        self._reading = False
        self._close_requested = False
        self._closed = False

    def reading(self, active: bool) -> None:
        """The decoder starts (True) or stops (False) reading; a close asked for meanwhile happens at the stop."""
        with self._lock:
            self._reading = active
            close_now = not active and self._close_requested and not self._closed
            self._closed |= close_now
        if close_now:
            self.container.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the container now, or when the decoder stops reading it; once."""
        with self._lock:
            self._close_requested = True
            if self._reading or self._closed:
                return
            self._closed = True
        self.container.close()

    def __enter__(self) -> "OpenedVideo":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def describe_av_error(err: BaseException, timeout: float) -> str:
    """FFmpeg's error as one line; its interrupt ("Immediate exit requested") is the read timeout."""
    av = require_av()
    if isinstance(err, av.error.ExitError):
        return f"no data within {timeout:g} s (--timeout): the source cannot be reached or stopped sending"
    text = str(err.args[1] if isinstance(err, av.error.FFmpegError) and len(err.args) > 1 else err).strip()
    return f"{text or type(err).__name__}"


def open_video(source: str | Path, *, timeout: float = 10.0, input_format: str | None = None) -> OpenedVideo:
    """Open ``source`` and find its first video stream; SSDError naming the source where FFmpeg cannot open it,
    where it has no video stream, or where nothing arrives within ``timeout`` seconds."""
    av = require_av()
    name = shown(source)
    try:
        container = av.open(str(source), mode="r", format=input_format, timeout=(timeout, timeout))
    except av.error.FFmpegError as err:
        raise SSDError(f"{name}: cannot open as a video: {describe_av_error(err, timeout)}") from err
    except (OSError, ValueError) as err:  # a format FFmpeg does not know, an unreadable file
        raise SSDError(f"{name}: cannot open as a video: {err}") from err
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise SSDError(f"{name}: no video stream (the file holds: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding where the codec has them
        info = _info(name, container, stream)
    except BaseException:
        container.close()
        raise
    if info.width <= 0 or info.height <= 0:
        container.close()
        raise SSDError(f"{name}: the video stream declares no frame size (damaged, or not a video)")
    return OpenedVideo(container, stream, info)


def _info(name: str, container: Any, stream: Any) -> VideoInfo:
    """The stream's VideoInfo: its size, rate, frame count and duration where the container declares them."""
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    ctx = stream.codec_context
    return VideoInfo(
        source=name, width=int(ctx.width or 0), height=int(ctx.height or 0),
        rate=Fraction(rate) if rate else None, frames=int(stream.frames) or None, duration=duration, codec=ctx.name,
    )  # fmt: skip


def ffmpeg_opens(path: Path) -> bool:
    """Whether FFmpeg opens the file as media with at least one stream (audio-only counts: the video path then
    says that it has no video stream). False without PyAV."""
    try:
        av = require_av()
        with av.open(str(path), mode="r", timeout=(5.0, 5.0)) as container:
            return len(container.streams) > 0
    except Exception:  # SSDError (no PyAV), FFmpegError, OSError: not media FFmpeg reads
        return False


class Decoder(threading.Thread):
    """Decodes ``video`` on its own thread into a bounded queue (``maxsize`` frames), so that decoding overlaps
    the network and memory stays bounded whatever the video's length.

    From ``start`` seconds (seek to the keyframe before it, then frames before it are dropped) for ``duration``
    seconds; frame ``k`` of those (0-based) is for the network when ``k % every == 0`` and gets ``prepare(image)``
    here, on this thread; at most ``max_processed`` such frames. Iterate the decoder for DecodedFrame in order; an
    FFmpeg error while decoding is raised there as SSDError. ``stop()`` ends it early (the consumer stopped).
    """

    def __init__(self, video: OpenedVideo, prepare: Callable[[Tensor], Any], *, every: int = 1, start: float = 0.0,
                 duration: float | None = None, max_processed: int | None = None, timeout: float = 10.0,
                 maxsize: int = 16) -> None:  # fmt: skip
        super().__init__(name=f"ssd-decode-{Path(video.info.source).name}", daemon=True)
        self.video, self.prepare = video, prepare
        self.every, self.start_s, self.duration, self.max_processed = every, start, duration, max_processed
        self.timeout = timeout
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        self.video.reading(True)
        try:
            for item in self._decode():
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, which raises it in its own thread
            self._put(err)
        finally:
            self.video.reading(False)

    def _put(self, item: Any) -> bool:
        while not self._stopping.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> Iterator[DecodedFrame]:
        av = require_av()
        stream, info = self.video.stream, self.video.info
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        if self.start_s > 0:
            self._seek(origin + self.start_s)
        end = None if self.duration is None else origin + self.start_s + self.duration
        rate = float(info.rate) if info.rate else None
        k = processed = 0
        try:
            for frame in self.video.container.decode(stream):
                if self._stopping.is_set():
                    return
                t = float(frame.time) if frame.time is not None else origin + (k / rate if rate else float(k))
                if t < origin + self.start_s - 1e-6:
                    continue  # decoded from the keyframe before --start
                if end is not None and t >= end - 1e-6:
                    return
                index = k if self.start_s <= 0 or not rate else int(math.floor((t - origin) * rate + 0.5))
                if (frame.width, frame.height) != (info.width, info.height):  # a stream that changed resolution
                    frame = frame.reformat(width=info.width, height=info.height)
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                process = k % self.every == 0
                yield DecodedFrame(index, t - origin, image, self.prepare(image) if process else None)
                k += 1
                processed += process
                if self.max_processed is not None and processed >= self.max_processed:
                    return
        except av.error.FFmpegError as err:
            raise SSDError(f"{info.source}: decoding failed at frame {k}: {describe_av_error(err, self.timeout)}") from err

    def _seek(self, seconds: float) -> None:
        stream = self.video.stream
        if stream.time_base is None:
            return
        try:
            self.video.container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
        except Exception:  # a source that cannot seek: decode from the start, the frames before are dropped
            pass

    def __iter__(self) -> Iterator[DecodedFrame]:
        while True:
            try:
                item = self.frames.get(timeout=0.1)
            except queue.Empty:
                if not self.is_alive() and self.frames.empty():
                    return  # stopped
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                if isinstance(item, SSDError):
                    raise SSDError(str(item)) from item.__cause__
                raise SSDError(f"{self.video.info.source}: decoding failed: {type(item).__name__}: {item}") from item
            yield item
