"""COCO exchange and scoring of an evaluation: the COCO results JSON, and COCO-style AP through pycocotools.

::

    Evaluation (detections in continuous pixels, ssd.evaluate) -> coco_results -> [{"image_id", "category_id",
        "bbox": [x, y, w, h], "score"}]
    Evaluation + DatasetIndex (or a COCO annotation file) -> coco_metrics -> {"AP", "AP50", ..., "ARl"}

pycocotools is an optional dependency, imported when a score is asked for.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ssd.data.index import DatasetIndex
from ssd.errors import SSDError

if TYPE_CHECKING:
    from ssd.evaluate import Evaluation

__all__ = ["COCO_METRIC_NAMES", "coco_metrics", "coco_results", "import_pycocotools"]

COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
"""Names of pycocotools' ``COCOeval.stats``, in order (AP@[.5:.95], AP@.5, AP@.75, by area, then recalls)."""


def _coco_image_id(image_id: str) -> int | str:
    """COCO ids are integers: an all-digit id becomes its integer, anything else stays a string."""
    return int(image_id) if image_id.isdigit() else image_id


def _category_ids(class_names: Sequence[str], category_ids: Mapping[str, int] | Sequence[int] | None) -> list[int]:
    if category_ids is None:
        return list(range(1, len(class_names) + 1))
    if isinstance(category_ids, Mapping):
        missing = [c for c in class_names if c not in category_ids]
        if missing:
            raise SSDError(f"no COCO category id for class(es) {', '.join(missing)}")
        return [int(category_ids[c]) for c in class_names]
    ids = [int(c) for c in category_ids]
    if len(ids) != len(class_names):
        raise SSDError(f"{len(ids)} category ids for {len(class_names)} classes")
    return ids


def _top_per_image(evaluation: Evaluation, max_per_image: int | None) -> np.ndarray:
    """Indices of the detections kept when only the best ``max_per_image`` of each image count."""
    n = evaluation.num_detections
    if max_per_image is None:
        return np.arange(n)
    if max_per_image < 1:
        raise SSDError(f"max_per_image must be positive, not {max_per_image}")
    order = np.lexsort((-evaluation.det_scores, evaluation.det_image_idx))  # by image, then best score
    img = evaluation.det_image_idx[order]
    starts = np.searchsorted(img, img, side="left")
    rank = np.arange(n) - starts
    return np.sort(order[rank < max_per_image])


def _coco_dets(
    evaluation: Evaluation, image_ids: Sequence[Any], cat_ids: Sequence[int], max_per_image: int | None
) -> list[dict[str, Any]]:
    keep = _top_per_image(evaluation, max_per_image)
    boxes = evaluation.det_boxes_xyxy_abs[keep]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {"image_id": image_ids[i], "category_id": cat_ids[label - 1], "bbox": [round(v, 4) for v in b],
         "score": round(s, 6)}  # fmt: skip
        for i, label, b, s in zip(
            evaluation.det_image_idx[keep].tolist(), evaluation.det_labels[keep].tolist(), xywh.tolist(),
            evaluation.det_scores[keep].tolist(),
        )  # fmt: skip
    ]


def coco_results(
    evaluation: Evaluation,
    index: DatasetIndex | None = None,
    *,
    category_ids: Mapping[str, int] | Sequence[int] | None = None,
    max_per_image: int | None = 100,
) -> list[dict[str, Any]]:
    """The detections as a COCO results list: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    with ``bbox`` in continuous pixels of the original image (COCO's own convention).

    Image ids are the index's, as integers where they are all digits (COCO indexes store COCO's integer ids).
    ``category_ids`` maps class names (or gives, per label) COCO category ids; default: the labels 1..K.
    Only the ``max_per_image`` best detections of each image are kept (COCO's limit is 100; ``None``: all).
    ``index``, if given, must be the evaluated one (its image ids are checked).
    """
    if index is not None and tuple(r.id for r in index.images) != evaluation.image_ids:
        raise SSDError(f"the index {index.name!r} is not the one evaluated (its image ids differ)")
    image_ids = [_coco_image_id(i) for i in evaluation.image_ids]
    return _coco_dets(evaluation, image_ids, _category_ids(evaluation.class_names, category_ids), max_per_image)


def import_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise SSDError(
            "COCO-style AP needs pycocotools: pip install pycocotools (or pip install 'ssd-detector[eval]')"
        ) from err
    return COCO, COCOeval


def _coco_from(COCO, dataset: dict[str, Any]):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    evaluation: Evaluation,
    index: DatasetIndex,
    *,
    annotation_file: str | Path | None = None,
    max_per_image: int | None = 100,
) -> dict[str, float | None]:
    """COCO-style AP through pycocotools: ``AP`` (IoU .50:.05:.95), ``AP50``, ``AP75``, ``APs``/``APm``/``APl``
    (by object area), and the recalls ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``
    (:data:`COCO_METRIC_NAMES`). A value pycocotools cannot compute (no object in an area range) is ``None``.

    Ground truth: ``annotation_file`` (a COCO JSON; the index must have been built from it, its image ids and
    class names are matched to the file's), or else the index itself: boxes as ``[x, y, w, h]``, area = box
    area, and **difficult objects as** ``iscrowd=1``, the only way pycocotools ignores an object. That also
    changes matching: a crowd region is tried only after every normal object, may absorb any number of
    detections (all ignored), and its overlap is intersection over the *detection's* area.

    Detections: only the ``max_per_image`` best of each image (COCO counts at most 100 per image; pycocotools
    alone would cap per image *and class*). ``None`` hands all of them over.
    """
    COCO, COCOeval = import_pycocotools()
    if tuple(r.id for r in index.images) != evaluation.image_ids:
        raise SSDError(f"the index {index.name!r} is not the one evaluated (its image ids differ)")
    if annotation_file is not None:
        path = Path(annotation_file)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                gt = COCO(str(path))
        except FileNotFoundError as err:
            raise SSDError(f"COCO annotation file not found: {path}") from err
        except Exception as err:  # malformed JSON or structure
            raise SSDError(f"{path}: cannot read COCO annotations: {type(err).__name__}: {err}") from err
        by_str = {str(img["id"]): img["id"] for img in gt.dataset.get("images", [])}
        unknown = [i for i in evaluation.image_ids if i not in by_str]
        if unknown:
            raise SSDError(f"{path}: image id {unknown[0]!r} of the index is not in the file")
        image_ids = [by_str[i] for i in evaluation.image_ids]
        cat_of_name = {c["name"]: c["id"] for c in gt.dataset.get("categories", [])}
        cat_ids = _category_ids(evaluation.class_names, cat_of_name)
    else:
        image_ids = list(range(1, len(index.images) + 1))
        cat_ids = list(range(1, len(index.classes) + 1))
        annotations = []
        for img_id, r in zip(image_ids, index.images):
            b = np.asarray(r.boxes_xyxy_abs, dtype=np.float64).reshape(-1, 4)
            for box, label, difficult in zip(b.tolist(), r.labels.tolist(), r.difficult.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": img_id, "category_id": int(label),
                     "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(bool(difficult))}  # fmt: skip
                )
        gt = _coco_from(
            COCO,
            {
                "images": [{"id": i, "width": r.width, "height": r.height} for i, r in zip(image_ids, index.images)],
                "categories": [{"id": k, "name": c} for k, c in zip(cat_ids, index.classes)],
                "annotations": annotations,
            },
        )
    dets = _coco_dets(evaluation, image_ids, cat_ids, max_per_image)
    for k, d in enumerate(dets, start=1):
        d["id"] = k
        d["area"] = d["bbox"][2] * d["bbox"][3]
        d["iscrowd"] = 0
    dt = _coco_from(
        COCO,
        {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": dets},
    )
    coco_eval = COCOeval(gt, dt, "bbox")
    coco_eval.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: (float(v) if v > -1 else None) for name, v in zip(COCO_METRIC_NAMES, coco_eval.stats.tolist())}
