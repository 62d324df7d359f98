"""How much the tutorial's ``calculate_mAP`` rules change a VOC mAP, measured on the devkit goldens.

    PYTHONPATH=src python bench/tutorial_vs_devkit_map.py            # vocmini_test and edge_cases goldens

The goldens in ``../shared/reference/goldens/voc_devkit`` are devkit results files with their expected scores
(official devkit rules). This script scores them three ways:

1. with the library (``ssd.evaluate.score_detections_dir``, devkit rules), checked against ``expected.json``;
2. with :func:`tutorial_map`, a re-implementation of the tutorial's ``calculate_mAP`` (its ``utils.py``) in its
   own terms: torch float32, fractional boxes with the tutorial's ``XML - 1`` coordinates, IoU without the +1
   pixel, a match only when IoU ``> 0.5``, ``torch.sort`` (not stable) on the scores, recall thresholds
   ``torch.arange(0, 1.1, 0.1)`` in float32, ``+ 1e-10`` in the precision's denominator, and AP 0 counted in
   the mean for a class without non-difficult objects;
3. with each of those differences alone switched on in an otherwise devkit scorer, to attribute the change.

It lives here, not in the library: the tutorial's rules are a thing to measure, not to offer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ssd.config import VOC_CLASSES
from ssd.data.index import DatasetIndex, build_voc_index
from ssd.data.voc import continuous_to_voc_pixels
from ssd.evaluate import score_detections_dir
from ssd.metrics import VOC07_RECALL_THRESHOLDS, read_results_dir

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT.parent / "shared" / "reference" / "goldens" / "voc_devkit"
CASES = {
    "vocmini_test": ROOT.parent / "shared" / "data" / "VOCmini" / "VOCdevkit" / "VOC2007",
    "edge_cases": GOLDENS / "edge_cases" / "VOC2007",
}


@dataclass(frozen=True)
class Rules:
    """Each field: the devkit's choice (True) or the tutorial's (False)."""

    plus_one: bool = True  # devkit: +1 in widths/heights/areas, pixel frame; tutorial: none, fractional frame
    at_least: bool = True  # devkit: IoU >= 0.5; tutorial: IoU > 0.5
    float64: bool = True  # devkit: doubles, MATLAB's 0:0.1:1; tutorial: float32 and torch.arange(0, 1.1, 0.1)
    stable: bool = True  # devkit: ties in file order; tutorial: torch.sort(descending=True), not stable
    null_classes: bool = True  # devkit: no AP (left out of the mean); tutorial: AP 0, in the mean


DEVKIT = Rules()
TUTORIAL = Rules(False, False, False, False, False)


def tutorial_map(index: DatasetIndex, results_dir: Path, rules: Rules = TUTORIAL) -> tuple[float, dict[str, float | None]]:
    """mAP and per-class AP of devkit results files under ``rules`` (the tutorial's loop, per detection)."""
    dtype = torch.float64 if rules.float64 else torch.float32
    image_ids = [r.id for r in index.images]
    by_class = read_results_dir(results_dir, index.classes, image_ids)
    # Per image: (w, h, w, h) for the tutorial's fractional frame.
    dims = torch.tensor([[r.width, r.height, r.width, r.height] for r in index.images], dtype=torch.float64)

    def frame(boxes_devkit: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if rules.plus_one:
            return boxes_devkit.to(dtype)  # devkit pixels
        return ((boxes_devkit - 1.0) / dims[img]).to(dtype)  # tutorial: (XML - 1) / image size

    gt_img = torch.cat([torch.full((len(r.labels),), i, dtype=torch.int64) for i, r in enumerate(index.images)])
    gt_boxes = torch.cat(
        [torch.from_numpy(continuous_to_voc_pixels(r.boxes_xyxy_abs)).reshape(-1, 4) for r in index.images]
    )
    gt_labels = torch.cat([torch.from_numpy(r.labels) for r in index.images])
    gt_diff = torch.cat([torch.from_numpy(r.difficult) for r in index.images])
    if rules.float64:
        thresholds = list(VOC07_RECALL_THRESHOLDS)
    else:
        thresholds = torch.arange(start=0, end=1.1, step=0.1).tolist()  # the tutorial's (float32 values)
    eps = 0.0 if rules.float64 else 1e-10
    one = 1.0 if rules.plus_one else 0.0

    ap: dict[str, float | None] = {}
    for label, name in enumerate(index.classes, start=1):
        sel = gt_labels == label
        t_img, t_boxes, t_diff = gt_img[sel], frame(gt_boxes[sel], gt_img[sel]), gt_diff[sel]
        n_easy = int((~t_diff).sum())
        if n_easy == 0 and rules.null_classes:
            ap[name] = None
            continue
        dets = by_class[label]
        if len(dets) == 0:
            ap[name] = 0.0
            continue
        d_img = torch.from_numpy(dets.image_idx.copy())
        d_scores = torch.from_numpy(dets.scores.copy()).to(dtype)
        d_boxes = frame(torch.from_numpy(dets.boxes.copy()), d_img)
        _, order = torch.sort(d_scores, dim=0, descending=True, stable=rules.stable)
        d_img, d_boxes = d_img[order], d_boxes[order]
        detected = torch.zeros(len(t_img), dtype=torch.bool)
        tp = torch.zeros(len(d_img), dtype=dtype)
        fp = torch.zeros(len(d_img), dtype=dtype)
        for d in range(len(d_img)):
            in_img = torch.nonzero(t_img == d_img[d]).flatten()
            if in_img.numel() == 0:
                fp[d] = 1
                continue
            b, g = d_boxes[d], t_boxes[in_img]
            iw = (torch.minimum(b[2], g[:, 2]) - torch.maximum(b[0], g[:, 0]) + one).clamp(min=0)
            ih = (torch.minimum(b[3], g[:, 3]) - torch.maximum(b[1], g[:, 1]) + one).clamp(min=0)
            inter = iw * ih
            union = (b[2] - b[0] + one) * (b[3] - b[1] + one) + (g[:, 2] - g[:, 0] + one) * (g[:, 3] - g[:, 1] + one) - inter
            overlap, k = torch.max(inter / union, dim=0)
            hit = overlap.item() >= 0.5 if rules.at_least else overlap.item() > 0.5
            if hit:
                obj = in_img[k]
                if not t_diff[obj]:
                    if not detected[obj]:
                        tp[d] = 1
                        detected[obj] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        ctp, cfp = torch.cumsum(tp, 0), torch.cumsum(fp, 0)
        precision = ctp / (ctp + cfp + eps)
        recall = ctp / n_easy
        p = torch.zeros(len(thresholds), dtype=dtype)
        for i, t in enumerate(thresholds):
            above = recall >= t
            if rules.float64:  # MATLAB's max skips the 0/0 points that ignored detections leave before any TP/FP
                above &= ~precision.isnan()
            p[i] = precision[above].max() if above.any() else 0.0
        if rules.float64:
            total = 0.0
            for v in p.tolist():  # the devkit accumulates in threshold order
                total += v / 11.0
            ap[name] = total
        else:
            ap[name] = float(p.mean())
    values = [v for v in ap.values() if v is not None]
    if rules.float64:
        m = sum(values) / len(values) if values else float("nan")
    else:
        m = float(torch.tensor(values, dtype=torch.float32).mean())
    return m, ap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    report = {}
    for case in args.cases:
        index = build_voc_index("test", [(CASES[case], "test")], VOC_CLASSES)
        results = GOLDENS / case / "results"
        expected = json.loads((GOLDENS / case / "expected.json").read_text())["voc07"]["mAP"]
        library = score_detections_dir(results, index, "voc07").mAP
        rows = {"expected (golden, devkit)": expected, "ssd.evaluate (devkit rules)": library}
        rows["bench, devkit rules"] = tutorial_map(index, results, DEVKIT)[0]
        rows["bench, tutorial rules"] = tutorial_map(index, results, TUTORIAL)[0]
        for field, what in [
            ("plus_one", "no +1 pixel"), ("at_least", "IoU > 0.5"), ("float64", "float32 + arange thresholds"),
            ("stable", "unstable sort"), ("null_classes", "AP 0 for no-positive classes"),
        ]:  # fmt: skip
            rows[f"devkit but only: {what}"] = tutorial_map(index, results, replace(DEVKIT, **{field: False}))[0]
        report[case] = rows
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for case, rows in report.items():
        base = rows["expected (golden, devkit)"]
        print(f"{case} (VOC07 11-point mAP)")
        for what, value in rows.items():
            print(f"  {what:<40} {value:.10f}  ({value - base:+.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
