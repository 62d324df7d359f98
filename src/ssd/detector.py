"""A detector for users: load a checkpoint, call it on images, get named boxes in original pixels.

::

    from ssd.detector import Detector

    detector = Detector.from_checkpoint("checkpoint.pt")      # DetectSettings(): min_score 0.2, max_overlap 0.45, top_k 200
    for det in detector(["street.jpg", "dog.png"]):
        for name, score, box in zip(det.class_names, det.scores, det.boxes):
            print(det.source, name, f"{score:.2f}", box.round(1))   # box: x1, y1, x2, y2 in pixels

The steps, public so that the service (:mod:`ssd.serve`) and ``ssd detect`` run exactly these::

    input (path, PIL image, array, tensor)
      -> Detector.prepare   -> PreparedImage: pixels float (3, S, S) in [0, 1], the original (height, width)
      -> Detector.run_batch -> (boxes_xyxy_rel (N, P, 4), scores (N, P, C))     one forward pass (or onnxruntime)
      -> Detector.finish    -> ImageDetections per image (its own DetectSettings): threshold, per-class NMS,
                               top-k, boxes in original pixels clipped to the image

Inputs: a path (``str`` or ``Path``), a PIL image, a numpy array (H x W x 3 RGB or H x W grey; uint8,
uint16, or float in [0, 1]), a torch tensor (3 x H x W, uint8 or float in [0, 1]; N x 3 x H x W is a
batch), or a list of these; one :class:`ImageDetections` comes back per image (a list for a list or a
batch). Paths are decoded upright (EXIF orientation applied; greyscale, RGBA, 16-bit, CMYK handled);
a PIL image or array is taken as given (apply ``PIL.ImageOps.exif_transpose`` yourself). Float
images are quantised to 8 bits (``round(x * 255)``) so that every input type takes the path an image
file takes: the same image gives the same detections, whatever its type.

Preprocessing is the model's evaluation transform (resize to S x S with antialiasing, scale to
[0, 1]; the mean/std normalisation is inside the network). Boxes are ``xyxy`` in continuous pixel
coordinates of the original (upright) image: pixel ``i`` spans ``[i, i + 1)``, so a box covering the
whole image is ``(0, 0, width, height)``; boxes are clipped to the image after NMS (which sees the
model's own, unclipped boxes, as ``ssd eval`` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ssd.data.image import _array_to_tensor, _check_size, _float_to_uint8, _pil_to_tensor, load_image
from ssd.device import resolve_device
from ssd.errors import SSDError
from ssd.placement import InferencePlacement
from ssd.postprocess import Detections, decode_outputs, postprocess_decoded
from ssd.settings import DetectSettings

__all__ = ["Detector", "DetectSettings", "ImageDetections", "PreparedImage", "load_image", "resolve_device"]


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Detections of one image, best score first.

    Attributes:
        boxes: float32 (K, 4) ``x1, y1, x2, y2`` in continuous pixels of the original image,
            clipped to it (``0 <= x1 <= x2 <= width``, ``0 <= y1 <= y2 <= height``).
        scores: float32 (K,).
        labels: int64 (K,) in 1..C-1 (label ``i`` is the model's ``class_names[i - 1]``).
        class_names: the class name of each detection (K names).
        image_size: (height, width) of the original image.
        source: the path it came from, or ``<PIL image>``, ``<array>``, ``<tensor>``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    source: str

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"source", "height", "width", "detections": [{"class_name", "label",
        "score", "box": [x1, y1, x2, y2]}]}`` (boxes in pixels, rounded to 1e-3; scores to 1e-6)."""
        h, w = self.image_size
        return {
            "source": self.source,
            "height": int(h),
            "width": int(w),
            "detections": [
                {
                    "class_name": name,
                    "label": int(label),
                    "score": round(float(score), 6),
                    "box": [round(float(v), 3) for v in box],
                }
                for name, label, score, box in zip(self.class_names, self.labels, self.scores, self.boxes)
            ],
        }

    def __repr__(self) -> str:
        h, w = self.image_size
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.class_names[:3], self.scores[:3]))
        more = ", ..." if len(self) > 3 else ""
        return f"ImageDetections({self.source!r}, {w}x{h}, {len(self)} detections: [{top}{more}])"


# --- devices and images --------------------------------------------------------------------------


def _tensor_to_uint8(t: Tensor, source: str = "<tensor>") -> Tensor:
    t = t.detach().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise SSDError(f"{source}: a tensor image must be 3 x H x W (RGB) or H x W (grey), got {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype == torch.uint8:
        t = t.contiguous()
    elif t.is_floating_point():
        t = _float_to_uint8(t, source)
    else:
        raise SSDError(f"{source}: tensor images must be uint8 or float in [0, 1], not {t.dtype}")
    return _check_size(t, source)


def to_uint8_image(item: Any) -> tuple[Tensor, str]:
    """Any supported single input -> (uint8 RGB (3, H, W) upright, source description)."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(item), os.fspath(item)
    if isinstance(item, Tensor):
        return _tensor_to_uint8(item), "<tensor>"
    if isinstance(item, np.ndarray):
        return _array_to_tensor(item), "<array>"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        return _pil_to_tensor(item), "<PIL image>"
    raise SSDError(
        f"cannot detect in a {type(item).__name__}: give a path, a PIL image, a numpy array, a tensor, or a list of them"
    )


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One input ready for the network: ``pixels`` float32 (3, S, S) RGB in [0, 1] (the evaluation transform:
    resized as the model expects, :func:`~ssd.data.transforms.resize_for_model`, as ``ssd eval`` does), the original ``image_size`` (height, width) and its ``source``."""

    pixels: Tensor
    image_size: tuple[int, int]
    source: str


def _as_items(inputs: Any) -> tuple[list[Any], bool]:
    """(the inputs one by one, whether a single input was given)."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        return list(inputs.unbind(0)), False
    return [inputs], True


# --- the detector --------------------------------------------------------------------------------


class Detector:
    """Detections with class names in original pixels, from an SSD (or an exported ONNX model).

    ``Detector.from_checkpoint(path)`` or ``Detector(model)``; then ``detector(inputs, **overrides)`` (see the
    module docstring for inputs and steps). Settings are a :class:`~ssd.settings.DetectSettings` (``settings``;
    keyword ``overrides`` replace some of its values, here and per call): ``min_score`` (keep scores above it,
    default 0.2), ``max_overlap`` (per-class NMS IoU, 0.45, the paper's), ``top_k`` (detections per image, 200, at most the
    model's prior count), ``suppress`` (class names never reported; dropped before NMS and top-k) and
    ``batch_size`` (images per forward pass, 8).

    ``model`` is an :class:`~ssd.model.SSD` or an :class:`~ssd.export.OnnxModel`. An SSD runs on ``device``
    (``auto`` picks CUDA when there is one; ``None``: where the model is), in eval mode, channels-last where
    :func:`ssd.device.channels_last_default` says (``channels_last`` to choose): faster there, with outputs that
    differ from the NCHW model's by float rounding. The caller's model is borrowed: it is placed so for each
    batch and put back as it was (device, modes, memory format) after it. With ``owns_model=True`` (what
    :meth:`from_checkpoint` does) the detector owns the model and places it once, for good.
    """

    def __init__(
        self,
        model: nn.Module | Any,
        settings: DetectSettings | None = None,
        *,
        device: str | torch.device | None = None,
        channels_last: bool | None = None,
        owns_model: bool = False,
        **overrides: Any,
    ) -> None:
        from ssd.export import OnnxModel

        self.model = model
        self.owns_model = bool(owns_model)
        self._placement: InferencePlacement | None = None
        if isinstance(model, OnnxModel):
            self.backend = "onnx"
            self.class_names: tuple[str, ...] = tuple(model.class_names)
            self.image_size: int = model.image_size
            self.input_resize: str = model.input_resize
            self.candidates_per_class = model.candidates_per_class
            self.num_priors: int | None = model.num_priors
            self.device = torch.device("cpu")  # the post-step runs on the CPU; onnxruntime picks its own
        elif isinstance(model, nn.Module) and hasattr(model, "config"):
            self.backend = "torch"
            self._placement = InferencePlacement(model, device, channels_last=channels_last)
            if self.owns_model:
                self._placement.apply()
            self.device = self._placement.device
            config = model.config
            self.class_names = tuple(config.class_names)
            self.image_size = config.image_size
            self.input_resize = config.input_resize
            self.candidates_per_class = config.decode.candidates_per_class
            self.num_priors = config.num_priors
        else:
            raise SSDError(f"Detector needs an ssd SSD model or an OnnxModel, not {type(model).__name__}")
        self.settings: DetectSettings = self.checked((settings or DetectSettings()).replace(**overrides))

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto", settings: DetectSettings | None = None,
        **overrides: Any,
    ) -> "Detector":  # fmt: skip
        """A detector owning the model of an ssd checkpoint (its configuration and class names come with it)."""
        from ssd.checkpoint import load_model

        dev = resolve_device(device)
        return cls(load_model(path, device=dev), settings, device=dev, owns_model=True, **overrides)

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, device: str = "auto", settings: DetectSettings | None = None, **overrides: Any
    ) -> "Detector":
        """A detector running a file written by ``ssd export`` with onnxruntime (NMS after it)."""
        from ssd.export import OnnxModel

        return cls(OnnxModel(path, device=str(device)), settings, owns_model=True, **overrides)

    def checked(self, settings: DetectSettings, prefix: str = "") -> DetectSettings:
        """``settings`` once they fit this model (:meth:`DetectSettings.check_model`: known classes, ``top_k`` at
        most the prior count); errors name a setting as ``prefix`` + its name (``--`` for the command line)."""
        return settings.check_model(self.class_names, self.num_priors, prefix=prefix)

    def resolve(self, **overrides: Any) -> DetectSettings:
        """This detector's settings with ``overrides`` (setting names), checked completely: what a call, or a
        service request, runs with. :class:`SSDError` for a bad value, ``TypeError`` for an unknown name."""
        return self.checked(self.settings.replace(**overrides))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Detector({self.backend}, {len(self.class_names)} classes, input {self.image_size}, "
            f"device {self.device}, min_score={s.min_score}, max_overlap={s.max_overlap}, "
            f"top_k={s.top_k}, suppress={list(s.suppress)})"
        )

    def __call__(self, inputs: Any, **overrides: Any) -> ImageDetections | list[ImageDetections]:
        """Detect in one input (returns one :class:`ImageDetections`) or a list (returns a list).

        ``overrides`` replace settings for this call (:meth:`resolve`). An input that cannot be read raises
        :class:`SSDError` naming it.
        """
        settings = self.resolve(**overrides)
        items, single = _as_items(inputs)
        out: list[ImageDetections] = []
        for start in range(0, len(items), settings.batch_size):
            prepared = [self.prepare(item) for item in items[start : start + settings.batch_size]]
            out.extend(self.finish(self.run_batch(prepared), prepared, settings))
        return out[0] if single else out

    def stream(
        self, source: str | os.PathLike, *, every: int = 1, max_frames: int | None = None, start: float = 0.0,
        duration: float | None = None, timeout: float = 10.0, input_format: str | None = None,
        with_frames: bool = False, **overrides: Any,
    ) -> Iterator[Any]:  # fmt: skip
        """Detections on a video file, a stream URL (``rtsp://``, ``http(s)://``, ``udp://``) or a device, frame by
        frame, lazily: an iterator of :class:`~ssd.video.FrameDetections` (``frame`` index, ``time`` in seconds,
        ``detections``, and with ``with_frames`` the ``image``, uint8 H x W x 3).

        The network sees one frame in ``every``; ``max_frames`` processed frames at most; ``start`` / ``duration``
        in seconds; ``timeout`` seconds without data fail an unreachable or stalled source; ``input_format`` names
        FFmpeg's demuxer or device. Frames are decoded on a thread and batched by ``batch_size`` (a setting, like
        the other ``overrides``). Needs PyAV (``pip install 'ssd-detector[video]'``); the source is opened at the
        call, so a bad one raises :class:`SSDError` here.
        """
        from ssd.video import VideoOptions, stream_detections

        options = VideoOptions(every, max_frames, float(start), duration, float(timeout), input_format)
        return stream_detections(self, source, options, with_frames=with_frames, **overrides)

    def prepare(self, item: Any, source: str | None = None) -> PreparedImage:
        """Any supported input (module docstring) -> :class:`PreparedImage`; ``source`` names it in the result
        (default: its path, or ``<PIL image>``, ``<array>``, ``<tensor>``)."""
        from ssd.data.transforms import resize_for_model

        image, described = to_uint8_image(item)
        pixels = resize_for_model(image, self.image_size, self.input_resize)
        return PreparedImage(pixels, (int(image.shape[1]), int(image.shape[2])), described if source is None else source)

    @torch.no_grad()
    def run_batch(self, images: Sequence[PreparedImage]) -> tuple[Tensor, Tensor]:
        """One forward pass: prepared images (N of them) -> ``(boxes_xyxy_rel (N, P, 4), scores (N, P, C))``,
        softmax scores with column 0 the background (:class:`~ssd.postprocess.DecodedSSD`'s outputs, or the
        ONNX file's)."""
        if not images:
            raise SSDError("run_batch needs at least one image")
        batch = torch.stack([im.pixels for im in images])
        if self._placement is None:
            boxes, scores = self.model(batch.numpy())
            return torch.from_numpy(boxes), torch.from_numpy(scores)
        if self.owns_model:
            return self._forward(self._placement, batch)
        with self._placement as placed:
            return self._forward(placed, batch)

    @staticmethod
    def _forward(placed: InferencePlacement, batch: Tensor) -> tuple[Tensor, Tensor]:
        loc_offsets, cls_logits = placed.model(placed.inputs(batch))
        return decode_outputs(loc_offsets, cls_logits, placed.core.priors_cxcywh, placed.core.config.decode)

    def finish(
        self,
        outputs: tuple[Tensor, Tensor],
        images: Sequence[PreparedImage],
        settings: DetectSettings | Sequence[DetectSettings],
        *,
        clip: bool = True,
    ) -> list[ImageDetections]:
        """:meth:`run_batch`'s outputs for ``images`` -> one :class:`ImageDetections` per image, each with its
        own settings (one for all, or one per image; checked against the model again). Images that share settings
        are decoded together; each image's detections do not depend on the others'. ``clip=False`` leaves boxes
        unclipped, as the devkit scores them (:func:`ssd.evaluate.evaluate_detector`)."""
        boxes_xyxy_rel, scores = outputs
        per_image = [settings] * len(images) if isinstance(settings, DetectSettings) else list(settings)
        groups: dict[DetectSettings, list[int]] = {}
        for i, s in enumerate(per_image):
            groups.setdefault(s, []).append(i)
        out: list[Any] = [None] * len(images)
        for s, idx in groups.items():
            self.checked(s)
            rows = slice(None) if len(idx) == len(images) else torch.as_tensor(idx, device=scores.device)
            dets = postprocess_decoded(
                boxes_xyxy_rel[rows], scores[rows], min_score=s.min_score, max_overlap=s.max_overlap, top_k=s.top_k,
                candidates_per_class=self.candidates_per_class, image_sizes=[images[i].image_size for i in idx],
                suppress_labels=[self.class_names.index(c) + 1 for c in s.suppress],
            )  # fmt: skip
            for i, d in zip(idx, dets):
                out[i] = self._image_detections(d, images[i], clip)
        return out

    def _image_detections(self, d: Detections, image: PreparedImage, clip: bool = True) -> ImageDetections:
        """One image's detections (boxes in its pixels) as numpy arrays, clipped to the image, with class names."""
        h, w = image.image_size
        labels = d.labels.cpu().numpy().astype(np.int64)
        boxes = d.boxes.float().cpu().numpy().reshape(-1, 4)
        if clip:
            boxes = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float32))  # inside the image
        return ImageDetections(
            boxes=_readonly(boxes), scores=_readonly(d.scores.float().cpu().numpy()), labels=_readonly(labels),
            class_names=tuple(self.class_names[int(l) - 1] for l in labels), image_size=(h, w), source=image.source,
        )  # fmt: skip


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def iter_image_files(folder: Path, recursive: bool = True, exclude: Iterable[Path] = (),
                     extensions: Iterable[str] = ()) -> list[Path]:  # fmt: skip
    """Image files (and files with any of ``extensions``) under ``folder`` by extension (case-insensitive),
    sorted by relative path.

    Hidden files and folders (names starting with ``.``) and anything under ``exclude`` are skipped.
    """
    wanted = IMAGE_EXTENSIONS | {e.lower() for e in extensions}
    excluded = [Path(e).resolve() for e in exclude]
    found = []
    walker = os.walk(folder) if recursive else [(str(folder), [], [f.name for f in folder.iterdir()])]
    for root, dirs, files in walker:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_p = Path(root)
        if any(_is_within(root_p.resolve(), e) for e in excluded):
            dirs[:] = []
            continue
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in wanted:
                continue
            f = root_p / name
            if f.is_file():
                found.append(f)
    return sorted(found, key=lambda f: f.relative_to(folder).parts)


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""Extensions ``ssd detect`` picks up in folders (files given by name are tried whatever they are called)."""


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False
