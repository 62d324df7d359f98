"""Detection on videos and live streams (PyAV, an optional extra: ``pip install 'ssd-detector[video]'``).

    from ssd.detector import Detector

    detector = Detector.from_checkpoint("checkpoint.pt")
    for result in detector.stream("clip.mp4", every=2):            # or "rtsp://camera/live"
        print(result.frame, f"{result.time:.2f}s", result.detections.class_names)

:func:`annotate_video` is what ``ssd detect`` runs on a video: an annotated MP4 and a JSON Lines file.
Modules: :mod:`ssd.video.source` (opening, decoding thread), :mod:`ssd.video.pipeline` (batched detection over the
frames), :mod:`ssd.video.writer` (drawing and encoding thread).
"""

from ssd.video.pipeline import FrameDetections, FrameStream, VideoOptions, detect_frames, stream_detections
from ssd.video.source import VIDEO_EXTENSIONS, VideoInfo, ffmpeg_opens, is_stream_url, open_video, shown
from ssd.video.writer import VideoSummary, annotate_video, pick_encoder

__all__ = [
    "FrameDetections", "FrameStream", "VIDEO_EXTENSIONS", "VideoInfo", "VideoOptions", "VideoSummary",
    "annotate_video", "detect_frames", "ffmpeg_opens", "is_stream_url", "open_video", "pick_encoder", "shown",
    "stream_detections",
]  # fmt: skip
