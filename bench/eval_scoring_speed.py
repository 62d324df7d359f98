"""Speed of scoring a full VOC2007-test-sized evaluation (no network): 4952 images x 200 detections.

    PYTHONPATH=src python bench/eval_scoring_speed.py [--images 4952] [--per-image 200]

Synthetic ground truth (3 objects per image, 20 classes, 1 in 10 difficult, VOC-like sizes) and detections (jittered
copies of the objects plus random boxes, random scores). Times, single process:

- ``score_detections``: per-image detections -> Evaluation (devkit matching, curves, AP for 20 classes);
- ``write_detections_dir``: the 20 devkit results files (6 decimals);
- ``score_detections_dir``: reading them back and scoring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from ssd.config import VOC_CLASSES
from ssd.data.index import DatasetIndex, ImageRecord
from ssd.evaluate import score_detections, score_detections_dir, write_detections_dir
from ssd.postprocess import Detections


def synthetic(n_images: int, per_image: int, seed: int = 0) -> tuple[DatasetIndex, list[Detections]]:
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for i in range(n_images):
        w, h = 500, 375
        m = 3
        xy = rng.uniform(0, [w - 60, h - 60], size=(m, 2))
        wh = rng.uniform(20, 200, size=(m, 2))
        boxes = np.floor(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)).astype(np.float32)
        labels = rng.integers(1, 21, size=m)
        records.append(ImageRecord(f"{i:06d}", f"/nonexistent/{i:06d}.jpg", w, h, boxes, labels, rng.random(m) < 0.1))
        k_near = min(per_image, 30)
        near = boxes[rng.integers(0, m, size=k_near)] + rng.normal(0, 8, size=(k_near, 4))
        far_xy = rng.uniform(0, [w - 40, h - 40], size=(per_image - k_near, 2))
        far = np.concatenate([far_xy, far_xy + rng.uniform(10, 150, size=(per_image - k_near, 2))], 1)
        det_boxes = np.concatenate([near, far]).astype(np.float32)
        det_labels = np.concatenate([labels[rng.integers(0, m, size=k_near)], rng.integers(1, 21, size=per_image - k_near)])
        scores = rng.random(per_image).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        detections.append(
            Detections(torch.from_numpy(det_boxes[order]), torch.from_numpy(det_labels[order]), torch.from_numpy(scores[order]))
        )
    return DatasetIndex("synthetic", VOC_CLASSES, records), detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--per-image", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    index, detections = synthetic(args.images, args.per_image)
    n = sum(len(d.scores) for d in detections)
    t = time.perf_counter()
    evaluation = score_detections(detections, index)
    t_score = time.perf_counter() - t
    print(f"{args.images} images, {n} detections, {index.num_objects} objects")
    print(f"score_detections      {t_score:6.2f} s   mAP {evaluation.mAP:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_detections_dir(evaluation, tmp)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        again = score_detections_dir(tmp, index)
        t_read = time.perf_counter() - t
    print(f"write_detections_dir  {t_write:6.2f} s")
    print(f"score_detections_dir  {t_read:6.2f} s   mAP {again.mAP:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
