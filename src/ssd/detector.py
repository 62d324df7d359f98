"""A detector for users: load a checkpoint, call it on images, get named boxes in original pixels.

::

    from ssd.detector import Detector

    detector = Detector.from_checkpoint("checkpoint.pt")      # min_score 0.2, max_overlap 0.5, top_k 200
    for det in detector(["street.jpg", "dog.png"]):
        for name, score, box in zip(det.class_names, det.scores, det.boxes):
            print(det.source, name, f"{score:.2f}", box.round(1))   # box: x1, y1, x2, y2 in pixels

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
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ssd.data.image import _array_to_tensor, _check_size, _float_to_uint8, _pil_to_tensor, load_image
from ssd.device import channels_last_default, resolve_device, to_channels_last
from ssd.errors import SSDError

__all__ = ["Detector", "ImageDetections", "load_image", "resolve_device", "DEFAULTS"]

DEFAULTS: dict[str, Any] = {"min_score": 0.2, "max_overlap": 0.5, "top_k": 200, "batch_size": 8}
"""The defaults of :class:`Detector` and ``ssd detect`` (the tutorial's detect.py settings)."""

_SETTINGS = ("min_score", "max_overlap", "top_k", "suppress", "batch_size")


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


def _preprocess(image: Tensor, size: int) -> Tensor:
    """The evaluation transform: uint8 (3, H, W) -> float (3, S, S) in [0, 1] (as ``ssd eval``)."""
    from ssd.data.transforms import EvalTransform, Target

    empty = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool))
    return EvalTransform(size)(image, empty)[0]


# --- the detector --------------------------------------------------------------------------------


def _check_settings(s: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    out = dict(s)
    from ssd.postprocess import check_settings

    check_settings(s["min_score"], s["max_overlap"], s["top_k"])
    for key in ("top_k", "batch_size"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise SSDError(f"{key} must be a positive integer, got {v!r}")
        out[key] = int(v)
    sup = s["suppress"]
    if isinstance(sup, str):
        sup = (sup,)
    sup = tuple(sup or ())
    unknown = [c for c in sup if c not in class_names]
    if unknown:
        raise SSDError(
            f"suppress: unknown class {unknown[0]!r}; the model's classes are: {', '.join(class_names)}"
        )
    out["suppress"] = sup
    out["min_score"], out["max_overlap"] = float(s["min_score"]), float(s["max_overlap"])
    return out


class Detector:
    """Detections with class names in original pixels, from an SSD (or an exported ONNX model).

    ``Detector.from_checkpoint(path)`` or ``Detector(model)``; then ``detector(inputs, **overrides)``
    (see the module docstring for inputs). Settings, also per call: ``min_score`` (keep scores
    above it, default 0.2), ``max_overlap`` (per-class NMS IoU, 0.5), ``top_k`` (detections per
    image, 200), ``suppress`` (class names never reported; dropped before NMS and top-k) and
    ``batch_size`` (images per forward pass, 8).

    ``model`` is an :class:`~ssd.model.SSD` (moved to ``device``: ``auto`` picks CUDA when there is
    one; ``None`` leaves it where it is) or an :class:`~ssd.export.OnnxModel`. ``channels_last``
    (default: on for the CPU and CUDA) converts the model's convolutions to channels-last in place,
    which is faster there; outputs then differ from the NCHW model's by float rounding (about 1e-6).
    """

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        device: str | torch.device | None = None,
        min_score: float = DEFAULTS["min_score"],
        max_overlap: float = DEFAULTS["max_overlap"],
        top_k: int = DEFAULTS["top_k"],
        suppress: Sequence[str] = (),
        batch_size: int = DEFAULTS["batch_size"],
        channels_last: bool | None = None,
    ) -> None:
        from ssd.export import OnnxModel

        if isinstance(model, OnnxModel):
            self.backend = "onnx"
            self.class_names: tuple[str, ...] = tuple(model.class_names)
            self.image_size: int = model.image_size
            self.candidates_per_class = model.candidates_per_class
            self.device = torch.device("cpu")  # the post-step runs on the CPU; onnxruntime picks its own
            self.channels_last = False
            self.model = model
        elif isinstance(model, nn.Module) and hasattr(model, "config"):
            from ssd.export import DecodedSSD

            self.backend = "torch"
            if device is not None:
                model = model.to(resolve_device(device))
            self.device = next(model.parameters()).device
            self.channels_last = channels_last_default(self.device) if channels_last is None else bool(channels_last)
            if self.channels_last:
                to_channels_last(model)
            self.model = model  # run in eval mode, whatever its mode (see _decoded_outputs)
            self._decoded = DecodedSSD(model)
            self.class_names = tuple(model.config.class_names)
            self.image_size = model.config.image_size
            self.candidates_per_class = model.config.decode.candidates_per_class
        else:
            raise SSDError(f"Detector needs an ssd SSD model or an OnnxModel, not {type(model).__name__}")
        self.settings = _check_settings(
            dict(min_score=min_score, max_overlap=max_overlap, top_k=top_k, suppress=suppress, batch_size=batch_size),
            self.class_names,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        min_score: float = DEFAULTS["min_score"],
        max_overlap: float = DEFAULTS["max_overlap"],
        top_k: int = DEFAULTS["top_k"],
        suppress: Sequence[str] = (),
        batch_size: int = DEFAULTS["batch_size"],
    ) -> "Detector":
        """A detector from an ssd checkpoint (its configuration and class names come with it)."""
        from ssd.checkpoint import load_model

        dev = resolve_device(device)
        return cls(
            load_model(path, device=dev), device=dev, min_score=min_score, max_overlap=max_overlap,
            top_k=top_k, suppress=suppress, batch_size=batch_size,
        )  # fmt: skip

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        min_score: float = DEFAULTS["min_score"],
        max_overlap: float = DEFAULTS["max_overlap"],
        top_k: int = DEFAULTS["top_k"],
        suppress: Sequence[str] = (),
        batch_size: int = DEFAULTS["batch_size"],
    ) -> "Detector":
        """A detector running a file written by ``ssd export`` with onnxruntime (NMS after it)."""
        from ssd.export import OnnxModel

        return cls(
            OnnxModel(path, device=str(device)), min_score=min_score, max_overlap=max_overlap,
            top_k=top_k, suppress=suppress, batch_size=batch_size,
        )  # fmt: skip

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Detector({self.backend}, {len(self.class_names)} classes, input {self.image_size}, "
            f"device {self.device}, min_score={s['min_score']}, max_overlap={s['max_overlap']}, "
            f"top_k={s['top_k']}, suppress={list(s['suppress'])})"
        )

    def __call__(self, inputs: Any, **overrides: Any) -> ImageDetections | list[ImageDetections]:
        """Detect in one input (returns one :class:`ImageDetections`) or a list (returns a list).

        ``overrides`` replace settings for this call: ``min_score``, ``max_overlap``, ``top_k``,
        ``suppress``, ``batch_size``. An input that cannot be read raises :class:`SSDError` naming it.
        """
        bad = sorted(set(overrides) - set(_SETTINGS))
        if bad:
            raise TypeError(f"unknown setting {bad[0]!r}; settings are {', '.join(_SETTINGS)}")
        settings = _check_settings({**self.settings, **overrides}, self.class_names)
        single = True
        if isinstance(inputs, (list, tuple)):
            items, single = list(inputs), False
        elif isinstance(inputs, Tensor) and inputs.ndim == 4:
            items, single = list(inputs.unbind(0)), False
        else:
            items = [inputs]
        out: list[ImageDetections] = []
        bs = settings["batch_size"]
        for start in range(0, len(items), bs):
            loaded = [to_uint8_image(item) for item in items[start : start + bs]]
            out.extend(self._detect([img for img, _ in loaded], [src for _, src in loaded], settings))
        return out[0] if single else out

    @torch.no_grad()
    def _decoded_outputs(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.backend == "onnx":
            boxes, scores = self.model(batch.numpy())
            return torch.from_numpy(boxes), torch.from_numpy(scores)
        was_training = self.model.training
        self.model.eval()
        try:
            batch = batch.to(self.device)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return self._decoded(batch)
        finally:
            self.model.train(was_training)

    def _detect(self, images: Sequence[Tensor], sources: Sequence[str], settings: dict[str, Any]) -> list[ImageDetections]:
        """uint8 RGB images (3, H, W) -> detections (one forward pass)."""
        if not images:
            return []
        batch = torch.stack([_preprocess(im, self.image_size) for im in images])
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        boxes, scores = self._decoded_outputs(batch)
        from ssd.export import postprocess_decoded

        names = self.class_names
        suppress_labels = [names.index(c) + 1 for c in settings["suppress"]]
        dets = postprocess_decoded(
            boxes, scores, min_score=settings["min_score"], max_overlap=settings["max_overlap"],
            top_k=settings["top_k"], candidates_per_class=self.candidates_per_class, image_sizes=sizes,
            suppress_labels=suppress_labels,
        )  # fmt: skip
        out = []
        for d, (h, w), src in zip(dets, sizes, sources):
            labels = d.labels.cpu().numpy().astype(np.int64)
            boxes = d.boxes.float().cpu().numpy().reshape(-1, 4)
            boxes = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float32))  # inside the image
            out.append(
                ImageDetections(
                    boxes=_readonly(boxes),
                    scores=_readonly(d.scores.float().cpu().numpy()),
                    labels=_readonly(labels),
                    class_names=tuple(names[int(l) - 1] for l in labels),
                    image_size=(h, w),
                    source=src,
                )
            )
        return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def iter_image_files(folder: Path, recursive: bool = True, exclude: Iterable[Path] = ()) -> list[Path]:
    """Image files under ``folder`` by extension (case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with ``.``) and anything under ``exclude`` are skipped.
    """
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
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
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
