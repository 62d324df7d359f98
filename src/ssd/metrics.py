"""Pascal VOC detection average precision with the official devkit's semantics (``VOCevaldet.m``).

Pure numpy (float64); no torch. All boxes here are **devkit pixels**: 1-based inclusive ``[xmin, ymin, xmax,
ymax]`` as in VOC XML and in devkit results files. Convert continuous model boxes with
:func:`ssd.data.voc.continuous_to_voc_pixels` first (see :mod:`ssd.data.voc` for the convention).

Rules (reproduced exactly, per class):

1. **Overlap** with the +1 pixel convention: ``iw = min(dx2, gx2) - max(dx1, gx1) + 1``, ``ih`` likewise; an
   object overlaps only where ``iw > 0 and ih > 0``; ``union = (dx2-dx1+1)(dy2-dy1+1) + (gx2-gx1+1)(gy2-gy1+1)
   - iw*ih``; ``IoU = iw*ih / union``.
2. **Order**: detections in descending score, ties in file (input) order: a stable sort.
3. **Assignment**: each detection takes the object of its class in its image with the highest IoU among *all*
   of them, difficult ones included (the first on equal IoU). If that IoU >= the threshold (0.5):
   a difficult object -> the detection is *ignored* (neither TP nor FP); an unmatched object -> true positive,
   and the object becomes matched; an already matched object -> false positive (no fall-back to another
   object). Otherwise (no overlap, or IoU below the threshold) -> false positive.
4. **Curve**: positives ``npos`` count non-difficult objects only; ``recall = cumsum(tp) / npos``,
   ``precision = cumsum(tp) / (cumsum(tp) + cumsum(fp))``. Ignored detections add to neither sum. (The devkit
   keeps them as repeated points of the curve, or 0/0 before the first TP/FP; dropping them, as done here, gives
   the same AP, and recall/precision arrays with one point per TP or FP.)
5. **AP**: ``voc07`` is 11-point interpolation: for ``t`` in MATLAB's ``0:0.1:1``
   (:data:`VOC07_RECALL_THRESHOLDS`, written out literally: ``numpy.arange`` gives different doubles at 0.6 and
   0.7), ``p(t) = max(precision[recall >= t])`` or 0 if there is none, and ``AP = sum(p(t) / 11)`` accumulated
   in threshold order as the devkit does. ``voc12`` is the area under the monotone precision envelope:
   ``mrec = [0, rec, 1]``, ``mpre = [0, prec, 0]``, ``mpre[i] = max(mpre[i], mpre[i+1])`` from the end, then
   ``AP = sum((mrec[i+1] - mrec[i]) * mpre[i+1])`` over the ``i`` where ``mrec`` changes.
6. A class with no non-difficult object has AP ``None`` (JSON null) and is left out of the mean; a class with
   positives but no detections has AP 0.

The matching is vectorised: since an assignment never falls back to another object, a detection is a TP exactly
when it is the first (in score order) of the non-ignored detections with IoU >= threshold whose best object is a
given non-difficult object. Scoring a million detections takes about a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ssd.errors import SSDError

__all__ = [
    "VOC07_RECALL_THRESHOLDS",
    "APMethod",
    "VOCGroundTruth",
    "ClassDetections",
    "MatchResult",
    "PRCurve",
    "VOCResult",
    "match_detections",
    "precision_recall",
    "average_precision",
    "voc_ap_per_class",
    "evaluate_voc",
    "read_results_dir",
    "write_results_dir",
]

APMethod = Literal["voc07", "voc12"]

#: MATLAB's ``0:0.1:1`` as doubles (``numpy.arange(0, 1.1, 0.1)`` differs at 0.6 and 0.7).
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
)  # fmt: skip

DEFAULT_RESULTS_PATTERN = "comp4_det_test_{cls}.txt"


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _boxes_array(boxes: ArrayLike, n: int | None, what: str) -> NDArray[np.float64]:
    arr = np.array(boxes, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or (n is not None and arr.shape[0] != n):
        expected = f"({n}, 4)" if n is not None else "(N, 4)"
        raise ValueError(f"{what} must have shape {expected}, got {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class VOCGroundTruth:
    """Ground truth of one image.

    Attributes:
        boxes: ``(M, 4)`` float64 devkit pixels (1-based inclusive ``[xmin, ymin, xmax, ymax]``).
        labels: ``(M,)`` int64 class labels in ``1..num_classes-1`` (0 is background).
        difficult: ``(M,)`` bool difficult flags.
    """

    boxes: NDArray[np.float64]
    labels: NDArray[np.int64]
    difficult: NDArray[np.bool_]

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        boxes = _boxes_array(self.boxes, labels.shape[0], "VOCGroundTruth.boxes")
        difficult = np.array(self.difficult, dtype=bool).reshape(-1)
        if difficult.shape[0] != labels.shape[0]:
            raise ValueError(f"VOCGroundTruth: {labels.shape[0]} labels but {difficult.shape[0]} difficult flags")
        object.__setattr__(self, "boxes", _readonly(boxes))
        object.__setattr__(self, "labels", _readonly(labels))
        object.__setattr__(self, "difficult", _readonly(difficult))

    @classmethod
    def from_annotation(cls, annotation: object, class_names: Sequence[str]) -> VOCGroundTruth:
        """Build from an :class:`ssd.data.voc.VOCAnnotation` (continuous boxes -> devkit pixels).

        ``class_names`` are the foreground names; object name ``class_names[i]`` gets label ``i + 1``.
        Raises SSDError on an object whose name is not in ``class_names``.
        """
        from ssd.data.voc import VOCAnnotation, continuous_to_voc_pixels

        if not isinstance(annotation, VOCAnnotation):
            raise TypeError(f"expected a VOCAnnotation, got {type(annotation).__name__}")
        index = {name: i + 1 for i, name in enumerate(class_names)}
        unknown = sorted({n for n in annotation.names if n not in index})
        if unknown:
            raise SSDError(f"image {annotation.image_id}: unknown class name(s) {', '.join(unknown)}")
        return cls(
            boxes=continuous_to_voc_pixels(annotation.boxes_xyxy_abs),
            labels=np.array([index[n] for n in annotation.names], dtype=np.int64),
            difficult=annotation.difficult,
        )


@dataclass(frozen=True, eq=False)
class ClassDetections:
    """All detections of one class over a dataset, in file (input) order, which breaks score ties.

    Attributes:
        image_idx: ``(D,)`` int64 index of each detection's image in the ground-truth list.
        scores: ``(D,)`` float64 confidences.
        boxes: ``(D, 4)`` float64 devkit pixels (1-based inclusive ``[xmin, ymin, xmax, ymax]``).
    """

    image_idx: NDArray[np.int64]
    scores: NDArray[np.float64]
    boxes: NDArray[np.float64]

    def __post_init__(self) -> None:
        image_idx = np.array(self.image_idx, dtype=np.int64).reshape(-1)
        scores = np.array(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != image_idx.shape[0]:
            raise ValueError(f"ClassDetections: {image_idx.shape[0]} image indices but {scores.shape[0]} scores")
        boxes = _boxes_array(self.boxes, image_idx.shape[0], "ClassDetections.boxes")
        object.__setattr__(self, "image_idx", _readonly(image_idx))
        object.__setattr__(self, "scores", _readonly(scores))
        object.__setattr__(self, "boxes", _readonly(boxes))

    @classmethod
    def empty(cls) -> ClassDetections:
        """No detections."""
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))

    def __len__(self) -> int:
        return int(self.image_idx.shape[0])


DetectionsLike = Union[ClassDetections, tuple[ArrayLike, ArrayLike, ArrayLike]]


def _as_class_detections(dets: DetectionsLike) -> ClassDetections:
    if isinstance(dets, ClassDetections):
        return dets
    image_idx, scores, boxes = dets
    return ClassDetections(image_idx, scores, boxes)


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Devkit assignment of one class's detections, in scoring order (descending score, stable).

    Attributes:
        order: ``(D,)`` indices into the input detections giving the scoring order.
        tp, fp, ignored: ``(D,)`` bool per detection in scoring order; exactly one is true for each.
        npos: number of non-difficult objects of the class.
    """

    order: NDArray[np.int64]
    tp: NDArray[np.bool_]
    fp: NDArray[np.bool_]
    ignored: NDArray[np.bool_]
    npos: int


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Precision/recall after each counted (TP or FP) detection in scoring order; ignored ones are left out.

    Attributes:
        recall, precision: ``(K,)`` float64.
        scores: ``(K,)`` float64 score of the detection at each point (the threshold reaching it).
    """

    recall: NDArray[np.float64]
    precision: NDArray[np.float64]
    scores: NDArray[np.float64]


@dataclass(frozen=True)
class VOCResult:
    """VOC scores.

    Attributes:
        ap: per class name, the AP, or ``None`` for a class without non-difficult objects.
        mAP: mean over the classes whose AP is not ``None`` (NaN when there is none).
        method: ``"voc07"`` or ``"voc12"``.
        iou_threshold: the overlap threshold used (0.5 in VOC).
        curves: per class name with positives, its :class:`PRCurve`.
    """

    ap: dict[str, float | None]
    mAP: float
    method: str
    iou_threshold: float = 0.5
    curves: dict[str, PRCurve] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready ``{"method", "iou_threshold", "mAP", "ap": {class: AP or None}}`` (NaN mAP -> None)."""
        return {
            "method": self.method,
            "iou_threshold": self.iou_threshold,
            "mAP": None if math.isnan(self.mAP) else self.mAP,
            "ap": dict(self.ap),
        }


def _check_method(method: str) -> None:
    if method not in ("voc07", "voc12"):
        raise SSDError(f"unknown AP method {method!r}; expected 'voc07' or 'voc12'")


def match_detections(
    det_image_idx: ArrayLike,
    det_scores: ArrayLike,
    det_boxes: ArrayLike,
    gt_image_idx: ArrayLike,
    gt_boxes: ArrayLike,
    gt_difficult: ArrayLike,
    iou_threshold: float = 0.5,
) -> MatchResult:
    """Assign one class's detections to its objects with the devkit's rules (module docstring, rules 1-3).

    Args:
        det_image_idx: ``(D,)`` image index of each detection.
        det_scores: ``(D,)`` scores; input order breaks ties.
        det_boxes: ``(D, 4)`` devkit pixels ``[xmin, ymin, xmax, ymax]``.
        gt_image_idx: ``(G,)`` image index of each object of the class; objects of one image are compared in
            their order in these arrays (it decides equal-IoU ties).
        gt_boxes: ``(G, 4)`` devkit pixels.
        gt_difficult: ``(G,)`` difficult flags.
        iou_threshold: minimum IoU (inclusive) for a match.
    """
    d_img = np.asarray(det_image_idx, dtype=np.int64).reshape(-1)
    d_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    d_boxes = _boxes_array(det_boxes, d_img.shape[0], "det_boxes")
    g_img = np.asarray(gt_image_idx, dtype=np.int64).reshape(-1)
    g_boxes = _boxes_array(gt_boxes, g_img.shape[0], "gt_boxes")
    g_diff = np.asarray(gt_difficult, dtype=bool).reshape(-1)
    if d_scores.shape[0] != d_img.shape[0] or g_diff.shape[0] != g_img.shape[0]:
        raise ValueError("match_detections: array lengths disagree")
    npos = int(np.count_nonzero(~g_diff))
    n_det = d_img.shape[0]

    order = np.argsort(-d_scores, kind="stable")
    d_img = d_img[order]
    d_boxes = d_boxes[order]

    # Objects grouped by image, keeping their relative order within an image.
    g_perm = np.argsort(g_img, kind="stable")
    g_img, g_boxes, g_diff = g_img[g_perm], g_boxes[g_perm], g_diff[g_perm]
    n_img = int(max(d_img.max(initial=-1), g_img.max(initial=-1))) + 1
    if (d_img.size and d_img.min() < 0) or (g_img.size and g_img.min() < 0):
        raise ValueError("match_detections: negative image index")
    g_count = np.bincount(g_img, minlength=n_img)
    g_start = np.cumsum(g_count) - g_count

    # Every (detection, object of the same image) pair, grouped by detection, objects in order.
    per_det = g_count[d_img]
    n_pairs = int(per_det.sum())
    pair_det = np.repeat(np.arange(n_det), per_det)
    seg_start = np.cumsum(per_det) - per_det
    pair_obj = np.repeat(g_start[d_img] - seg_start, per_det) + np.arange(n_pairs)

    iou = _devkit_iou(d_boxes[pair_det], g_boxes[pair_obj])

    # Per detection: the best IoU and the first object reaching it.
    ovmax = np.full(n_det, -np.inf)
    best_obj = np.full(n_det, -1, dtype=np.int64)
    has = per_det > 0
    if n_pairs:
        seg_max = np.maximum.reduceat(iou, seg_start[has])
        ovmax[has] = seg_max
        at_max = np.flatnonzero(iou == np.repeat(ovmax, per_det))
        first_det, first_pos = np.unique(pair_det[at_max], return_index=True)
        best_obj[first_det] = pair_obj[at_max[first_pos]]

    hit = ovmax >= iou_threshold
    ignored = hit & g_diff[np.where(hit, best_obj, 0)] if g_img.size else np.zeros(n_det, bool)
    candidate = np.flatnonzero(hit & ~ignored)
    tp = np.zeros(n_det, dtype=bool)
    _, first = np.unique(best_obj[candidate], return_index=True)
    tp[candidate[first]] = True
    fp = ~tp & ~ignored
    return MatchResult(order=order, tp=tp, fp=fp, ignored=ignored, npos=npos)


def _devkit_iou(db: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """The IoU of row-paired boxes ``(K, 4)`` in devkit pixels (inclusive ends: ``+ 1``), ``-inf`` where they do not
    overlap (rule 2)."""
    iw = np.minimum(db[:, 2], gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0]) + 1.0
    ih = np.minimum(db[:, 3], gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1]) + 1.0
    inter = iw * ih
    union = (db[:, 2] - db[:, 0] + 1.0) * (db[:, 3] - db[:, 1] + 1.0) + (
        (gb[:, 2] - gb[:, 0] + 1.0) * (gb[:, 3] - gb[:, 1] + 1.0)
    ) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / union, -np.inf)


def precision_recall(match: MatchResult, det_scores: ArrayLike) -> PRCurve:
    """The precision/recall curve of a :class:`MatchResult` (rule 4). ``npos`` must be positive.

    ``det_scores`` are the scores in *input* order (the same array given to :func:`match_detections`).
    """
    if match.npos <= 0:
        raise ValueError("precision_recall: the class has no non-difficult object")
    counted = ~match.ignored
    tp = np.cumsum(match.tp[counted], dtype=np.float64)
    fp = np.cumsum(match.fp[counted], dtype=np.float64)
    recall = tp / float(match.npos)
    precision = tp / (tp + fp)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)[match.order][counted]
    return PRCurve(recall=_readonly(recall), precision=_readonly(precision), scores=_readonly(scores))


def average_precision(recall: ArrayLike, precision: ArrayLike, method: APMethod = "voc07") -> float:
    """AP of a curve (rule 5): ``voc07`` 11-point interpolation or ``voc12`` area under the envelope.

    ``recall`` must be non-decreasing (as any cumulative curve is). An empty curve has AP 0.
    """
    _check_method(method)
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall {rec.shape} and precision {prec.shape} differ in shape")
    if method == "voc07":
        # max(prec[rec >= t]) = suffix maximum from the first index with rec >= t.
        suffix_max = np.maximum.accumulate(prec[::-1])[::-1]
        first = np.searchsorted(rec, np.array(VOC07_RECALL_THRESHOLDS), side="left")
        ap = 0.0
        for i in first.tolist():
            p = float(suffix_max[i]) if i < rec.size else 0.0
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[change] - mrec[change - 1]) * mpre[change]))


def voc_ap_per_class(
    det_image_idx: ArrayLike,
    det_scores: ArrayLike,
    det_boxes: ArrayLike,
    gt_image_idx: ArrayLike,
    gt_boxes: ArrayLike,
    gt_difficult: ArrayLike,
    method: APMethod = "voc07",
    iou_threshold: float = 0.5,
) -> float | None:
    """One class's AP (``None`` if it has no non-difficult object). Arguments as :func:`match_detections`;
    boxes in devkit pixels."""
    _check_method(method)
    match = match_detections(
        det_image_idx, det_scores, det_boxes, gt_image_idx, gt_boxes, gt_difficult, iou_threshold
    )
    if match.npos == 0:
        return None
    curve = precision_recall(match, det_scores)
    return average_precision(curve.recall, curve.precision, method)


def evaluate_voc(
    detections_by_class: Mapping[int, DetectionsLike],
    ground_truth: Sequence[VOCGroundTruth],
    class_names: Sequence[str],
    method: APMethod = "voc07",
    iou_threshold: float = 0.5,
) -> VOCResult:
    """Score detections on a dataset with the devkit's rules.

    Args:
        detections_by_class: label (``1..len(class_names)``) -> :class:`ClassDetections` or a tuple
            ``(image_idx (D,), scores (D,), boxes (D, 4) devkit pixels)``; a missing label has no detections.
        ground_truth: one :class:`VOCGroundTruth` per image; detections' ``image_idx`` index this list.
        class_names: foreground class names; label ``i`` is ``class_names[i - 1]``.
        method: ``"voc07"`` (11-point) or ``"voc12"`` (area).
        iou_threshold: minimum IoU for a match (0.5 in VOC).

    Raises:
        SSDError: on an unknown method, a label outside ``1..len(class_names)``, or an image index outside
            the ground-truth list.
    """
    _check_method(method)
    num_fg = len(class_names)
    n_img = len(ground_truth)
    for label in detections_by_class:
        if not 1 <= int(label) <= num_fg:
            raise SSDError(f"detections for label {label}, outside 1..{num_fg}")

    if n_img:
        counts = np.array([gt.labels.shape[0] for gt in ground_truth], dtype=np.int64)
        all_img = np.repeat(np.arange(n_img), counts)
        all_boxes = np.concatenate([gt.boxes for gt in ground_truth])
        all_labels = np.concatenate([gt.labels for gt in ground_truth])
        all_diff = np.concatenate([gt.difficult for gt in ground_truth])
    else:
        all_img, all_boxes = np.zeros(0, np.int64), np.zeros((0, 4))
        all_labels, all_diff = np.zeros(0, np.int64), np.zeros(0, bool)
    bad = (all_labels < 1) | (all_labels > num_fg)
    if bad.any():
        raise SSDError(f"ground-truth label {int(all_labels[bad][0])} outside 1..{num_fg}")

    ap: dict[str, float | None] = {}
    curves: dict[str, PRCurve] = {}
    for label, name in enumerate(class_names, start=1):
        raw = detections_by_class.get(label)
        dets = ClassDetections.empty() if raw is None else _as_class_detections(raw)
        if len(dets) and (dets.image_idx.min() < 0 or dets.image_idx.max() >= n_img):
            raise SSDError(f"class {name}: detection image index outside 0..{n_img - 1}")
        sel = all_labels == label
        match = match_detections(
            dets.image_idx, dets.scores, dets.boxes, all_img[sel], all_boxes[sel], all_diff[sel], iou_threshold
        )
        if match.npos == 0:
            ap[name] = None
            continue
        curve = precision_recall(match, dets.scores)
        curves[name] = curve
        ap[name] = average_precision(curve.recall, curve.precision, method)

    scored = [v for v in ap.values() if v is not None]
    mean = float(np.mean(scored)) if scored else float("nan")
    return VOCResult(ap=ap, mAP=mean, method=method, iou_threshold=iou_threshold, curves=curves)


def read_results_dir(
    results_dir: str | Path,
    class_names: Sequence[str],
    image_ids: Sequence[str],
    pattern: str = DEFAULT_RESULTS_PATTERN,
) -> dict[int, ClassDetections]:
    """Read devkit results files, one per class: lines ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>``.

    The file of class ``class_names[i]`` (label ``i + 1``) is ``results_dir / pattern.format(cls=name)``; a
    missing file means no detections. Blank lines are skipped; line order is kept (it breaks score ties).
    Boxes are devkit pixels, as written.

    Raises:
        SSDError: naming the file and line number, for a line without 6 fields, a field that is not a number,
            or an image id not in ``image_ids``.
    """
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    out: dict[int, ClassDetections] = {}
    for label, name in enumerate(class_names, start=1):
        path = Path(results_dir) / pattern.format(cls=name)
        if not path.is_file():
            out[label] = ClassDetections.empty()
            continue
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SSDError(f"{path}: cannot read results file: {exc}") from exc
        img: list[int] = []
        values: list[list[float]] = []
        for lineno, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise SSDError(
                    f"{path}, line {lineno}: expected '<image_id> <score> <xmin> <ymin> <xmax> <ymax>', "
                    f"got {len(fields)} field(s)"
                )
            i = index.get(fields[0])
            if i is None:
                raise SSDError(f"{path}, line {lineno}: unknown image id {fields[0]!r}")
            try:
                values.append([float(v) for v in fields[1:]])
            except ValueError:
                raise SSDError(f"{path}, line {lineno}: a score or coordinate is not a number") from None
            img.append(i)
        arr = np.array(values, dtype=np.float64).reshape(-1, 5)
        out[label] = ClassDetections(np.array(img, dtype=np.int64), arr[:, 0], arr[:, 1:])
    return out


def write_results_dir(
    results_dir: str | Path,
    detections_by_class: Mapping[int, DetectionsLike],
    image_ids: Sequence[str],
    class_names: Sequence[str],
    pattern: str = DEFAULT_RESULTS_PATTERN,
) -> list[Path]:
    """Write devkit results files (one per class in ``class_names``, empty when it has no detections).

    Lines are ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` with 6 decimals, boxes in devkit pixels, in
    the detections' order. Creates ``results_dir`` if needed; returns the paths written.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for label, name in enumerate(class_names, start=1):
        raw = detections_by_class.get(label)
        dets = ClassDetections.empty() if raw is None else _as_class_detections(raw)
        path = results_dir / pattern.format(cls=name)
        lines = [
            f"{image_ids[i]} {s:.6f} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}\n"
            for i, s, b in zip(dets.image_idx.tolist(), dets.scores.tolist(), dets.boxes.tolist())
        ]
        path.write_text("".join(lines))
        written.append(path)
    return written
