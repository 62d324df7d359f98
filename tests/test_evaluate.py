"""Evaluation: ``ssd eval`` end to end, the devkit results-file round trip, COCO-style AP, options and errors.

The AP core (devkit rules, goldens, hand-made cases) is tested in test_metrics.py; here the pieces around it:
ground truth from a dataset index, detections from a model, the exchange formats, and the command.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import ssd
from conftest import GOLDENS, VOCMINI, need
from ssd.data.index import DatasetIndex, ImageRecord, build_coco_index, build_voc_index
from ssd.errors import SSDError
from ssd.evaluate import (
    COCO_METRIC_NAMES,
    coco_metrics,
    coco_results,
    evaluate,
    score_detections,
    score_detections_dir,
    write_detections_dir,
)
from ssd.postprocess import Detections

VOC_GOLDENS = GOLDENS / "voc_devkit"

try:
    import pycocotools  # noqa: F401

    HAVE_PYCOCOTOOLS = True
except ImportError:
    HAVE_PYCOCOTOOLS = False
try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False

needs_pycocotools = pytest.mark.skipif(not HAVE_PYCOCOTOOLS, reason="pycocotools is not installed")
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed")

# A freshly initialised model scores every class near 1/21 at every prior: at the paper's min_score of 0.01
# NMS would see ~6000 boxes per class and image. The tests that run the model raise the threshold to keep the
# CPU time small; the defaults themselves are checked on the parser.
FAST = ["--min-score", "0.2", "--top-k", "50"]


def run_cli(*argv: object) -> tuple[int, str, str]:
    """``ssd eval ...`` through ``ssd.cli.main`` with this command registered; returns (status, stdout, stderr)."""
    import ssd.cli as cli

    modules = tuple(cli.COMMAND_MODULES)
    out, err = io.StringIO(), io.StringIO()
    try:
        if "evaluate" not in modules:
            cli.COMMAND_MODULES = modules + ("evaluate",)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main([str(a) for a in argv])
            except SystemExit as e:  # argparse errors
                status = int(e.code or 0)
    finally:
        cli.COMMAND_MODULES = modules
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ssd.build_model("small", ssd.VOC_CLASSES)
    path = tmp_path_factory.mktemp("ckpt") / "small.ckpt"
    ssd.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def vocmini_test_index() -> DatasetIndex:
    return build_voc_index("test", [(need(VOCMINI), "test")], ssd.VOC_CLASSES)


@pytest.fixture(scope="module")
def e2e(checkpoint, tmp_path_factory) -> dict:
    """One ``ssd eval`` run over VOCmini test with every output; the tests below read what it wrote."""
    need(VOCMINI)
    tmp = tmp_path_factory.mktemp("e2e")
    argv = ["eval", checkpoint, "--voc-root", VOCMINI, "--split", "test", *FAST, "--batch-size", "16",
            "--out", tmp / "out", "--save-detections", tmp / "dets"]  # fmt: skip
    if not HAVE_MATPLOTLIB:
        argv.append("--no-plot")
    status, out, err = run_cli(*argv)
    return {"status": status, "stdout": out, "stderr": err, "dir": tmp}


# --------------------------------------------------------------------------------------------- end to end


def test_eval_end_to_end_on_vocmini_test(e2e) -> None:
    assert e2e["status"] == 0, e2e["stderr"]
    out = e2e["dir"] / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "voc07" and metrics["iou_threshold"] == 0.5
    assert list(metrics["ap"]) == list(ssd.VOC_CLASSES)  # all 20 classes have objects in VOCmini test
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics["ap"].values())
    assert metrics["mAP"] == pytest.approx(sum(metrics["ap"].values()) / 20, abs=1e-12)
    assert metrics["num_images"] == 150 and metrics["failed"] == []
    assert 0 < metrics["num_detections"] <= 150 * 50
    assert metrics["settings"]["min_score"] == 0.2 and metrics["settings"]["top_k"] == 50
    assert metrics["settings"]["max_overlap"] == 0.45 and metrics["settings"]["device"] == "cpu"
    assert metrics["checkpoint"].endswith("small.ckpt")
    if HAVE_MATPLOTLIB:
        png = (out / "pr_curves.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The printed table: a row per class, then the mAP.
    lines = e2e["stdout"].splitlines()
    for name in ssd.VOC_CLASSES:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert any(line.startswith("mAP") and "150 images" in line for line in lines)


def test_parser_defaults_are_the_papers(checkpoint) -> None:
    import argparse

    from ssd.cli.evaluate import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", str(checkpoint), "--data", "x.json"])
    assert (args.min_score, args.max_overlap, args.top_k, args.method) == (0.01, 0.45, 200, "voc07")
    assert (args.batch_size, args.workers, args.device) == (32, 0, "auto")
    from ssd.device import DEVICE_HELP
    from ssd.settings import DetectSettings

    paper = DetectSettings.for_evaluation()  # the one declaration of these defaults
    assert (args.min_score, args.max_overlap, args.top_k, args.batch_size) == (
        paper.min_score, paper.max_overlap, paper.top_k, paper.batch_size)
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0].choices["eval"]._actions}
    assert helps["device"] == DEVICE_HELP and "(default 0.01)" in helps["min_score"]
    assert parser.parse_args(["eval", "--detections", "d", "--data", "x.json"]).checkpoint is None


def test_saved_detections_score_the_same_without_a_model(e2e, tmp_path) -> None:
    """``--save-detections`` then ``--detections``: the devkit files carry the whole evaluation."""
    assert e2e["status"] == 0, e2e["stderr"]
    dets = e2e["dir"] / "dets"
    files = sorted(dets.iterdir())
    assert [f.name for f in files] == sorted(f"comp4_det_test_{c}.txt" for c in ssd.VOC_CLASSES)
    n_lines = 0
    for f in files:
        scores = []
        for line in f.read_text().splitlines():
            fields = line.split()
            assert len(fields) == 6 and all(len(v.split(".")[1]) == 6 for v in fields[1:]), line
            scores.append(float(fields[1]))
        assert scores == sorted(scores, reverse=True)  # descending score: file order breaks rounding ties
        n_lines += len(scores)
    status, out, err = run_cli("eval", "--detections", dets, "--voc-root", VOCMINI, "--out", tmp_path, "--no-plot")
    assert status == 0, err
    first = json.loads((e2e["dir"] / "out" / "metrics.json").read_text())
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["num_detections"] == first["num_detections"] == n_lines
    assert again["ap"] == pytest.approx(first["ap"], abs=1e-9)
    assert again["mAP"] == pytest.approx(first["mAP"], abs=1e-9)


def test_results_round_trip_keeps_the_golden_map(vocmini_test_index, tmp_path) -> None:
    """Golden results files -> Evaluation (continuous pixels) -> written -> read back: the same scores."""
    results = need(VOC_GOLDENS / "vocmini_test" / "results")
    expected = json.loads((VOC_GOLDENS / "vocmini_test" / "expected.json").read_text())
    for method in ("voc07", "voc12"):
        first = score_detections_dir(results, vocmini_test_index, method)
        assert first.mAP == pytest.approx(expected[method]["mAP"], abs=1e-9)  # ground truth via the index
        write_detections_dir(first, tmp_path / method)
        again = score_detections_dir(tmp_path / method, vocmini_test_index, method)
        assert again.voc.ap == pytest.approx(first.voc.ap, abs=1e-12)
        assert again.mAP == pytest.approx(first.mAP, abs=1e-12)
        # Same detections, as a set per class (the written files are sorted by score).
        for label in range(1, 21):
            a = np.sort(first.det_boxes_xyxy_abs[first.det_labels == label], axis=0)
            b = np.sort(again.det_boxes_xyxy_abs[again.det_labels == label], axis=0)
            np.testing.assert_allclose(a, b, atol=1e-9)


def test_ground_truth_as_detections_scores_one_and_writes_the_xml_integers(vocmini_test_index, tmp_path) -> None:
    index = vocmini_test_index
    detections = [
        Detections(torch.from_numpy(r.boxes_xyxy_abs.astype(np.float64)), torch.from_numpy(r.labels),
                   torch.ones(len(r.labels), dtype=torch.float64))  # fmt: skip
        for r in index.images
    ]
    evaluation = score_detections(detections, index)
    # 11 x (1 / 11) accumulated as the devkit does is 1.0000000000000002
    assert evaluation.voc.ap == pytest.approx({c: 1.0 for c in ssd.VOC_CLASSES}, abs=1e-12)
    write_detections_dir(evaluation, tmp_path)
    # Every object of the XML files (difficult ones too), written back as exactly its integers.
    want = {c: Counter() for c in ssd.VOC_CLASSES}
    for r in index.images:
        root = ET.parse(VOCMINI / "Annotations" / f"{r.id}.xml").getroot()
        for obj in root.findall("object"):
            box = obj.find("bndbox")
            ints = tuple(f"{int(box.find(t).text)}.000000" for t in ("xmin", "ymin", "xmax", "ymax"))
            want[obj.find("name").text.strip()][(r.id, *ints)] += 1
    for name in ssd.VOC_CLASSES:
        got = Counter()
        for line in (tmp_path / f"comp4_det_test_{name}.txt").read_text().splitlines():
            image_id, score, *box = line.split()
            assert score == "1.000000"
            got[(image_id, *box)] += 1
        assert got == want[name], name
    assert score_detections_dir(tmp_path, index).mAP == pytest.approx(1.0, abs=1e-12)


def test_score_detections_dir_errors(vocmini_test_index, tmp_path) -> None:
    with pytest.raises(SSDError, match="not found"):
        score_detections_dir(tmp_path / "missing", vocmini_test_index)
    with pytest.raises(SSDError, match="no results files"):
        score_detections_dir(tmp_path, vocmini_test_index)
    (tmp_path / "comp4_det_test_cat.txt").write_text("000021 0.5 1 2 3\n")
    with pytest.raises(SSDError, match=r"comp4_det_test_cat.txt, line 1"):
        score_detections_dir(tmp_path, vocmini_test_index)


# ------------------------------------------------------------------------------------------ Python API


def _few(index: DatasetIndex, n: int) -> DatasetIndex:
    return DatasetIndex(f"{index.name}-{n}", index.classes, index.images[:n])


def test_evaluate_api_batches_modes_and_class_mapping(checkpoint, vocmini_test_index) -> None:
    model = ssd.load_model(checkpoint)
    model.train()
    index = _few(vocmini_test_index, 3)
    a = evaluate(model, index, batch_size=1, min_score=0.2, top_k=20)
    assert model.training  # mode restored
    b = evaluate(model, index, batch_size=3, min_score=0.2, top_k=20)
    assert a.num_images == 3 and a.image_ids == tuple(r.id for r in index.images)
    np.testing.assert_array_equal(a.det_image_idx, b.det_image_idx)
    np.testing.assert_array_equal(a.det_labels, b.det_labels)
    np.testing.assert_allclose(a.det_boxes_xyxy_abs, b.det_boxes_xyxy_abs, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.det_scores, b.det_scores, rtol=1e-5, atol=1e-6)
    assert a.settings["amp"] is None and a.settings["device"] == "cpu"
    per_image = a.detections()
    assert [len(d.scores) for d in per_image] == np.bincount(a.det_image_idx, minlength=3).tolist()
    assert all(len(d.scores) <= 20 and bool((d.scores > 0.2).all()) for d in per_image)
    json.dumps(a.to_dict())

    # The index's classes in another order: the same detections under the same names.
    reversed_classes = tuple(reversed(index.classes))
    new_label = {i + 1: reversed_classes.index(c) + 1 for i, c in enumerate(index.classes)}
    remapped = DatasetIndex(
        "reversed", reversed_classes,
        [ImageRecord(r.id, r.file, r.width, r.height, r.boxes_xyxy_abs,
                     np.array([new_label[int(v)] for v in r.labels], dtype=np.int64), r.difficult)
         for r in index.images],
    )  # fmt: skip
    c = evaluate(model, remapped, batch_size=3, min_score=0.2, top_k=20)
    names_a = [index.classes[v - 1] for v in a.det_labels]
    names_c = [reversed_classes[v - 1] for v in c.det_labels]
    assert names_a == names_c
    assert c.voc.ap == pytest.approx({n: a.voc.ap[n] for n in reversed_classes})

    with pytest.raises(SSDError, match="does not know"):
        evaluate(model, DatasetIndex("x", ("cat", "unicorn"), []))
    with pytest.raises(SSDError, match="min_score"):
        evaluate(model, index, min_score=1.5)
    with pytest.raises(SSDError, match="batch_size"):
        evaluate(model, index, batch_size=0)
    with pytest.raises(SSDError, match="not a device"):
        evaluate(model, index, device="bogus")
    with pytest.raises(SSDError, match="suppress is not an evaluation setting"):
        evaluate(model, index, suppress=["cat"])
    with pytest.raises(SSDError, match="top_k must be at most"):
        evaluate(model, index, top_k=model.config.num_priors + 1)
    with pytest.raises(TypeError, match="unknown setting"):
        evaluate(model, index, min_scor=0.2)
    from ssd.settings import DetectSettings

    d = evaluate(model, index, settings=DetectSettings(min_score=0.2, top_k=20, max_overlap=0.45, batch_size=3))
    np.testing.assert_array_equal(d.det_scores, b.det_scores)


def test_evaluate_leaves_the_model_as_it_was(checkpoint, vocmini_test_index) -> None:
    """Device, every module's training flag and the memory format are the same after evaluate() (and after
    SSD.detect); evaluating a channels-last model gives the same detections as its NCHW twin."""
    from ssd.device import to_channels_last
    from ssd.placement import is_channels_last

    index = _few(vocmini_test_index, 2)
    model = ssd.load_model(checkpoint).train()
    model.base.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    nchw = evaluate(model, index, min_score=0.2, top_k=20)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not is_channels_last(model) and next(model.parameters()).device == torch.device("cpu")
    model.detect(torch.rand(1, 3, 192, 192), min_score=0.2)
    assert {name: m.training for name, m in model.named_modules()} == modes and not is_channels_last(model)
    to_channels_last(model)
    nhwc = evaluate(model, index, min_score=0.2, top_k=20)
    assert is_channels_last(model)  # kept, not turned back to NCHW
    np.testing.assert_array_equal(nhwc.det_labels, nchw.det_labels)
    np.testing.assert_array_equal(nhwc.det_scores, nchw.det_scores)


def test_unreadable_images_are_reported_and_the_others_evaluated(checkpoint, vocmini_test_index, tmp_path) -> None:
    good = vocmini_test_index.images[:2]
    bad_file = tmp_path / "bad image é.jpg"
    bad_file.write_bytes(b"")
    bad = ImageRecord("bad", str(bad_file), 500, 375, good[0].boxes_xyxy_abs, good[0].labels, good[0].difficult)
    index = DatasetIndex("mixed", ssd.VOC_CLASSES, [good[0], bad, good[1]])
    path = index.save(tmp_path / "mixed.json")

    status, out, err = run_cli("eval", checkpoint, "--data", path, *FAST, "--out", tmp_path / "o", "--no-plot")
    assert status == 1
    assert "Traceback" not in err and "bad image é.jpg" in err
    assert "mAP" in out
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and len(metrics["failed"]) == 1 and "bad image é.jpg" in metrics["failed"][0]

    evaluation = evaluate(ssd.load_model(checkpoint), index, min_score=0.2, top_k=50)
    assert len(evaluation.failed) == 1
    assert 1 not in set(evaluation.det_image_idx.tolist())  # no detections for the unreadable image
    assert {0, 2} <= set(evaluation.det_image_idx.tolist())  # the others were evaluated


def test_decoding_on_the_device_equals_the_workers_decoding_on_the_cpu(checkpoint, vocmini_test_index, tmp_path) -> None:
    """``decode_on_device``: the workers only read the files and the evaluation device decodes and resizes. On the
    CPU both paths run libjpeg-turbo and the same resize, so the detections are the same, bit for bit; a PNG
    (decoded by the worker), a truncated JPEG and an empty file are handled as in the default path."""
    from PIL import Image

    good = vocmini_test_index.images[:6]
    png = tmp_path / "as.png"
    Image.open(good[0].file).save(png)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(good[1].file).read_bytes()[:5000])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    extra = [ImageRecord(f"x{k}", str(f), good[k].width, good[k].height, good[k].boxes_xyxy_abs, good[k].labels,
                         good[k].difficult) for k, f in enumerate((png, truncated, empty))]  # fmt: skip
    index = DatasetIndex("mixed", ssd.VOC_CLASSES, [*good, *extra])
    model = ssd.load_model(checkpoint)
    runs = [evaluate(model, index, min_score=0.2, top_k=50, batch_size=4, workers=w, decode_on_device=on_device)
            for on_device, w in ((False, 0), (True, 0), (True, 2))]  # fmt: skip
    base = runs[0]
    assert base.num_detections > 0 and len(base.failed) == 2
    for other in runs[1:]:
        assert np.array_equal(other.det_image_idx, base.det_image_idx) and np.array_equal(other.det_labels, base.det_labels)
        assert np.array_equal(other.det_scores, base.det_scores)
        assert np.array_equal(other.det_boxes_xyxy_abs, base.det_boxes_xyxy_abs)
        assert len(other.failed) == 2 and other.settings["decode_on_device"]
    assert set(base.det_image_idx.tolist()) >= {0, 6}  # the PNG copy of image 0 is evaluated like it

    path = index.save(tmp_path / "mixed.json")
    maps = []
    for flag in ([], ["--decode-on-device"]):
        status, out, err = run_cli("eval", checkpoint, "--data", path, *FAST, "--out", tmp_path / f"o{len(flag)}",
                                   "--no-plot", *flag)  # fmt: skip
        assert status == 1 and "Traceback" not in err  # 1: two images could not be read
        metrics = json.loads((tmp_path / f"o{len(flag)}" / "metrics.json").read_text())
        maps.append((metrics["mAP"], metrics["settings"]["decode_on_device"]))
    assert maps[0][0] == maps[1][0] and [m[1] for m in maps] == [False, True]


# ------------------------------------------------------------------------------------------------- COCO


def _coco_fixture(tmp_path: Path, ids: list[str]) -> tuple[Path, Path, dict[str, int]]:
    """A COCO JSON over VOCmini images (linked into tmp_path), objects from their XML, difficult -> iscrowd."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    category_ids = {name: 100 + 3 * i for i, name in enumerate(ssd.VOC_CLASSES)}  # not 1..K on purpose
    images, annotations = [], []
    for k, image_id in enumerate(ids):
        os.symlink(VOCMINI / "JPEGImages" / f"{image_id}.jpg", images_dir / f"{image_id}.jpg")
        root = ET.parse(VOCMINI / "Annotations" / f"{image_id}.xml").getroot()
        size = root.find("size")
        coco_id = 7000 + k
        images.append({"id": coco_id, "file_name": f"{image_id}.jpg",
                       "width": int(size.find("width").text), "height": int(size.find("height").text)})  # fmt: skip
        for obj in root.findall("object"):
            b = [float(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
            x, y, w, h = b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1  # continuous pixels
            annotations.append({"id": len(annotations) + 1, "image_id": coco_id,
                                "category_id": category_ids[obj.find("name").text.strip()], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": int(obj.find("difficult").text.strip() == "1")})  # fmt: skip
    categories = [{"id": i, "name": n} for n, i in category_ids.items()]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, images_dir, category_ids


@needs_pycocotools
def test_coco_path_end_to_end(checkpoint, tmp_path) -> None:
    need(VOCMINI)
    ann, images, category_ids = _coco_fixture(tmp_path, ["000021", "000050", "000109", "000125"])
    status, out, err = run_cli(
        "eval", checkpoint, "--coco-json", ann, "--images", images, *FAST, "--coco",
        "--coco-results", tmp_path / "results.json", "--out", tmp_path / "out", "--no-plot",
    )  # fmt: skip
    assert status == 0, err
    assert "COCO-style: AP" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics["coco"]) == list(COCO_METRIC_NAMES)
    assert metrics["num_images"] == 4
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and len(results) == metrics["num_detections"]
    assert {r["image_id"] for r in results} <= {7000, 7001, 7002, 7003}
    assert {r["category_id"] for r in results} <= set(category_ids.values())
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
    assert max(Counter(r["image_id"] for r in results).values()) <= 50

    # The plumbing (ids, [x, y, w, h], crowd = difficult): ground truth as detections scores 1.0 either way.
    index = build_coco_index("coco", ann, images)
    perfect = score_detections(
        [Detections(torch.from_numpy(r.boxes_xyxy_abs.astype(np.float64)), torch.from_numpy(r.labels),
                    torch.ones(len(r.labels), dtype=torch.float64)) for r in index.images],  # fmt: skip
        index,
    )
    assert perfect.mAP == pytest.approx(1.0, abs=1e-12)
    for annotation_file in (None, ann):
        m = coco_metrics(perfect, index, annotation_file=annotation_file)
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0), (annotation_file, m)


def _one_image_index(tmp_path: Path) -> DatasetIndex:
    boxes = np.array([[10, 10, 110, 110], [200, 200, 300, 300]], dtype=np.float32)  # a normal and a difficult cat
    record = ImageRecord("img", str(tmp_path / "img.jpg"), 400, 400, boxes, np.array([8, 8]), np.array([False, True]))
    return DatasetIndex("one", ssd.VOC_CLASSES, [record])


@needs_pycocotools
def test_coco_difficult_objects_are_crowd_regions_absorbing_detections(tmp_path) -> None:
    index = _one_image_index(tmp_path)
    # Two detections on the difficult object, scored above the one on the normal object.
    boxes = torch.tensor([[200, 200, 300, 300], [205, 205, 300, 300], [10, 10, 110, 110]], dtype=torch.float64)
    ev = score_detections([Detections(boxes, torch.tensor([8, 8, 8]), torch.tensor([0.9, 0.8, 0.7]))], index)
    assert ev.voc.ap["cat"] == pytest.approx(1.0, abs=1e-12)  # VOC: both ignored
    m = coco_metrics(ev, index)
    assert m["AP50"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)  # COCO: the crowd absorbs both
    # Were the difficult object dropped instead, both would be false positives ahead of the true one.
    dropped = DatasetIndex("dropped", index.classes, [
        ImageRecord("img", "x", 400, 400, index.images[0].boxes_xyxy_abs[:1], np.array([8]), np.array([False]))
    ])  # fmt: skip
    assert coco_metrics(ev, dropped)["AP50"] < 0.5


def test_coco_results_format_and_the_100_per_image_cap(tmp_path) -> None:
    index = _one_image_index(tmp_path)
    n = 150
    boxes = torch.tensor([[1.5, 2.5, 11.5, 22.5]], dtype=torch.float64).repeat(n, 1)
    scores = torch.linspace(0.99, 0.01, n, dtype=torch.float64)
    ev = score_detections([Detections(boxes, torch.full((n,), 8), scores)], index)
    results = coco_results(ev, index)
    assert len(results) == 100 and results[0] == {"image_id": "img", "category_id": 8,
                                                  "bbox": [1.5, 2.5, 10.0, 20.0], "score": 0.99}  # fmt: skip
    assert min(r["score"] for r in results) == pytest.approx(float(scores[99]), abs=1e-6)
    assert len(coco_results(ev, max_per_image=None)) == n
    assert coco_results(ev, category_ids={c: 10 + i for i, c in enumerate(ssd.VOC_CLASSES)})[0]["category_id"] == 17
    with pytest.raises(SSDError, match="not the one evaluated"):
        coco_results(ev, DatasetIndex("other", ssd.VOC_CLASSES, []))


def test_missing_optional_dependencies_say_what_to_install(monkeypatch, tmp_path) -> None:
    from ssd.plots import plot_pr_curves

    index = _one_image_index(tmp_path)
    ev = score_detections([Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0))], index)
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SSDError, match="pip install pycocotools"):
        coco_metrics(ev, index)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SSDError, match="pip install matplotlib"):
        plot_pr_curves(ev.voc, tmp_path / "x.png")


@needs_matplotlib
def test_pr_curve_grid_with_classes_without_ap(tmp_path) -> None:
    from ssd.plots import plot_pr_curves

    root = need(VOC_GOLDENS / "edge_cases")
    index = build_voc_index("test", [(root / "VOC2007", "test")], ssd.VOC_CLASSES)
    ev = score_detections_dir(root / "results", index)
    assert ev.voc.ap["aeroplane"] is None and ev.voc.ap["cat"] is not None
    path = plot_pr_curves(ev.voc, tmp_path / "sub" / "pr.png")
    assert path == tmp_path / "sub" / "pr.png" and path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------- options and errors


def _bad_cases(ckpt: Path, tmp: Path) -> list[tuple[list, str]]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    (tmp / "empty_dets").mkdir(exist_ok=True)
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    voc = ["--voc-root", VOCMINI]
    cases = [
        ([ckpt], "--data INDEX.json"),  # no dataset
        ([ckpt, *voc, "--data", tmp / "x.json"], "exactly one"),
        ([*voc], "CHECKPOINT"),  # neither a model nor --detections
        ([tmp / "missing.ckpt", *voc], "CHECKPOINT"),
        ([ckpt, "--data", tmp / "missing.json"], "--data"),
        ([ckpt, "--voc-root", tmp / "nowhere"], "--voc-root"),
        ([ckpt, *voc, "--split", "nosuch"], "--split"),
        ([ckpt, "--coco-json", a_file], "--images"),
        ([ckpt, *voc, "--min-score", "1.5"], "--min-score"),
        ([ckpt, *voc, "--min-score", "-0.1"], "--min-score"),
        ([ckpt, *voc, "--min-score", "nan"], "--min-score"),
        ([ckpt, *voc, "--max-overlap", "1.01"], "--max-overlap"),
        ([ckpt, *voc, "--max-overlap", "nan"], "--max-overlap"),
        ([ckpt, *voc, "--top-k", "0"], "--top-k"),
        ([ckpt, *voc, "--batch-size", "0"], "--batch-size"),
        ([ckpt, *voc, "--batch-size", "-4"], "--batch-size"),
        ([ckpt, *voc, "--workers", "-1"], "--workers"),
        ([ckpt, *voc, "--device", "bogus"], "--device"),
        ([ckpt, *voc, "--out", a_file / "sub"], "--out"),
        ([ckpt, *voc, "--save-detections", a_file], "--save-detections"),
        ([ckpt, *voc, "--coco-results", tmp], "--coco-results"),
        ([ckpt, *voc, "--detections", tmp], "--detections"),  # a model and results files
        (["--detections", tmp / "nowhere", *voc], "--detections"),
        (["--detections", tmp / "empty_dets", *voc], "no results files"),
        ([garbage, *voc], str(garbage)),
    ]
    if not torch.cuda.is_available():
        cases.append(([ckpt, *voc, "--device", "cuda"], "--device"))
    return cases


def test_bad_options_fail_before_any_work_with_one_line(checkpoint, tmp_path) -> None:
    need(VOCMINI)
    for k, (argv, expected) in enumerate(_bad_cases(checkpoint, tmp_path)):
        out_dir = tmp_path / f"never{k}"
        status, out, err = run_cli("eval", *argv, "--out", out_dir) if "--out" not in argv else run_cli("eval", *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("ssd: error: "), (argv, err)
        assert expected in lines[0], (argv, lines[0])
        assert "Traceback" not in err and out == ""
        if "--out" not in argv and expected not in ("no results files", str(tmp_path / "garbage.ckpt")):
            assert not out_dir.exists(), argv  # failed before writing anything


def test_eval_finite_settings_are_echoed(e2e) -> None:
    """metrics.json holds the timing of a real run (finite, positive)."""
    metrics = json.loads((e2e["dir"] / "out" / "metrics.json").read_text())
    assert metrics["seconds"] > 0 and math.isfinite(metrics["images_per_second"])


def test_annotations_are_scored_as_written_as_the_devkit_scores_them(tmp_path) -> None:
    """A box running past the image and an inverted box: reported (and cleaned for training), but scored as the file
    writes them, as VOCevaldet reads the XML. Hand-computed with the devkit's rules (+1 pixels):

    object A, x 400..600 on a 500-wide image; object B, x 100..50 (inverted). Detection 1 (score 0.9) at x 450..600
    overlaps A as written by 151/201 = 0.75: a true positive (A clipped to 400..500 would give 51/201: a false
    one). Detection 2 (0.8) at x 50..100 meets inverted B nowhere (iw <= 0): false. Two positives (A and B):
    recall 0.5, 0.5 and precision 1, 0.5, so VOC07 11-point AP = 6/11 (thresholds 0 ... 0.5) and area AP = 0.5.
    The old cleaning scored 0.0 (one positive, no match)."""
    from PIL import Image
    from test_metrics import _naive_match

    from ssd.data.voc import write_image_set

    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (500, 375)).save(root / "JPEGImages" / "000001.jpg")
    objects = "".join(
        f"<object><name>cat</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for x1, y1, x2, y2 in ((400, 100, 600, 200), (100, 10, 50, 60))
    )
    (root / "Annotations" / "000001.xml").write_text(
        f"<annotation><filename>000001.jpg</filename><size><width>500</width><height>375</height></size>{objects}</annotation>"
    )
    write_image_set(root, "test", ["000001"])
    (root / "classes.txt").write_text("cat\n")
    dets = tmp_path / "dets"
    dets.mkdir()
    (dets / "comp4_det_test_cat.txt").write_text("000001 0.900000 450 100 600 200\n000001 0.800000 50 10 100 60\n")
    assert _naive_match([0, 0], [0.9, 0.8], [[450, 100, 600, 200], [50, 10, 100, 60]], [0, 0],
                        [[400, 100, 600, 200], [100, 10, 50, 60]], [False, False]) == ["tp", "fp"]  # fmt: skip
    for method, expected in (("voc07", 6 / 11), ("voc12", 0.5)):
        status, out, err = run_cli("eval", "--detections", dets, "--voc-root", root, "--split", "test",
                                   "--method", method, "--out", tmp_path / method, "--no-plot")  # fmt: skip
        assert status == 0, err
        assert json.loads((tmp_path / method / "metrics.json").read_text())["ap"]["cat"] == pytest.approx(expected, abs=1e-12)
