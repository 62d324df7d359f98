"""VOC average precision (ssd.metrics) and VOC annotation parsing (ssd.data.voc).

Goldens in shared/reference/goldens/voc_devkit were computed outside the project with the official devkit's
rules; hand-made cases below have their expected values worked out in the comments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDENS as SHARED_GOLDENS
from conftest import VOCMINI, need

from ssd.data.voc import (
    VOCAnnotation,
    continuous_to_voc_pixels,
    parse_voc_xml,
    read_annotations,
    read_image_set,
    voc_pixels_to_continuous,
)
from ssd.errors import SSDError
from ssd.metrics import (
    VOC07_RECALL_THRESHOLDS,
    ClassDetections,
    VOCGroundTruth,
    average_precision,
    evaluate_voc,
    match_detections,
    read_results_dir,
    voc_ap_per_class,
    write_results_dir,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

GOLDENS = SHARED_GOLDENS / "voc_devkit"


@pytest.fixture
def shared_data() -> None:
    """The VOC goldens and VOCmini (skipped where missing, a failure under CI: conftest.need)."""
    need(GOLDENS)
    need(VOCMINI)


needs_shared = pytest.mark.usefixtures("shared_data")

GOLDEN_CASES = {
    "vocmini_test": VOCMINI,
    "edge_cases": GOLDENS / "edge_cases" / "VOC2007",
}


def _load_gt(voc_root: Path, split: str = "test") -> tuple[list[str], list[VOCGroundTruth]]:
    ids = read_image_set(voc_root, split)
    return ids, [VOCGroundTruth.from_annotation(a, VOC_CLASSES) for a in read_annotations(voc_root, ids)]


def _gt(*objects: tuple[list[float], int, bool]) -> VOCGroundTruth:
    """One image's ground truth from (devkit box, label, difficult) triples."""
    if not objects:
        return VOCGroundTruth(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
    boxes, labels, difficult = zip(*objects)
    return VOCGroundTruth(np.array(boxes, float), np.array(labels), np.array(difficult))


def _dets(*rows: tuple[int, float, list[float]]) -> ClassDetections:
    """One class's detections from (image index, score, devkit box) rows, in file order."""
    img, scores, boxes = zip(*rows)
    return ClassDetections(np.array(img), np.array(scores, float), np.array(boxes, float))


# --------------------------------------------------------------------------------------------- goldens


@needs_shared
@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
@pytest.mark.parametrize("method", ["voc07", "voc12"])
def test_devkit_goldens(case: str, method: str) -> None:
    ids, gt = _load_gt(GOLDEN_CASES[case])
    expected = json.loads((GOLDENS / case / "expected.json").read_text())[method]
    dets = read_results_dir(GOLDENS / case / "results", VOC_CLASSES, ids)
    result = evaluate_voc(dets, gt, VOC_CLASSES, method=method)
    assert result.method == method
    assert set(result.ap) == set(expected["ap"])
    for name, want in expected["ap"].items():
        got = result.ap[name]
        if want is None:
            assert got is None, name
        else:
            assert got is not None and abs(got - want) <= 1e-9, (name, got, want)
    assert abs(result.mAP - expected["mAP"]) <= 1e-9
    d = result.to_dict()
    assert d["mAP"] == result.mAP and d["ap"] == result.ap and d["method"] == method
    json.dumps(d)  # JSON-ready, None for null classes
    assert set(result.curves) == {n for n, v in result.ap.items() if v is not None}


# ----------------------------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize("method", ["voc07", "voc12"])
def test_perfect_detections_give_one(method: str) -> None:
    gt = [
        _gt(([1, 1, 50, 50], 1, False), ([60, 60, 90, 90], 2, False)),
        _gt(([10, 20, 30, 40], 1, False)),
    ]
    dets = {
        1: _dets((0, 0.9, [1, 1, 50, 50]), (1, 0.8, [10, 20, 30, 40])),
        2: _dets((0, 0.7, [60, 60, 90, 90])),
    }
    result = evaluate_voc(dets, gt, ["a", "b"], method=method)
    assert result.ap["a"] == pytest.approx(1.0, abs=1e-12)
    assert result.ap["b"] == pytest.approx(1.0, abs=1e-12)
    assert result.mAP == pytest.approx(1.0, abs=1e-12)


def _duplicate_case() -> tuple[list[VOCGroundTruth], dict[int, ClassDetections]]:
    # Scoring order: TP (image 0), duplicate on the matched object -> FP, TP (image 1).
    # npos = 2: recall [0.5, 0.5, 1], precision [1, 0.5, 2/3].
    gt = [_gt(([1, 1, 50, 50], 1, False)), _gt(([11, 11, 60, 60], 1, False))]
    dets = {1: _dets((0, 0.9, [1, 1, 50, 50]), (0, 0.8, [2, 2, 50, 50]), (1, 0.7, [11, 11, 60, 60]))}
    return gt, dets


def test_duplicate_detection_is_false_positive() -> None:
    gt, dets = _duplicate_case()
    d = dets[1]
    match = match_detections(d.image_idx, d.scores, d.boxes, [0, 1], [[1, 1, 50, 50], [11, 11, 60, 60]], [0, 0])
    assert match.tp.tolist() == [True, False, True]
    assert match.fp.tolist() == [False, True, False]
    assert not match.ignored.any() and match.npos == 2
    # voc07: t <= 0.5 -> max precision 1; t >= 0.6 -> 2/3. AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    assert evaluate_voc(dets, gt, ["a"], "voc07").ap["a"] == pytest.approx(28 / 33, abs=1e-12)
    # voc12: envelope [1, 1, 2/3, 2/3]; area = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert evaluate_voc(dets, gt, ["a"], "voc12").ap["a"] == pytest.approx(5 / 6, abs=1e-12)
    curve = evaluate_voc(dets, gt, ["a"], "voc12").curves["a"]
    np.testing.assert_allclose(curve.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(curve.precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(curve.scores, [0.9, 0.8, 0.7])


def test_no_fallback_to_another_object() -> None:
    # Objects A = [1,1,40,40] and B = [11,1,50,40] overlap. The second detection's best object is A (already
    # matched) although B also overlaps it >= 0.5: a false positive, and B stays unmatched.
    boxes = [[1, 1, 40, 40], [11, 1, 50, 40]]
    det_boxes = [[1, 1, 40, 40], [5, 1, 44, 40]]
    match = match_detections([0, 0], [0.9, 0.8], det_boxes, [0, 0], boxes, [0, 0])
    assert match.tp.tolist() == [True, False] and match.fp.tolist() == [False, True]


def test_class_with_positives_and_no_detections_is_zero_and_difficult_only_is_none() -> None:
    gt = [_gt(([1, 1, 50, 50], 1, False), ([1, 1, 50, 50], 2, False), ([5, 5, 20, 20], 3, True))]
    dets = {1: _dets((0, 0.9, [1, 1, 50, 50]))}
    for method in ("voc07", "voc12"):
        result = evaluate_voc(dets, gt, ["a", "b", "c", "d"], method)
        assert result.ap["b"] == 0.0
        assert result.ap["c"] is None  # only a difficult object
        assert result.ap["d"] is None  # no object at all
        assert result.mAP == pytest.approx(0.5, abs=1e-12)  # mean of a (1) and b (0)
        assert set(result.curves) == {"a", "b"}
    assert voc_ap_per_class([], [], np.zeros((0, 4)), [0], [[1, 1, 5, 5]], [False]) == 0.0
    assert voc_ap_per_class([], [], np.zeros((0, 4)), [], np.zeros((0, 4)), []) is None


def test_images_without_objects() -> None:
    # A detection in an object-free image is a false positive. Order: FP (image 1), TP (image 0):
    # recall [0, 1], precision [0, 0.5]; both methods give 0.5.
    gt = [_gt(([1, 1, 50, 50], 1, False)), _gt(), _gt()]
    dets = {1: _dets((1, 0.9, [1, 1, 50, 50]), (0, 0.8, [1, 1, 50, 50]))}
    for method in ("voc07", "voc12"):
        assert evaluate_voc(dets, gt, ["a"], method).ap["a"] == pytest.approx(0.5, abs=1e-12)
    # No ground truth at all: every class is None and the mean is NaN (null in to_dict).
    result = evaluate_voc({1: _dets((0, 0.5, [1, 1, 5, 5]))}, [_gt()], ["a"])
    assert result.ap == {"a": None} and np.isnan(result.mAP) and result.to_dict()["mAP"] is None


def test_detection_on_difficult_object_is_ignored() -> None:
    # Difficult object D and a normal one N. The top detection's best object is D -> ignored (no FP);
    # then N is found: AP 1. A second hit on D is ignored too, not a duplicate FP.
    gt = [_gt(([1, 1, 30, 30], 1, True), ([60, 60, 90, 90], 1, False))]
    dets = {1: _dets((0, 0.9, [1, 1, 30, 30]), (0, 0.8, [60, 60, 90, 90]), (0, 0.7, [2, 2, 30, 30]))}
    for method in ("voc07", "voc12"):
        assert evaluate_voc(dets, gt, ["a"], method).ap["a"] == pytest.approx(1.0, abs=1e-12)
    d = dets[1]
    match = match_detections(d.image_idx, d.scores, d.boxes, [0, 0], [[1, 1, 30, 30], [60, 60, 90, 90]], [1, 0])
    assert match.ignored.tolist() == [True, False, True]
    assert match.tp.tolist() == [False, True, False] and not match.fp.any() and match.npos == 1


def test_best_overlap_difficult_wins_over_overlapping_normal_object() -> None:
    # The detection overlaps the normal object >= 0.5 but the difficult one more: ignored, not TP.
    match = match_detections([0], [0.9], [[1, 1, 40, 40]], [0, 0], [[3, 1, 42, 40], [1, 1, 40, 40]], [0, 1])
    assert match.ignored.tolist() == [True] and not match.tp.any() and not match.fp.any()


def test_iou_exactly_threshold_is_a_match_with_plus_one_convention() -> None:
    # Object 1..10 x 1..10 (100 px); detection 1..10 x 1..5 (50 px): IoU = 50 / 100 = 0.5 exactly.
    assert match_detections([0], [1.0], [[1, 1, 10, 5]], [0], [[1, 1, 10, 10]], [0]).tp.tolist() == [True]
    # Without the +1 the same boxes would give 36/81 < 0.5; and one pixel less is below 0.5 (40/100).
    assert match_detections([0], [1.0], [[1, 1, 10, 4]], [0], [[1, 1, 10, 10]], [0]).fp.tolist() == [True]
    # Boxes touching at one shared pixel column overlap (iw = 1); disjoint by one pixel do not.
    m = match_detections([0], [1.0], [[10, 1, 10, 10]], [0], [[1, 1, 10, 10]], [0], iou_threshold=0.1)
    assert m.tp.tolist() == [True]  # iw = 1, ih = 10, IoU = 10 / 100


def test_ties_keep_file_order() -> None:
    gt = [_gt(([1, 1, 50, 50], 1, False))]
    wrong, right = (0, 0.5, [60, 60, 90, 90]), (0, 0.5, [1, 1, 50, 50])
    # File order FP, TP: recall [0, 1], precision [0, 0.5] -> 0.5. Order TP, FP -> 1.
    assert evaluate_voc({1: _dets(wrong, right)}, gt, ["a"], "voc12").ap["a"] == pytest.approx(0.5)
    assert evaluate_voc({1: _dets(right, wrong)}, gt, ["a"], "voc12").ap["a"] == pytest.approx(1.0)


def test_voc07_vs_voc12_on_one_curve() -> None:
    rec = [0.2, 0.4, 0.4, 0.6]
    prec = [1.0, 1.0, 2 / 3, 0.75]
    # voc07: t in {0, .1, .2, .3, .4} -> 1; t in {.5, .6} -> 0.75 (recall 0.6 reaches t = 0.6); t >= .7 -> 0.
    assert average_precision(rec, prec, "voc07") == pytest.approx((5 * 1.0 + 2 * 0.75) / 11, abs=1e-12)
    # voc12: envelope [1, 1, 0.75, 0.75]; area = 0.2 * 1 + 0.2 * 1 + 0.2 * 0.75 = 0.55.
    assert average_precision(rec, prec, "voc12") == pytest.approx(0.55, abs=1e-12)
    assert average_precision([], [], "voc07") == 0.0 and average_precision([], [], "voc12") == 0.0
    with pytest.raises(SSDError):
        average_precision(rec, prec, "coco")  # type: ignore[arg-type]


def test_recall_of_exactly_point_six_counts_at_matlab_threshold() -> None:
    # 3 of 5 objects found with precision 1, recall 3/5 == 0.6: the t = 0.6 point counts (7 of 11 points).
    gt = [_gt(*[([10 * k + 1, 1, 10 * k + 8, 8], 1, False) for k in range(5)])]
    dets = {1: _dets(*[(0, 1.0 - 0.1 * k, [10 * k + 1, 1, 10 * k + 8, 8]) for k in range(3)])}
    assert evaluate_voc(dets, gt, ["a"], "voc07").ap["a"] == pytest.approx(7 / 11, abs=1e-12)


def test_eleven_point_thresholds_are_matlabs() -> None:
    assert len(VOC07_RECALL_THRESHOLDS) == 11
    assert VOC07_RECALL_THRESHOLDS[6] == 0.6 and VOC07_RECALL_THRESHOLDS[7] == 0.7
    assert VOC07_RECALL_THRESHOLDS[3] == 0.30000000000000004
    arange = np.arange(0, 1.1, 0.1)
    assert arange[6] != VOC07_RECALL_THRESHOLDS[6] and arange[7] != VOC07_RECALL_THRESHOLDS[7]
    assert [VOC07_RECALL_THRESHOLDS[i] == arange[i] for i in range(11)] == [i not in (6, 7) for i in range(11)]


def _naive_match(det_img, scores, det_boxes, gt_img, gt_boxes, gt_diff, thr=0.5):
    """Direct transcription of VOCevaldet's per-detection loop, for cross-checking the vectorised matcher."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])  # Python's sort is stable
    matched = [False] * len(gt_img)
    out = []
    for d in order:
        bb = det_boxes[d]
        ovmax, jmax = -np.inf, -1
        for j in range(len(gt_img)):
            if gt_img[j] != det_img[d]:
                continue
            g = gt_boxes[j]
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= thr:
            if gt_diff[jmax]:
                out.append("ign")
            elif not matched[jmax]:
                matched[jmax] = True
                out.append("tp")
            else:
                out.append("fp")
        else:
            out.append("fp")
    return out


def test_vectorised_matching_equals_devkit_loop() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(40):
        n_img = int(rng.integers(1, 5))
        n_gt = int(rng.integers(0, 12))
        n_det = int(rng.integers(0, 30))
        gt_img = rng.integers(0, n_img, n_gt)
        xy = rng.integers(1, 40, (n_gt, 2))
        gt_boxes = np.concatenate([xy, xy + rng.integers(0, 30, (n_gt, 2))], 1).astype(float)
        gt_diff = rng.random(n_gt) < 0.3
        det_img = rng.integers(0, n_img, n_det)
        # Detections near objects (so matches happen) or random, scores with many ties.
        src = rng.integers(0, max(n_gt, 1), n_det)
        base = gt_boxes[src] if n_gt else np.tile([1.0, 1.0, 20.0, 20.0], (n_det, 1))
        det_boxes = base + rng.integers(-4, 5, (n_det, 4))
        det_img = np.where(rng.random(n_det) < 0.7, gt_img[src] if n_gt else det_img, det_img)
        scores = rng.integers(0, 5, n_det) / 4.0
        m = match_detections(det_img, scores, det_boxes, gt_img, gt_boxes, gt_diff)
        got = np.where(m.tp, "tp", np.where(m.fp, "fp", "ign")).tolist()
        assert (m.tp.astype(int) + m.fp + m.ignored == 1).all()
        want = _naive_match(det_img.tolist(), scores.tolist(), det_boxes.tolist(), gt_img.tolist(),
                            gt_boxes.tolist(), gt_diff.tolist())  # fmt: skip
        assert got == want


def test_evaluate_rejects_bad_labels_and_image_indices() -> None:
    gt = [_gt(([1, 1, 5, 5], 1, False))]
    with pytest.raises(SSDError):
        evaluate_voc({2: _dets((0, 0.5, [1, 1, 5, 5]))}, gt, ["a"])
    with pytest.raises(SSDError):
        evaluate_voc({1: _dets((1, 0.5, [1, 1, 5, 5]))}, gt, ["a"])
    with pytest.raises(SSDError):
        evaluate_voc({}, gt, ["a"], method="voc10")  # type: ignore[arg-type]
    # Plain tuples are accepted as detections.
    assert evaluate_voc({1: ([0], [0.5], [[1, 1, 5, 5]])}, gt, ["a"]).ap["a"] == pytest.approx(1.0)


# -------------------------------------------------------------------------------------- results files


@needs_shared
def test_results_round_trip(tmp_path: Path) -> None:
    ids, gt = _load_gt(VOCMINI)
    dets = read_results_dir(GOLDENS / "vocmini_test" / "results", VOC_CLASSES, ids)
    before = evaluate_voc(dets, gt, VOC_CLASSES, "voc12")
    write_results_dir(tmp_path, dets, ids, VOC_CLASSES)
    again = read_results_dir(tmp_path, VOC_CLASSES, ids)
    for label in dets:
        np.testing.assert_array_equal(again[label].image_idx, dets[label].image_idx)
        np.testing.assert_allclose(again[label].scores, dets[label].scores, atol=5e-7)
        np.testing.assert_allclose(again[label].boxes, dets[label].boxes, atol=5e-7)
    assert evaluate_voc(again, gt, VOC_CLASSES, "voc12").mAP == pytest.approx(before.mAP, abs=1e-12)


@needs_shared
def test_ground_truth_as_detections_scores_one(tmp_path: Path) -> None:
    ids, gt = _load_gt(VOCMINI)
    dets = {}
    for label in range(1, len(VOC_CLASSES) + 1):
        img = [i for i, g in enumerate(gt) for lab in g.labels if lab == label]
        boxes = [b for g in gt for b, lab in zip(g.boxes, g.labels) if lab == label]
        dets[label] = ClassDetections(np.array(img, np.int64), np.ones(len(img)), np.array(boxes).reshape(-1, 4))
    write_results_dir(tmp_path, dets, ids, VOC_CLASSES)
    back = read_results_dir(tmp_path, VOC_CLASSES, ids)
    for method in ("voc07", "voc12"):
        result = evaluate_voc(back, gt, VOC_CLASSES, method)
        assert all(v is not None and abs(v - 1.0) < 1e-12 for v in result.ap.values())
        assert result.mAP == pytest.approx(1.0, abs=1e-12)


def test_results_file_errors_and_missing_files(tmp_path: Path) -> None:
    ids = ["a1", "a2"]
    (tmp_path / "comp4_det_test_cat.txt").write_text("a1 0.5 1 1 10 10\n\na2 0.4 1 1 10\n")
    with pytest.raises(SSDError, match=r"comp4_det_test_cat\.txt, line 3"):
        read_results_dir(tmp_path, ["cat"], ids)
    (tmp_path / "comp4_det_test_cat.txt").write_text("a1 0.5 1 1 10 10\na2 x 1 1 10 10\n")
    with pytest.raises(SSDError, match="line 2"):
        read_results_dir(tmp_path, ["cat"], ids)
    (tmp_path / "comp4_det_test_cat.txt").write_text("a1 0.5 1 1 10 10\nzz 0.4 1 1 10 10\n")
    with pytest.raises(SSDError, match=r"line 2: unknown image id 'zz'"):
        read_results_dir(tmp_path, ["cat"], ids)
    (tmp_path / "mine_dog.txt").write_text("a2 0.25 1.5 2 10 12\na1 0.75 3 4 5 6\n")
    dets = read_results_dir(tmp_path, ["dog", "cow"], ids, pattern="mine_{cls}.txt")
    assert len(dets[2]) == 0  # no file for cow
    assert dets[1].image_idx.tolist() == [1, 0]  # file order kept
    assert dets[1].scores.tolist() == [0.25, 0.75]
    assert dets[1].boxes.tolist() == [[1.5, 2, 10, 12], [3, 4, 5, 6]]
    write_results_dir(tmp_path / "out", dets, ids, ["dog", "cow"])
    assert (tmp_path / "out" / "comp4_det_test_dog.txt").read_text().splitlines()[0] == (
        "a2 0.250000 1.500000 2.000000 10.000000 12.000000"
    )
    assert (tmp_path / "out" / "comp4_det_test_cow.txt").read_text() == ""


# ------------------------------------------------------------------------------------ VOC annotations


@needs_shared
def test_parse_real_voc_xml() -> None:
    ann = parse_voc_xml(VOCMINI / "Annotations" / "000021.xml")
    assert isinstance(ann, VOCAnnotation)
    assert (ann.image_id, ann.filename, ann.width, ann.height) == ("000021", "000021.jpg", 336, 500)
    assert ann.names == ("dog", "person", "person", "person")
    # XML <xmin>1 <ymin>235 <xmax>182 <ymax>388 -> continuous [0, 234, 182, 388].
    np.testing.assert_array_equal(ann.boxes_xyxy_abs[0], [0, 234, 182, 388])
    assert ann.boxes_xyxy_abs.dtype == np.float64 and ann.difficult.dtype == np.bool_
    assert not ann.difficult.any()
    np.testing.assert_array_equal(ann.boxes_voc_pixels[0], [1, 235, 182, 388])
    gt = VOCGroundTruth.from_annotation(ann, VOC_CLASSES)
    assert gt.labels.tolist() == [12, 15, 15, 15]
    np.testing.assert_array_equal(gt.boxes[0], [1, 235, 182, 388])


@needs_shared
def test_vocmini_test_totals() -> None:
    ids = read_image_set(VOCMINI, "test")
    anns = read_annotations(VOCMINI, ids)
    assert len(ids) == 150
    assert sum(len(a.names) for a in anns) == 486
    assert sum(int(a.difficult.sum()) for a in anns) == 88


def test_pixel_convention_helpers_round_trip() -> None:
    voc = np.array([[1, 1, 3, 3], [48, 240, 195, 371]], dtype=float)
    cont = voc_pixels_to_continuous(voc)
    np.testing.assert_array_equal(cont, [[0, 0, 3, 3], [47, 239, 195, 371]])
    np.testing.assert_array_equal(cont[:, 2] - cont[:, 0], voc[:, 2] - voc[:, 0] + 1)  # devkit width
    np.testing.assert_array_equal(continuous_to_voc_pixels(cont), voc)
    np.testing.assert_array_equal(voc, [[1, 1, 3, 3], [48, 240, 195, 371]])  # input untouched
    assert continuous_to_voc_pixels(np.zeros((0, 4))).shape == (0, 4)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 500, (5, 3, 4))
    np.testing.assert_allclose(voc_pixels_to_continuous(continuous_to_voc_pixels(x)), x, atol=1e-12)


def _write_xml(path: Path, body: str) -> Path:
    path.write_text(f"<annotation><filename>q.jpg</filename>{body}</annotation>")
    return path


def test_parse_voc_xml_errors_and_defaults(tmp_path: Path) -> None:
    size = "<size><width>100</width><height>80</height><depth>3</depth></size>"
    obj = "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>"
    ann = parse_voc_xml(_write_xml(tmp_path / "img7.xml", size + obj))
    assert ann.image_id == "img7" and ann.filename == "q.jpg" and ann.difficult.tolist() == [False]
    np.testing.assert_array_equal(ann.boxes_xyxy_abs, [[1, 2, 20, 30]])
    empty = parse_voc_xml(_write_xml(tmp_path / "empty.xml", size))
    assert empty.names == () and empty.boxes_xyxy_abs.shape == (0, 4) and empty.difficult.shape == (0,)

    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><size>")
    with pytest.raises(SSDError, match=r"bad\.xml.*malformed XML"):
        parse_voc_xml(bad)
    with pytest.raises(SSDError, match=r"nosize\.xml.*<size>"):
        parse_voc_xml(_write_xml(tmp_path / "nosize.xml", obj))
    with pytest.raises(SSDError, match=r"nobox\.xml.*<bndbox>"):
        parse_voc_xml(_write_xml(tmp_path / "nobox.xml", size + "<object><name>cat</name></object>"))
    with pytest.raises(SSDError, match=r"noymax\.xml.*<ymax>"):
        parse_voc_xml(_write_xml(tmp_path / "noymax.xml", size + obj.replace("<ymax>30</ymax>", "")))
    with pytest.raises(SSDError, match=r"missing\.xml"):
        parse_voc_xml(tmp_path / "missing.xml")
    with pytest.raises(SSDError, match="unknown class"):
        VOCGroundTruth.from_annotation(ann, ["dog"])


def test_read_image_set(tmp_path: Path) -> None:
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "val.txt").write_text("000005\n000007  1\n\n000009\n")
    assert read_image_set(tmp_path, "val") == ["000005", "000007", "000009"]
    with pytest.raises(SSDError, match="test"):
        read_image_set(tmp_path, "test")
