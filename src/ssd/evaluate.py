"""Evaluation: run a model over a dataset split and score it as the official VOC devkit does (and COCO-style).

The flow::

    DatasetIndex (continuous pixels, difficult flags)
      -> images resized to S x S (EvalTransform), batched, on the model's device (float32; bf16 with amp=True)
      -> model -> postprocess (score > min_score, NMS max_overlap, top_k per image), boxes scaled to each
         image's original size: continuous pixels [x1, y1, x2, y2] (see ssd.data.voc for the convention)
      -> Evaluation: the detections, and their VOC score (ssd.metrics, devkit rules, devkit pixels)

:func:`evaluate_detector` scores a :class:`~ssd.detector.Detector` (an exported or int8 ONNX model) the same way.
The same scorer reads devkit results files (:func:`score_detections_dir`), so results of any detector are
scored by the same code, and :func:`write_detections_dir` writes them. :func:`coco_results` and
:func:`coco_metrics` (:mod:`ssd.coco`) give the COCO results JSON and COCO-style AP through pycocotools
(an optional dependency). See ``docs/evaluation.md`` for the rules.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from ssd.coco import COCO_METRIC_NAMES, coco_metrics, coco_results
from ssd.data.index import DatasetIndex
from ssd.data.voc import continuous_to_voc_pixels, voc_pixels_to_continuous
from ssd.errors import SSDError
from ssd.metrics import (
    DEFAULT_RESULTS_PATTERN,
    APMethod,
    ClassDetections,
    VOCGroundTruth,
    VOCResult,
    evaluate_voc,
    read_results_dir,
    write_results_dir,
)
from ssd.placement import InferencePlacement
from ssd.postprocess import Detections, postprocess
from ssd.settings import DetectSettings

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluate_detector",
    "ground_truth",
    "score_detections",
    "score_detections_dir",
    "write_detections_dir",
    "coco_results",
    "coco_metrics",
    "COCO_METRIC_NAMES",
]  # coco_results, coco_metrics and COCO_METRIC_NAMES live in ssd.coco


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Detections on a dataset split and their VOC score.

    Detections are stored flat, one row per detection, grouped by image in index order and best score
    first within an image (the order :func:`~ssd.postprocess.postprocess` returns; it also breaks exact score
    ties when scoring).

    Attributes:
        voc: per-class AP, mAP and precision/recall curves (devkit rules, :mod:`ssd.metrics`).
        class_names: foreground classes; label ``i`` is ``class_names[i - 1]`` (the index's classes).
        image_ids: the index's image ids, in order; ``det_image_idx`` indexes this tuple.
        det_image_idx: ``(D,)`` int64 image of each detection.
        det_labels: ``(D,)`` int64 labels in ``1..len(class_names)``.
        det_scores: ``(D,)`` float64 confidences.
        det_boxes_xyxy_abs: ``(D, 4)`` float64 continuous pixels of the original image ``[x1, y1, x2, y2]``
            (devkit pixels are ``[x1 + 1, y1 + 1, x2, y2]``).
        num_images: images evaluated (``len(image_ids)``).
        seconds: wall time of the whole evaluation (inference and scoring).
        images_per_second: ``num_images / seconds``.
        settings: the test-time settings used (min_score, max_overlap, top_k, method, device, amp, ...).
        failed: one message per image that could not be read; such an image has no detections, so its
            objects count as missed.
    """

    voc: VOCResult
    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    det_image_idx: NDArray[np.int64]
    det_labels: NDArray[np.int64]
    det_scores: NDArray[np.float64]
    det_boxes_xyxy_abs: NDArray[np.float64]
    num_images: int
    seconds: float
    images_per_second: float
    settings: dict[str, Any] = field(default_factory=dict)
    failed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        img = np.array(self.det_image_idx, dtype=np.int64).reshape(-1)
        labels = np.array(self.det_labels, dtype=np.int64).reshape(-1)
        scores = np.array(self.det_scores, dtype=np.float64).reshape(-1)
        boxes = np.array(self.det_boxes_xyxy_abs, dtype=np.float64).reshape(-1, 4)
        if not (img.shape[0] == labels.shape[0] == scores.shape[0] == boxes.shape[0]):
            raise ValueError("Evaluation: detection arrays differ in length")
        object.__setattr__(self, "det_image_idx", _readonly(img))
        object.__setattr__(self, "det_labels", _readonly(labels))
        object.__setattr__(self, "det_scores", _readonly(scores))
        object.__setattr__(self, "det_boxes_xyxy_abs", _readonly(boxes))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "image_ids", tuple(self.image_ids))
        object.__setattr__(self, "failed", tuple(self.failed))

    @property
    def mAP(self) -> float:
        """The VOC mAP (NaN when no class has a non-difficult object)."""
        return self.voc.mAP

    @property
    def num_detections(self) -> int:
        return int(self.det_scores.shape[0])

    def detections(self) -> list[Detections]:
        """Per image (index order), its detections as tensors, boxes ``xyxy_abs`` continuous pixels."""
        counts = np.bincount(self.det_image_idx, minlength=self.num_images).tolist()
        starts = np.concatenate(([0], np.cumsum(counts)))
        out = []
        for i in range(self.num_images):
            s, e = int(starts[i]), int(starts[i + 1])
            out.append(
                Detections(
                    torch.from_numpy(self.det_boxes_xyxy_abs[s:e].copy()),
                    torch.from_numpy(self.det_labels[s:e].copy()),
                    torch.from_numpy(self.det_scores[s:e].copy()),
                )
            )
        return out

    def class_detections(self) -> dict[int, ClassDetections]:
        """Per label, its detections in devkit pixels, in the stored order (the scorer's input)."""
        return _class_detections(
            self.det_image_idx, self.det_labels, self.det_scores, self.det_boxes_xyxy_abs, len(self.class_names)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``mAP``, ``method``, ``ap`` per class (null where a class has no
        non-difficult object), counts, timing, settings and failures. NaN becomes null."""
        out: dict[str, Any] = dict(self.voc.to_dict())
        out.update(
            {
                "num_images": self.num_images,
                "num_detections": self.num_detections,
                "seconds": _finite_or_none(self.seconds),
                "images_per_second": _finite_or_none(self.images_per_second),
                "settings": dict(self.settings),
                "failed": list(self.failed),
            }
        )
        return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _class_detections(
    image_idx: np.ndarray, labels: np.ndarray, scores: np.ndarray, boxes_xyxy_abs: np.ndarray, num_fg: int
) -> dict[int, ClassDetections]:
    out = {}
    for label in range(1, num_fg + 1):
        sel = labels == label
        out[label] = ClassDetections(image_idx[sel], scores[sel], continuous_to_voc_pixels(boxes_xyxy_abs[sel]))
    return out


def ground_truth(index: DatasetIndex) -> list[VOCGroundTruth]:
    """One :class:`~ssd.metrics.VOCGroundTruth` per image of ``index`` (continuous -> devkit pixels): the objects
    as the annotation writes them (:meth:`~ssd.data.index.ImageRecord.scored_objects`; boxes outside the image or
    inverted included), as the devkit scores them."""
    out = []
    for record in index.images:
        boxes, labels, difficult = record.scored_objects()
        out.append(VOCGroundTruth(continuous_to_voc_pixels(boxes), labels, difficult))
    return out


def _check_method(method: str) -> None:
    if method not in ("voc07", "voc12"):
        raise SSDError(f"method must be voc07 or voc12, not {method!r}")


def _make_evaluation(
    index: DatasetIndex,
    image_idx: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    boxes_xyxy_abs: np.ndarray,
    method: str,
    started: float,
    settings: dict[str, Any],
    failed: Sequence[str] = (),
    by_class: Mapping[int, ClassDetections] | None = None,
) -> Evaluation:
    """Score flat detections (continuous pixels) on ``index``; ``by_class`` (devkit pixels), when given, is
    what is scored instead (results files' boxes as read, without a round trip through continuous pixels)."""
    if by_class is None:
        by_class = _class_detections(image_idx, labels, scores, boxes_xyxy_abs, len(index.classes))
    voc = evaluate_voc(by_class, ground_truth(index), index.classes, method=method)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    n = len(index.images)
    return Evaluation(
        voc=voc,
        class_names=tuple(index.classes),
        image_ids=tuple(r.id for r in index.images),
        det_image_idx=image_idx,
        det_labels=labels,
        det_scores=scores,
        det_boxes_xyxy_abs=boxes_xyxy_abs,
        num_images=n,
        seconds=seconds,
        images_per_second=n / seconds if seconds > 0 else float("nan"),
        settings=settings,
        failed=tuple(failed),
    )


def score_detections(
    detections: Sequence[Detections], index: DatasetIndex, method: APMethod = "voc07"
) -> Evaluation:
    """Score detections already made, one :class:`~ssd.postprocess.Detections` per image of ``index`` (in
    order), boxes ``xyxy_abs`` in continuous pixels of the original image, labels in ``1..len(index.classes)``.

    E.g. ``model.detect(images, image_sizes=...)`` output. Detections are taken in the given order (it
    breaks exact score ties).
    """
    started = time.perf_counter()
    _check_method(method)
    if len(detections) != len(index.images):
        raise SSDError(f"{len(detections)} detection records for {len(index.images)} images")
    counts = [int(d.scores.numel()) for d in detections]
    image_idx = np.repeat(np.arange(len(detections), dtype=np.int64), counts)
    if sum(counts):
        labels = torch.cat([d.labels.reshape(-1) for d in detections]).cpu().numpy().astype(np.int64)
        scores = torch.cat([d.scores.reshape(-1) for d in detections]).cpu().double().numpy()
        boxes = torch.cat([d.boxes.reshape(-1, 4) for d in detections]).cpu().double().numpy()
    else:
        labels, scores, boxes = np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    return _make_evaluation(index, image_idx, labels, scores, boxes, method, started, {"method": method})


def score_detections_dir(
    results_dir: str | Path,
    index: DatasetIndex,
    method: APMethod = "voc07",
    *,
    pattern: str = DEFAULT_RESULTS_PATTERN,
) -> Evaluation:
    """Score devkit results files without a model (``ssd eval --detections DIR``).

    ``results_dir / pattern.format(cls=name)`` holds the detections of class ``name`` (lines ``<image_id>
    <score> <xmin> <ymin> <xmax> <ymax>``, devkit pixels); a missing file means no detections of that class,
    but at least one file must exist. Image ids must be ids of ``index``. Detections are scored in file
    order within a class (it breaks exact score ties), and stored converted to continuous pixels.

    Raises:
        SSDError: when the folder is missing, holds no results file, or a file is malformed (naming the
            file and line).
    """
    started = time.perf_counter()
    _check_method(method)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise SSDError(f"results folder not found: {results_dir}")
    if not any((results_dir / pattern.format(cls=c)).is_file() for c in index.classes):
        example = pattern.format(cls=index.classes[0]) if index.classes else pattern
        raise SSDError(f"{results_dir}: no results files (expected names like {example})")
    image_ids = [r.id for r in index.images]
    by_class = read_results_dir(results_dir, index.classes, image_ids, pattern=pattern)
    parts = [(label, d) for label, d in sorted(by_class.items()) if len(d)]
    if parts:
        image_idx = np.concatenate([d.image_idx for _, d in parts])
        labels = np.concatenate([np.full(len(d), label, dtype=np.int64) for label, d in parts])
        scores = np.concatenate([d.scores for _, d in parts])
        boxes = voc_pixels_to_continuous(np.concatenate([d.boxes for _, d in parts]))
    else:
        image_idx, labels, scores, boxes = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    settings = {"method": method, "results_dir": str(results_dir)}
    return _make_evaluation(index, image_idx, labels, scores, boxes, method, started, settings, by_class=by_class)


def write_detections_dir(
    evaluation: Evaluation,
    results_dir: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    pattern: str = DEFAULT_RESULTS_PATTERN,
) -> list[Path]:
    """Write devkit results files ``comp4_det_test_<class>.txt``: one per class of ``class_names`` (default:
    the evaluation's), lines ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` with 6 decimals, boxes in
    1-based devkit pixels of the original image.

    Within a file, lines are in descending score (a stable sort of the stored order), so reading the files
    back scores the same: file order breaks exact score ties, including ties that 6-decimal rounding makes.
    Returns the paths written.
    """
    names = tuple(evaluation.class_names if class_names is None else class_names)
    label_of = {n: i for i, n in enumerate(evaluation.class_names, start=1)}
    unknown = [n for n in names if n not in label_of]
    if unknown:
        raise SSDError(f"classes not in the evaluation: {', '.join(unknown)}")
    dets = evaluation.class_detections()
    by_class = {}
    for k, name in enumerate(names, start=1):
        d = dets[label_of[name]]
        order = np.argsort(-d.scores, kind="stable")
        by_class[k] = ClassDetections(d.image_idx[order], d.scores[order], d.boxes[order])
    try:
        return write_results_dir(results_dir, by_class, evaluation.image_ids, names, pattern=pattern)
    except OSError as err:
        raise SSDError(f"cannot write results files to {results_dir}: {err.strerror or err}") from err


# --------------------------------------------------------------------------------------------- inference


class _EvalImages(torch.utils.data.Dataset):
    """The images of an index resized for the model, uint8 (3, S, S) (a quarter of float32's bytes through the
    loader; ``/ 255`` on the device gives EvalTransform's values); an unreadable image yields a blank one and its
    error."""

    def __init__(self, index: DatasetIndex, size: int, resize: str = "antialias") -> None:
        from ssd.data.transforms import EvalTransform

        self.index = index
        self.size = size
        self.transform = EvalTransform(size, resize)

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int, tuple[int, int], str | None]:
        from ssd.data.dataset import read_image

        record = self.index.images[i]
        try:
            image = read_image(record.file)
            if image.shape[-2] < 1 or image.shape[-1] < 1:
                raise SSDError(f"{record.file}: empty image")
        except SSDError as e:
            blank = self.transform.resize(torch.zeros(3, 1, 1, dtype=torch.uint8))  # the dtype of the others
            return blank, i, (record.height, record.width), str(e)
        return self.transform.resize(image), i, (record.height, record.width), None


class _EncodedEvalImages(_EvalImages):
    """For decoding on the device: each image as :func:`~ssd.data.gpu_pipeline.read_encoded` gives it (a JPEG's
    bytes, anything else decoded here), with its position, recorded size, file and error."""

    def __getitem__(self, i: int):  # type: ignore[override]
        from ssd.data.gpu_pipeline import read_encoded

        record = self.index.images[i]
        try:
            data, encoded, hw = read_encoded(record.file)
        except SSDError as e:
            data, encoded, hw = torch.zeros(3, 1, 1, dtype=torch.uint8), False, (1, 1)
            return data, encoded, hw, i, (record.height, record.width), record.file, str(e)
        return data, encoded, hw, i, (record.height, record.width), record.file, None


def _collate(items):
    images, idx, sizes, errors = zip(*items)
    return torch.stack(images), torch.tensor(idx, dtype=torch.int64), torch.tensor(sizes, dtype=torch.int64), errors


def _collate_encoded(items):
    return tuple(zip(*items))


def _decoded_on_device(loader, transform, device: torch.device):
    """Batches of :class:`_EncodedEvalImages` decoded (nvJPEG on CUDA) and resized on ``device``, in the form the
    CPU loader gives: (uint8 images (N, 3, S, S), positions, recorded sizes, errors)."""
    from ssd.data.gpu_pipeline import decode_on_device

    for datas, encoded, hws, idx, sizes, files, errors in loader:
        images = decode_on_device(datas, encoded, hws, files, device)
        errors = list(errors)
        resized = []
        for k, image in enumerate(images):
            if errors[k] is None and image is None:
                errors[k] = f"{files[k]}: cannot decode image"
            if errors[k] is not None:
                image = torch.zeros(3, 1, 1, dtype=torch.uint8, device=device)
            resized.append(transform.resize(image))
        yield (torch.stack(resized), torch.tensor(idx, dtype=torch.int64), torch.tensor(sizes, dtype=torch.int64),
               tuple(errors))  # fmt: skip


def _eval_batches(index: DatasetIndex, config, batch_size: int, workers: int, device: torch.device, on_device: bool):
    """(images (N, 3, S, S) in 0-255, uint8 or float as :class:`~ssd.data.transforms.EvalTransform` resizes for the
    model's ``config``, positions, recorded sizes, errors) per batch, decoded by the loader's workers or, with
    ``on_device``, on ``device``."""
    dataset = (_EncodedEvalImages if on_device else _EvalImages)(index, config.image_size, config.input_resize)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate_encoded if on_device else _collate, pin_memory=device.type == "cuda" and not on_device,
    )  # fmt: skip
    return _decoded_on_device(loader, dataset.transform, device) if on_device else iter(loader)


def _label_map(model_classes: Sequence[str], index_classes: Sequence[str]) -> np.ndarray:
    """Model label -> index label (0: a class the index does not have; its detections are dropped)."""
    missing = [c for c in index_classes if c not in model_classes]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SSDError(f"the model does not know {len(missing)} class(es) of the dataset: {shown}")
    position = {c: i for i, c in enumerate(index_classes, start=1)}
    return np.array([0] + [position.get(c, 0) for c in model_classes], dtype=np.int64)


def _check_evaluation_options(settings: DetectSettings, workers: Any) -> None:
    if settings.suppress:
        raise SSDError("suppress is not an evaluation setting: evaluate every class of the index")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SSDError(f"workers must be 0 or more, not {workers!r}")


def _detect_batches(placed: InferencePlacement, batches, settings: DetectSettings, use_amp: bool, bar=None):
    """Per batch of :func:`_eval_batches`: (positions, errors, detections per image in pixels). Iterate it under
    ``torch.inference_mode()``."""
    config = placed.core.config
    for images, idx, sizes, errors in batches:
        images = placed.inputs(images).float().div_(255)
        with torch.autocast(placed.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loc_offsets, cls_logits = placed.model(images)
        dets = postprocess(
            loc_offsets.float(), cls_logits.float(), placed.core.priors_cxcywh, config.decode,
            min_score=settings.min_score, max_overlap=settings.max_overlap, top_k=settings.top_k, image_sizes=sizes,
        )  # fmt: skip
        yield idx, errors, dets
        if bar is not None:
            bar.update(len(idx))


def _flat_detections(results, to_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(image positions, index labels, scores, boxes_xyxy_abs, failures) of every batch's detections, in index
    order and best score first within an image; detections of unreadable images and of classes the index lacks
    are dropped."""
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    failed: list[str] = []
    for idx, errors, dets in results:
        ok = [e is None for e in errors]
        failed += [e for e in errors if e is not None]
        counts = [int(d.scores.shape[0]) if good else 0 for d, good in zip(dets, ok)]
        kept = [d for d, good in zip(dets, ok) if good]
        if sum(counts):
            # One transfer per batch; images within the batch stay in order, best score first.
            boxes = torch.cat([d.boxes for d in kept]).cpu().double().numpy()
            labels = to_index[torch.cat([d.labels for d in kept]).cpu().numpy()]
            scores = torch.cat([d.scores for d in kept]).cpu().double().numpy()
            image_idx = np.repeat(idx.numpy(), counts)
            keep = labels > 0
            chunks.append((image_idx[keep], labels[keep], scores[keep], boxes[keep]))
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)), failed
    image_idx, labels, scores, boxes = (np.concatenate(parts) for parts in zip(*chunks))
    return image_idx, labels.astype(np.int64), scores, boxes, failed


def evaluate(
    model: nn.Module,
    index: DatasetIndex,
    *,
    settings: DetectSettings | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    workers: int = 0,
    method: APMethod = "voc07",
    progress: bool = False,
    decode_on_device: bool | None = None,
    **overrides: Any,
) -> Evaluation:
    """Run ``model`` over the images of ``index`` and score its detections with the devkit's rules.

    index images -> resized uint8 batches -> (model on ``device``, eval mode) forward -> postprocess ->
    detections in original pixels -> VOC scoring -> :class:`Evaluation`.

    Args:
        model: an :class:`~ssd.model.SSD` (also inside DDP or ``torch.compile``). It is placed for the evaluation
            by :class:`~ssd.placement.InferencePlacement` and left as it was (device, modes, memory format).
        index: the split; its classes name the labels of the result. Model classes are matched by name: a
            model class the index lacks is dropped, an index class the model lacks is an error.
        settings: the test-time settings (default :meth:`DetectSettings.for_evaluation`, the paper's:
            min_score 0.01, max_overlap 0.45, top_k 200; batch_size 32 images per forward pass); ``overrides``
            (``min_score=0.2``, ``batch_size=8``, ...) replace some of them.
        device: where to run ("auto", "cpu", "cuda", ...; default: the model's device).
        amp: bf16 autocast (default off: float32, TF32 allowed on CUDA; bf16's effect on mAP has not been measured
            on a trained model, docs/evaluation.md).
        workers: DataLoader worker processes decoding images (0: in this process).
        method: ``"voc07"`` (11-point, the paper's) or ``"voc12"`` (area).
        progress: show progress on stderr (a bar on a terminal, a line every 10 s elsewhere: ssd.progress).
        decode_on_device: decode JPEGs and resize on the evaluation device (nvJPEG on CUDA; the workers only read
            the files). Default: on CUDA, where it is the faster path (docs/performance.md), else in the
            workers. Other formats are decoded by the workers. A GPU's decoder and resize may round a few grey
            levels differently from the CPU's.

    An image that cannot be read gets no detections (its objects count as missed) and a message in
    :attr:`Evaluation.failed`; the others are still evaluated.

    Raises:
        SSDError: for an invalid setting or a class mismatch.
    """
    started = time.perf_counter()
    settings = (settings or DetectSettings.for_evaluation()).replace(**overrides)
    _check_evaluation_options(settings, workers)
    _check_method(method)
    placement = InferencePlacement(model, device)
    config = getattr(placement.core, "config", None)
    if config is None or not hasattr(placement.core, "priors_cxcywh"):
        raise SSDError(f"evaluate() needs an ssd.SSD model, got {type(placement.core).__name__}")
    settings.check_model(config.class_names, config.num_priors)
    to_index = _label_map(config.class_names, index.classes)
    run_on = placement.device
    use_amp = bool(amp) and run_on.type == "cuda"
    on_device = run_on.type == "cuda" if decode_on_device is None else bool(decode_on_device)
    batches = _eval_batches(index, config, settings.batch_size, workers, run_on, on_device)
    bar = None
    if progress:
        from ssd.progress import progress as progress_bar

        bar = progress_bar(len(index.images), f"evaluating {index.name}", "img", leave=False)
    try:
        with placement as placed, torch.inference_mode():
            image_idx, labels, scores, boxes, failed = _flat_detections(
                _detect_batches(placed, batches, settings, use_amp, bar), to_index
            )
    finally:
        if bar is not None:
            bar.close()
    echoed = {
        "min_score": settings.min_score, "max_overlap": settings.max_overlap, "top_k": settings.top_k,
        "method": method, "batch_size": settings.batch_size, "device": str(run_on), "amp": "bf16" if use_amp else None,
        "image_size": int(config.image_size), "preset": getattr(config, "preset", None), "decode_on_device": on_device,
    }  # fmt: skip
    return _make_evaluation(index, image_idx, labels, scores, boxes, method, started, echoed, failed)


def evaluate_detector(
    detector,
    index: DatasetIndex,
    *,
    settings: DetectSettings | None = None,
    method: APMethod = "voc07",
    progress: bool = False,
) -> Evaluation:
    """Score a :class:`~ssd.detector.Detector` on ``index`` (``ssd eval --onnx``: an exported or quantized model).

    index images -> Detector.prepare (read, resize as ``ssd detect`` does) -> run_batch -> finish (``settings``,
    default the paper's test settings) -> VOC scoring. Images that cannot be read count as missed, as in
    :func:`evaluate`, with a message in :attr:`Evaluation.failed`.
    """
    started = time.perf_counter()
    _check_method(method)
    settings = detector.checked(settings or DetectSettings.for_evaluation())
    to_index = _label_map(detector.class_names, index.classes)
    chunks: list[tuple[np.ndarray, ...]] = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))]
    failed: list[str] = []
    from ssd.progress import progress as progress_bar

    with progress_bar(len(index.images), f"evaluating {index.name}", "img", enabled=progress, leave=False) as bar:
        for start in range(0, len(index.images), settings.batch_size):
            prepared, positions = [], []
            for pos, record in enumerate(index.images[start : start + settings.batch_size], start=start):
                try:
                    prepared.append(detector.prepare(record.file, record.id))
                    positions.append(pos)
                except SSDError as err:
                    failed.append(str(err))
            results = detector.finish(detector.run_batch(prepared), prepared, settings, clip=False) if prepared else []
            for pos, dets in zip(positions, results):
                labels = to_index[dets.labels]
                keep = labels > 0
                chunks.append((np.full(int(keep.sum()), pos, np.int64), labels[keep],
                               dets.scores[keep].astype(np.float64), dets.boxes[keep].astype(np.float64)))  # fmt: skip
            bar.update(len(index.images[start : start + settings.batch_size]))
    image_idx, labels, scores, boxes = (np.concatenate(parts) for parts in zip(*chunks))
    echoed = {"min_score": settings.min_score, "max_overlap": settings.max_overlap, "top_k": settings.top_k,
              "method": method, "batch_size": settings.batch_size, "backend": detector.backend}  # fmt: skip
    return _make_evaluation(index, image_idx, labels, scores, boxes, method, started, echoed, failed)
