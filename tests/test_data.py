"""Dataset preparation: VOC parsing against VOCmini's own lists, the `ssd data` commands, bad data under
both policies, custom VOC-layout and COCO data, and the download path against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import tarfile
import threading
import xml.etree.ElementTree as ET
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import VOCMINI, need
from ssd.cli import main
from ssd.config import VOC_CLASSES
from ssd.data import download as download_mod
from ssd.data.dataset import DetectionDataset, read_image
from ssd.data.download import Archive, download, download_voc, extract
from ssd.data.index import DatasetIndex, build_coco_index, build_voc_index, summary_lines
from ssd.data.transforms import EvalTransform
from ssd.data.voc import (
    parse_voc_xml,
    read_image_set,
    voc_pixels_to_continuous,
    voc_xml,
    write_image_set,
    write_voc_xml,
)
from ssd.errors import SSDError

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip
settings.load_profile("ci")

SPLITS = {"trainval": (300, 833, 156), "test": (150, 486, 88)}


# --------------------------------------------------------------------------------------------------
# helpers


def xml_objects(xml: Path) -> tuple[tuple[int, int], list[tuple[str, list[int], int]]]:
    """(width, height) and (name, [xmin, ymin, xmax, ymax], difficult) of each object, read independently."""
    root = ET.parse(xml).getroot()
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    objects = []
    for obj in root.findall("object"):
        box = [int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((obj.findtext("name").strip(), box, int(obj.findtext("difficult") or 0)))
    return size, objects


def copy_voc(dst: Path, splits: dict[str, list[str]], src: Path = VOCMINI) -> Path:
    """A VOC-layout folder holding copies of the given VOCmini images and annotations."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            shutil.copy(src / "Annotations" / f"{i}.xml", dst / "Annotations" / f"{i}.xml")
            shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages" / f"{i}.jpg")
    return dst


def edit_xml(xml: Path, fn) -> None:
    tree = ET.parse(xml)
    fn(tree.getroot())
    tree.write(xml)


def set_box(obj: ET.Element, **values: int) -> None:
    for tag, v in values.items():
        obj.find(f"bndbox/{tag}").text = str(v)


@pytest.fixture(scope="module")
def vocmini() -> Path:
    return need(VOCMINI)


@pytest.fixture(scope="module")
def vocmini_indexes(vocmini) -> dict[str, DatasetIndex]:
    return {s: build_voc_index(s, [(vocmini, s)], VOC_CLASSES) for s in SPLITS}


# --------------------------------------------------------------------------------------------------
# parsing VOCmini


@pytest.mark.parametrize("split", list(SPLITS))
def test_vocmini_totals_and_no_issues(vocmini_indexes, split):
    index = vocmini_indexes[split]
    assert (len(index), index.num_objects, index.num_difficult) == SPLITS[split]
    assert index.issues == []
    assert [r.id for r in index.images] == read_image_set(VOCMINI, split)


@pytest.mark.parametrize("split", list(SPLITS))
def test_per_class_lists_equal_vocmini_imagesets(vocmini_indexes, split):
    index = vocmini_indexes[split]
    for label, cls in enumerate(VOC_CLASSES, start=1):
        expected = {}
        for line in (VOCMINI / "ImageSets" / "Main" / f"{cls}_{split}.txt").read_text().splitlines():
            if line.strip():
                image_id, flag = line.split()
                expected[image_id] = int(flag)
        ours = {}
        for r in index.images:
            mine = r.labels == label
            if not mine.any():
                ours[r.id] = -1
            elif (mine & ~r.difficult).any():
                ours[r.id] = 1
            else:
                ours[r.id] = 0
        assert ours == expected, cls


@pytest.mark.parametrize("split", list(SPLITS))
def test_boxes_follow_the_pixel_convention(vocmini_indexes, split):
    for r in vocmini_indexes[split].images:
        (width, height), objects = xml_objects(VOCMINI / "Annotations" / f"{r.id}.xml")
        assert (r.width, r.height) == (width, height)
        assert Path(r.file) == (VOCMINI / "JPEGImages" / f"{r.id}.jpg").resolve()
        expected = np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b, _ in objects], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(r.boxes_xyxy_abs, expected)
        assert [VOC_CLASSES[i - 1] for i in r.labels] == [n for n, _, _ in objects]
        assert r.difficult.tolist() == [bool(d) for _, _, d in objects]


def test_index_save_load_round_trip(vocmini_indexes, tmp_path):
    index = vocmini_indexes["test"]
    path = index.save(tmp_path / "sub" / "test.json")
    assert not list(tmp_path.rglob("*.tmp"))
    loaded = DatasetIndex.load(path)
    assert (loaded.name, loaded.classes, len(loaded)) == (index.name, index.classes, len(index))
    for a, b in zip(index.images, loaded.images):
        assert (a.id, a.file, a.width, a.height) == (b.id, b.file, b.width, b.height)
        np.testing.assert_array_equal(a.boxes_xyxy_abs, b.boxes_xyxy_abs)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)
        assert b.labels.dtype == np.int64 and b.difficult.dtype == bool
    payload = json.loads(path.read_text())
    assert payload["format"] == "ssd-index" and "xmin - 1" in payload["pixel_convention"]


def test_index_load_errors(tmp_path):
    with pytest.raises(SSDError, match="not found"):
        DatasetIndex.load(tmp_path / "missing.json")
    with pytest.raises(SSDError, match="is a folder"):
        DatasetIndex.load(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SSDError, match="unreadable"):
        DatasetIndex.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(SSDError, match="not a dataset index"):
        DatasetIndex.load(tmp_path / "other.json")


def test_cli_data_voc_on_vocmini(vocmini, vocmini_indexes, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["data", "voc", "--voc2007", str(vocmini.parent), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "train: 300 images, 833 objects (156 difficult)" in stdout
    assert "test: 150 images, 486 objects (88 difficult)" in stdout
    for name, split in (("train", "trainval"), ("test", "test")):
        loaded = DatasetIndex.load(out / f"{name}.json")
        assert [r.id for r in loaded.images] == [r.id for r in vocmini_indexes[split].images]
        block = stdout.split(f"{name}: ")[1]
        for cls, (n_img, n_obj) in vocmini_indexes[split].class_counts().items():
            assert re.search(rf"^\s+{cls}\s+{n_img}\s+{n_obj}$", block, re.M), (name, cls)
    assert "problems" not in stdout


# --------------------------------------------------------------------------------------------------
# bad data


def _ids(n: int) -> list[str]:
    return read_image_set(need(VOCMINI), "trainval")[:n]


def _first_object(root: Path, i: str) -> tuple[tuple[int, int], list[int]]:
    size, objects = xml_objects(root / "Annotations" / f"{i}.xml")
    return size, objects[0][1]


def damage_corrupt_jpeg(root, i, mp):
    (root / "JPEGImages" / f"{i}.jpg").write_bytes(b"this is not a jpeg" * 10)
    return root / "JPEGImages" / f"{i}.jpg", "unreadable image", "skipped image"


def damage_missing_image(root, i, mp):
    (root / "JPEGImages" / f"{i}.jpg").unlink()
    return root / "JPEGImages" / f"{i}.jpg", "image file missing", "skipped image"


def damage_missing_xml(root, i, mp):
    (root / "Annotations" / f"{i}.xml").unlink()
    return root / "Annotations" / f"{i}.xml", f"annotation missing for image {i}", "skipped image"


def damage_malformed_xml(root, i, mp):
    xml = root / "Annotations" / f"{i}.xml"
    text = xml.read_text()
    xml.write_text(text[: len(text) // 2])
    return xml, "malformed XML", "skipped image"


def damage_missing_size(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: r.remove(r.find("size")))
    return root / "Annotations" / f"{i}.xml", "missing <size>", "skipped image"


def damage_unknown_class(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: setattr(r.find("object/name"), "text", "unicorn"))
    return root / "Annotations" / f"{i}.xml", "object 1: unknown class 'unicorn'", "dropped object"


def damage_box_partly_outside(root, i, mp):
    (w, _), _ = _first_object(root, i)
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: set_box(r.find("object"), xmax=w + 40))
    return root / "Annotations" / f"{i}.xml", "object 1: box .* extends outside", "clipped box"


def damage_box_fully_outside(root, i, mp):
    (w, _), _ = _first_object(root, i)
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: set_box(r.find("object"), xmin=w + 10, xmax=w + 40))
    return root / "Annotations" / f"{i}.xml", "object 1: box .* lies outside", "dropped object"


def damage_inverted_box(root, i, mp):
    _, (x1, _, x2, _) = _first_object(root, i)
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: set_box(r.find("object"), xmin=x2, xmax=x1))
    return root / "Annotations" / f"{i}.xml", "object 1: inverted or zero-area box", "dropped object"


def damage_zero_area_box(root, i, mp):
    # VOC pixels are inclusive: xmin == xmax is one pixel wide, xmin == xmax + 1 is empty
    _, (_, y1, _, _) = _first_object(root, i)
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: set_box(r.find("object"), ymin=y1, ymax=y1 - 1))
    return root / "Annotations" / f"{i}.xml", "object 1: inverted or zero-area box", "dropped object"


def damage_nan_box(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: set_box(r.find("object"), xmin="nan"))
    return root / "Annotations" / f"{i}.xml", "<xmin> of object 1 is not a finite number", "skipped image"


def damage_width_nan(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: setattr(r.find("size/width"), "text", "nan"))
    return root / "Annotations" / f"{i}.xml", "<width> is not a finite number", "skipped image"


def damage_difficult_inf(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: setattr(r.find("object/difficult"), "text", "inf"))
    return root / "Annotations" / f"{i}.xml", "<difficult> of object 1 is not a finite number", "skipped image"


def damage_size_mismatch(root, i, mp):
    edit_xml(root / "Annotations" / f"{i}.xml", lambda r: setattr(r.find("size/width"), "text", "999"))
    return root / "Annotations" / f"{i}.xml", "<size> says 999x", "kept image"


def damage_huge_image(root, i, mp):
    # beyond 2 x MAX_IMAGE_PIXELS Pillow refuses to open an image; VOCmini's own images stay below the limit
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)
    Image.new("RGB", (1300, 1000), (90, 120, 150)).save(root / "JPEGImages" / f"{i}.jpg")
    return root / "JPEGImages" / f"{i}.jpg", "decompression-bomb limit", "skipped image"


BAD_CASES = {
    f.__name__.removeprefix("damage_"): f
    for f in (
        damage_corrupt_jpeg, damage_missing_image, damage_missing_xml, damage_malformed_xml, damage_missing_size,
        damage_unknown_class, damage_box_partly_outside, damage_box_fully_outside, damage_inverted_box,
        damage_zero_area_box, damage_nan_box, damage_width_nan, damage_difficult_inf, damage_size_mismatch, damage_huge_image,
    )
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_data_reported_under_skip(case, tmp_path, monkeypatch):
    ids = _ids(3)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids})
    (w, h), objects = xml_objects(root / "Annotations" / f"{ids[0]}.xml")
    file, reason, action = BAD_CASES[case](root, ids[0], monkeypatch)
    index = build_voc_index("train", [(root, "trainval")], VOC_CLASSES, policy="skip")
    assert len(index.issues) == 1, index.issues
    issue = index.issues[0]
    assert Path(issue.file) == file and re.search(reason, issue.reason) and issue.action == action, issue
    assert f"    {issue}" in summary_lines(index)
    assert "1 problems: 1 " + action in "\n".join(summary_lines(index))
    ids_kept = [r.id for r in index.images]
    others = [r for r in index.images if r.id != ids[0]]
    assert [r.id for r in others] == ids[1:]  # the other images are untouched
    if action == "skipped image":
        assert ids_kept == ids[1:]
        return
    assert ids_kept == ids
    r = index.images[0]
    if action == "dropped object":
        assert len(r.labels) == len(objects) - 1
    else:
        assert len(r.labels) == len(objects)
    if case == "box_partly_outside":
        assert r.boxes_xyxy_abs[0, 2] == w
    if case == "size_mismatch":
        assert (r.width, r.height) == (w, h)  # the image's own size wins
    assert np.all(r.boxes_xyxy_abs[:, :2] >= 0) and np.all(r.boxes_xyxy_abs[:, 2] <= r.width)
    assert np.all(r.boxes_xyxy_abs[:, 3] <= r.height)
    assert np.all(r.boxes_xyxy_abs[:, 2:] > r.boxes_xyxy_abs[:, :2])


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_data_fails_under_fail_policy(case, tmp_path, monkeypatch):
    ids = _ids(2)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids})
    file, reason, _ = BAD_CASES[case](root, ids[0], monkeypatch)
    with pytest.raises(SSDError) as info:
        build_voc_index("train", [(root, "trainval")], VOC_CLASSES, policy="fail")
    message = str(info.value)
    assert message.startswith(f"{file}: ") and re.search(reason, message) and "\n" not in message


def test_unknown_policy_is_an_error(tmp_path):
    root = copy_voc(tmp_path / "VOC", {"trainval": _ids(1)})
    with pytest.raises(SSDError, match="skip or fail"):
        build_voc_index("train", [(root, "trainval")], VOC_CLASSES, policy="ignore")  # type: ignore[arg-type]


def test_unusual_but_valid_images_are_kept(tmp_path):
    """An image without objects, a greyscale and a CMYK JPEG, a one-pixel-wide box: kept, no issue; images decode to RGB."""
    ids = _ids(4)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids})
    edit_xml(root / "Annotations" / f"{ids[0]}.xml", lambda r: [r.remove(o) for o in r.findall("object")])
    for i, mode in ((ids[1], "L"), (ids[2], "CMYK")):
        path = root / "JPEGImages" / f"{i}.jpg"
        Image.open(path).convert(mode).save(path)
    _, (x1, _, _, _) = _first_object(root, ids[3])
    edit_xml(root / "Annotations" / f"{ids[3]}.xml", lambda r: set_box(r.find("object"), xmax=x1))
    index = build_voc_index("train", [(root, "trainval")], VOC_CLASSES)
    assert index.issues == []
    assert [r.id for r in index.images] == ids
    assert len(index.images[0].labels) == 0
    assert "1 without objects" in summary_lines(index)[0]
    box = index.images[3].boxes_xyxy_abs[0]
    assert box[2] - box[0] == 1  # xmin == xmax is one pixel wide
    for r in index.images:
        image = read_image(r.file)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, r.height, r.width)
    grey = read_image(index.images[1].file)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    ds = DetectionDataset(index, EvalTransform(32))
    for k in range(len(ds)):
        s = ds[k]
        assert s.image.shape == (3, 32, 32) and s.failed == ()


def test_truncated_jpeg_is_replaced_at_load_time(tmp_path):
    ids = _ids(3)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids})
    path = root / "JPEGImages" / f"{ids[0]}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # the header is intact: only decoding finds the damage
    index = build_voc_index("train", [(root, "trainval")], VOC_CLASSES)
    assert [r.id for r in index.images] == ids and index.issues == []
    with pytest.raises(SSDError) as info:
        read_image(index.images[0].file)
    assert str(path.resolve()) in str(info.value)
    ds = DetectionDataset(index, EvalTransform(32))
    with pytest.warns(UserWarning, match=re.escape(str(path.resolve()))):
        sample = ds[(0, 0)]
    assert sample.failed == (str(path.resolve()),)
    assert sample.index == 1
    expected = ds[(0, 1)]
    assert torch.equal(sample.image, expected.image) and torch.equal(sample.labels, expected.labels)
    # a dataset whose every image is unreadable ends with an error, not a hang
    for i in ids:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(data[:200])
    with pytest.warns(UserWarning), pytest.raises(SSDError, match="could not be read"):
        DetectionDataset(index, EvalTransform(32), max_replacements=2)[0]


def _all_cases_folder(tmp_path, monkeypatch) -> tuple[Path, list[str], list[tuple[Path, str, str]]]:
    ids = _ids(len(BAD_CASES) + 2)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids, "test": ids[-2:]})
    expected = [f(root, i, monkeypatch) for f, i in zip(BAD_CASES.values(), ids)]
    return root, ids, expected


def test_cli_reports_every_bad_file_under_skip(tmp_path, monkeypatch, capsys):
    root, ids, expected = _all_cases_folder(tmp_path, monkeypatch)
    out = tmp_path / "index"
    assert main(["data", "voc", "--voc2007", str(root), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    for file, reason, action in expected:
        hits = [ln for ln in lines if ln.strip().startswith(f"{file}: ") and ln.endswith(f"({action})")]
        assert len(hits) == 1 and re.search(reason, hits[0]), (file, reason)
    assert f"{len(expected)} problems" in stdout
    train = DatasetIndex.load(out / "train.json")
    skipped = sum(a == "skipped image" for _, _, a in expected)
    assert len(train) == len(ids) - skipped
    assert len(DatasetIndex.load(out / "test.json")) == 2


def test_cli_fail_policy_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    root, ids, expected = _all_cases_folder(tmp_path, monkeypatch)
    out = tmp_path / "index"
    assert main(["data", "voc", "--voc2007", str(root), "--out", str(out), "--on-error", "fail"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [ln for ln in re.split(r"[\r\n]", captured.err) if "ssd: error:" in ln]
    assert len(errors) == 1
    first_file, first_reason, _ = expected[0]
    assert errors[0].startswith(f"ssd: error: {first_file}: ") and re.search(first_reason, errors[0])
    assert not (out / "train.json").exists()


def test_cli_missing_folders_are_one_line_errors(tmp_path, capsys):
    assert main(["data", "voc", "--voc2007", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssd: error: --voc2007") and err.count("\n") == 1
    assert main(["data", "voc", "--out", str(tmp_path / "o")]) == 2
    assert "give at least one of" in capsys.readouterr().err


_BASE_XML = """<annotation><filename>{id}.jpg</filename><size><width>{w}</width><height>{h}</height>
<depth>3</depth></size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>20</ymin>
<xmax>100</xmax><ymax>120</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult><bndbox>
<xmin>1</xmin><ymin>1</ymin><xmax>{w}</xmax><ymax>{h}</ymax></bndbox></object></annotation>"""


@st.composite
def mutated_xml(draw) -> str:
    text = _BASE_XML
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "replace_number"]))
        if kind == "delete":
            a = draw(st.integers(0, len(text) - 1))
            text = text[:a] + text[a + draw(st.integers(1, 12)) :]
        elif kind == "insert":
            a = draw(st.integers(0, len(text)))
            text = text[:a] + draw(st.sampled_from(["<", ">", "&", "</x>", "-", "ä", "\x00", "9" * 30])) + text[a:]
        else:
            token = draw(st.sampled_from(["{w}", "{h}", "10", "20", "100", "120", ">1<", ">0<"]))
            value = draw(st.sampled_from(["-5", "0", "1e9", "nan", "inf", "abc", "", " 7 ", "3.5", "9" * 40]))
            text = text.replace(token, value if not token.startswith(">") else f">{value}<", 1)
    return text


@given(text=mutated_xml())
def test_mutated_xml_is_reported_never_a_crash(tmp_path_factory, text):
    """Any mutation of an annotation gives a clean index (boxes inside the image, positive area) or a reported issue."""
    i = _ids(1)[0]
    root = copy_voc(tmp_path_factory.mktemp("mut"), {"trainval": [i]})
    (root / "Annotations" / f"{i}.xml").write_text(text.replace("{id}", i).replace("{w}", "500").replace("{h}", "375"))
    index = build_voc_index("train", [(root, "trainval")], VOC_CLASSES, policy="skip")
    assert len(index) + sum(x.action == "skipped image" for x in index.issues) == 1
    for r in index.images:
        b = r.boxes_xyxy_abs
        assert np.all(np.isfinite(b)) and np.all(b[:, 2:] > b[:, :2])
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= r.width) and np.all(b[:, 3] <= r.height)
        assert len(r.labels) == len(r.difficult) == len(b)
    with_issue = {x.file for x in index.issues}
    assert with_issue <= {str(root / "Annotations" / f"{i}.xml"), str(root / "JPEGImages" / f"{i}.jpg")}


# --------------------------------------------------------------------------------------------------
# writing VOC: what is written reads back


VOCObj = namedtuple("VOCObj", "name box difficult truncated")  # any object with these fields can be written

_NAMES = st.text(alphabet="abcxyz &<>\"'-_.ä", min_size=1, max_size=12).filter(lambda n: n.strip() == n)


@st.composite
def voc_objects(draw, width: int, height: int) -> list:
    objects = []
    for _ in range(draw(st.integers(0, 4))):
        x = sorted(draw(st.lists(st.integers(1, width), min_size=2, max_size=2)))
        y = sorted(draw(st.lists(st.integers(1, height), min_size=2, max_size=2)))
        objects.append(VOCObj(draw(_NAMES), (x[0], y[0], x[1], y[1]), draw(st.booleans()), draw(st.booleans())))
    return objects


@given(data=st.data(), width=st.integers(1, 2000), height=st.integers(1, 2000))
def test_voc_xml_round_trip(tmp_path, data, width, height):
    """write_voc_xml then parse_voc_xml gives back the size, names, boxes (devkit pixels in the file, continuous
    once read), difficult flags and file name; truncated, pose and the source are in the file as the devkit
    writes them. Names are escaped, so any text survives."""
    objects = data.draw(voc_objects(width, height))
    path = tmp_path / "000042.xml"
    write_voc_xml(path, "000042", width, height, objects, database="a <test> & more")
    ann = parse_voc_xml(path)
    assert (ann.image_id, ann.filename, ann.width, ann.height) == ("000042", "000042.jpg", width, height)
    assert ann.names == tuple(o.name for o in objects)
    boxes = np.array([o.box for o in objects], dtype=float).reshape(-1, 4)
    np.testing.assert_array_equal(ann.boxes_voc_pixels, boxes)
    np.testing.assert_array_equal(ann.boxes_xyxy_abs, voc_pixels_to_continuous(boxes))
    assert ann.difficult.tolist() == [o.difficult for o in objects]
    root = ET.parse(path).getroot()
    assert root.findtext("folder") == "VOC2007" and root.findtext("source/database") == "a <test> & more"
    assert root.findtext("size/depth") == "3" and root.findtext("segmented") == "0"
    assert [int(o.findtext("truncated")) for o in root.findall("object")] == [o.truncated for o in objects]
    assert all(o.findtext("pose") == "Unspecified" for o in root.findall("object"))
    assert path.read_text(encoding="utf-8") == voc_xml("000042", width, height, objects, database="a <test> & more")


def test_image_set_round_trip(tmp_path):
    """write_image_set then read_image_set gives back the ids, also from a per-class list with flags."""
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    ids = ["000001", "000007", "2008_000123"]
    write_image_set(tmp_path, "trainval", ids)
    write_image_set(tmp_path, "dog_trainval", ids, [1, 0, -1])
    assert read_image_set(tmp_path, "trainval") == read_image_set(tmp_path, "dog_trainval") == ids
    lines = (tmp_path / "ImageSets" / "Main" / "dog_trainval.txt").read_text().splitlines()
    assert lines == ["000001  1", "000007  0", "2008_000123 -1"]  # the devkit's column layout
    with pytest.raises(ValueError):
        write_image_set(tmp_path, "cat_trainval", ids, [1])


# --------------------------------------------------------------------------------------------------
# custom data


def _custom_voc(root: Path, names_of: dict[str, list[tuple[str, list[int], int]]], splits: dict[str, list[str]]):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, objects in names_of.items():
        shutil.copy(VOCMINI / "JPEGImages" / f"{i}.jpg", root / "JPEGImages" / f"{i}.jpg")
        w, h = Image.open(root / "JPEGImages" / f"{i}.jpg").size
        body = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objects
        )
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>{w}</width><height>{h}</height></size>{body}</annotation>"
        )
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_custom_voc_layout_classes_discovered_and_listed(tmp_path, capsys):
    ids = _ids(4)
    objects = {
        ids[0]: [("widget", [10, 10, 50, 60], 0), ("gadget", [5, 5, 30, 30], 0)],
        ids[1]: [("widget", [1, 1, 100, 100], 1)],
        ids[2]: [("sprocket", [20, 30, 40, 50], 0)],
        ids[3]: [],
    }
    root = _custom_voc(tmp_path / "mine", objects, {"trainval": ids[:3], "test": ids[3:]})
    out = tmp_path / "idx"
    assert main(["data", "voc", "--root", str(root), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    train = DatasetIndex.load(out / "train.json")
    assert train.classes == ("gadget", "sprocket", "widget")  # the names found, sorted
    assert [r.labels.tolist() for r in train.images] == [[3, 1], [3], [2]]
    assert [r.difficult.tolist() for r in train.images] == [[False, False], [True], [False]]
    np.testing.assert_array_equal(train.images[0].boxes_xyxy_abs, [[9, 9, 50, 60], [4, 4, 30, 30]])
    assert re.search(r"^\s+widget\s+2\s+2$", stdout, re.M)
    test = DatasetIndex.load(out / "test.json")
    assert test.classes == train.classes and len(test) == 1 and len(test.images[0].labels) == 0

    # classes.txt gives the order (and classes that have no object yet)
    (root / "classes.txt").write_text("widget\nsprocket\ngadget\nflange\n")
    assert main(["data", "voc", "--root", str(root), "--out", str(out), "--split", "train=trainval"]) == 0
    train = DatasetIndex.load(out / "train.json")
    assert train.classes == ("widget", "sprocket", "gadget", "flange")
    assert [r.labels.tolist() for r in train.images] == [[1, 3], [1], [2]]

    # --classes overrides; a name not in the list is reported, not silently dropped
    assert main(["data", "voc", "--root", str(root), "--out", str(out), "--split", "train=trainval",
                 "--classes", "widget,gadget"]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    assert re.search(rf"{ids[2]}\.xml: object 1: unknown class 'sprocket' \(dropped object\)", stdout)
    assert DatasetIndex.load(out / "train.json").classes == ("widget", "gadget")


def test_default_splits_the_data_lacks_are_noted_not_fatal(tmp_path, capsys):
    ids = _ids(2)
    root = _custom_voc(tmp_path / "mine", {i: [("widget", [1, 1, 50, 50], 0)] for i in ids}, {"trainval": ids})
    out = tmp_path / "idx"
    assert main(["data", "voc", "--root", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "split test: no folder has ImageSets/Main/test.txt; not written" in err
    assert len(DatasetIndex.load(out / "train.json")) == 2 and not (out / "test.json").exists()
    # an explicitly requested split that is missing stays an error
    assert main(["data", "voc", "--root", str(root), "--out", str(out), "--split", "train=trainval",
                 "--split", "test=test"]) == 2  # fmt: skip
    assert "split test: no folder has ImageSets/Main/test.txt" in capsys.readouterr().err
    (root / "ImageSets" / "Main" / "trainval.txt").rename(root / "ImageSets" / "Main" / "mine.txt")
    assert main(["data", "voc", "--root", str(root), "--out", str(out), "--classes", "widget"]) == 2
    assert "choose image sets with --split" in capsys.readouterr().err


def test_custom_voc_layout_errors(tmp_path, capsys):
    assert main(["data", "voc", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no Annotations folder" in capsys.readouterr().err
    root = _custom_voc(tmp_path / "mine", {_ids(1)[0]: [("widget", [1, 1, 5, 5], 0)]}, {"trainval": _ids(1)})
    assert main(["data", "voc", "--root", str(root), "--out", str(tmp_path / "o"), "--split", "bad"]) == 2
    assert "--split 'bad'" in capsys.readouterr().err
    assert main(["data", "voc", "--root", str(root), "--out", str(tmp_path / "o"), "--split", "x=nosuchset"]) == 2
    assert "no class names found" in capsys.readouterr().err  # nothing to discover them from
    assert main(["data", "voc", "--root", str(root), "--out", str(tmp_path / "o"), "--split", "x=nosuchset",
                 "--classes", "widget"]) == 2  # fmt: skip
    assert "nosuchset.txt" in capsys.readouterr().err


def test_coco_json(tmp_path, capsys):
    ids = _ids(3)
    images = tmp_path / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [
        {"id": 42, "name": "zebra"}, {"id": 3, "name": "apple"}, {"id": 7, "name": "moose"}]}  # fmt: skip
    for k, i in enumerate(ids):
        shutil.copy(VOCMINI / "JPEGImages" / f"{i}.jpg", images / f"{i}.jpg")
        w, h = Image.open(images / f"{i}.jpg").size
        coco["images"].append({"id": 100 + k, "file_name": f"{i}.jpg", "width": w, "height": h})
    coco["annotations"] = [
        {"id": 1, "image_id": 100, "category_id": 42, "bbox": [10.5, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 100, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        {"id": 3, "image_id": 101, "category_id": 7, "bbox": [5, 6, 7, 8]},
        {"id": 4, "image_id": 101, "category_id": 99, "bbox": [5, 6, 7, 8]},  # unknown category: reported
        {"id": 5, "image_id": 101, "category_id": 7, "bbox": [-10, 6, 20, 8]},  # clipped: reported
    ]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "idx"
    assert main(["data", "coco", "--json", str(tmp_path / "ann.json"), "--images", str(images),
                 "--out", str(out), "--name", "mine"]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    index = DatasetIndex.load(out / "mine.json")
    assert index.classes == ("apple", "moose", "zebra")  # categories sorted by id: 3, 7, 42
    assert [r.id for r in index.images] == ["100", "101", "102"]
    a, b, c = index.images
    assert a.labels.tolist() == [3, 1] and a.difficult.tolist() == [False, True]  # crowd -> difficult
    np.testing.assert_allclose(a.boxes_xyxy_abs, [[10.5, 20, 40.5, 60], [0, 0, 50, 50]])
    assert b.labels.tolist() == [2, 2]
    np.testing.assert_allclose(b.boxes_xyxy_abs, [[5, 6, 12, 14], [0, 6, 10, 14]])
    assert len(c.labels) == 0
    assert "unknown category 99 (dropped object)" in stdout
    assert "extends outside" in stdout and "(clipped box)" in stdout
    assert "2 problems" in stdout

    # explicit class order by name
    index = build_coco_index("x", tmp_path / "ann.json", images, classes=["zebra", "moose", "apple"])
    assert index.images[0].labels.tolist() == [1, 3]

    # a missing image is reported; under "fail" it names the file
    (images / f"{ids[2]}.jpg").unlink()
    index = build_coco_index("x", tmp_path / "ann.json", images)
    assert any(x.file == str(images / f"{ids[2]}.jpg") and x.action == "skipped image" for x in index.issues)
    assert main(["data", "coco", "--json", str(tmp_path / "ann.json"), "--images", str(images),
                 "--out", str(out), "--on-error", "fail"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown category 99" in err


def test_coco_malformed_entries_are_reported(tmp_path, capsys):
    i = _ids(1)[0]
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(VOCMINI / "JPEGImages" / f"{i}.jpg", images / f"{i}.jpg")
    coco = {
        "images": [{"id": 1, "file_name": f"{i}.jpg"}, {"id": 2}],  # the second has no file name
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 2]},  # malformed box
            {"id": 3, "image_id": 1, "category_id": 1},  # no box
            {"id": 4, "image_id": 77, "category_id": 1, "bbox": [1, 2, 3, 4]},  # no such image
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    index = build_coco_index("x", tmp_path / "ann.json", images)
    assert len(index) == 1 and index.images[0].labels.tolist() == [1]
    reasons = " | ".join(str(x) for x in index.issues)
    assert len(index.issues) == 4, reasons
    assert "annotation 2" in reasons and "annotation 3" in reasons and "image 77" in reasons
    for bad in ("not json", '{"images": []}'):
        (tmp_path / "bad.json").write_text(bad)
        assert main(["data", "coco", "--json", str(tmp_path / "bad.json"), "--images", str(images),
                     "--out", str(tmp_path / "o")]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith("ssd: error: ") and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# download


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with single-range ``bytes=N-`` support (206 / 416)."""

    def do_GET(self):  # noqa: N802
        server = self.server
        rng = self.headers.get("Range")
        data = server.files.get(self.path)
        if data is None:
            server.requests.append((self.path, rng, 404))
            self.send_error(404)
            return
        start = 0
        if rng is not None and server.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                server.requests.append((self.path, rng, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            server.requests.append((self.path, rng, 206))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            server.requests.append((self.path, rng, 200))
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.files, server.requests, server.honour_range = {}, [], True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _voc_tar(year: str, sets: dict[str, list[str]]) -> bytes:
    members = {}
    for split, ids in sets.items():
        members[f"VOCdevkit/VOC{year}/ImageSets/Main/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
        for i in ids:
            members[f"VOCdevkit/VOC{year}/Annotations/{i}.xml"] = (VOCMINI / "Annotations" / f"{i}.xml").read_bytes()
            members[f"VOCdevkit/VOC{year}/JPEGImages/{i}.jpg"] = (VOCMINI / "JPEGImages" / f"{i}.jpg").read_bytes()
    return _tar(members)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def tiny_tar() -> bytes:
    need(VOCMINI)
    return _voc_tar("2007", {"trainval": _ids(2)})


TAR_PATH = "/voc2007/VOCtrainval_06-Nov-2007.tar"


def test_download_completes(http_server, tiny_tar, tmp_path):
    http_server.files[TAR_PATH] = tiny_tar
    dest = tmp_path / "dl" / "VOCtrainval_06-Nov-2007.tar"
    assert download(http_server.url + TAR_PATH, dest, md5(tiny_tar), progress=False) == dest
    assert dest.read_bytes() == tiny_tar and not dest.with_name(dest.name + ".part").exists()
    assert http_server.requests == [(TAR_PATH, None, 200)]
    # a finished file with the right checksum is not fetched again
    download(http_server.url + TAR_PATH, dest, md5(tiny_tar), progress=False)
    assert len(http_server.requests) == 1


def test_download_resumes_a_partial_file(http_server, tiny_tar, tmp_path):
    http_server.files[TAR_PATH] = tiny_tar
    dest = tmp_path / "VOCtrainval_06-Nov-2007.tar"
    part = tmp_path / "VOCtrainval_06-Nov-2007.tar.part"
    have = len(tiny_tar) // 3
    part.write_bytes(tiny_tar[:have])
    download(http_server.url + TAR_PATH, dest, md5(tiny_tar), progress=False)
    assert http_server.requests == [(TAR_PATH, f"bytes={have}-", 206)]
    assert dest.read_bytes() == tiny_tar and not part.exists()


def test_download_with_progress_bar(http_server, tiny_tar, tmp_path, capsys):
    http_server.files[TAR_PATH] = tiny_tar
    part = tmp_path / "a.tar.part"
    part.write_bytes(tiny_tar[:1000])
    download(http_server.url + TAR_PATH, tmp_path / "a.tar", md5(tiny_tar), progress=True)
    assert (tmp_path / "a.tar").read_bytes() == tiny_tar


def test_download_complete_part_and_server_without_ranges(http_server, tiny_tar, tmp_path):
    http_server.files[TAR_PATH] = tiny_tar
    # the partial file already holds everything: the server answers 416 and the file is checked and kept
    (tmp_path / "a.tar.part").write_bytes(tiny_tar)
    download(http_server.url + TAR_PATH, tmp_path / "a.tar", md5(tiny_tar), progress=False)
    assert (tmp_path / "a.tar").read_bytes() == tiny_tar
    assert http_server.requests[-1] == (TAR_PATH, f"bytes={len(tiny_tar)}-", 416)
    # a server that ignores Range sends the whole file (200): it replaces the partial one
    http_server.honour_range = False
    (tmp_path / "b.tar.part").write_bytes(b"x" * 500)
    download(http_server.url + TAR_PATH, tmp_path / "b.tar", md5(tiny_tar), progress=False)
    assert (tmp_path / "b.tar").read_bytes() == tiny_tar
    assert http_server.requests[-1] == (TAR_PATH, "bytes=500-", 200)


def test_download_checksum_mismatch_deletes_the_file(http_server, tiny_tar, tmp_path):
    http_server.files[TAR_PATH] = tiny_tar
    dest = tmp_path / "VOCtrainval_06-Nov-2007.tar"
    with pytest.raises(SSDError, match="checksum mismatch") as info:
        download(http_server.url + TAR_PATH, dest, "0" * 32, progress=False)
    assert "VOCtrainval_06-Nov-2007.tar" in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_download_errors(http_server, tmp_path):
    with pytest.raises(SSDError, match="HTTP 404"):
        download(http_server.url + "/missing.tar", tmp_path / "m.tar", progress=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SSDError, match="download of .* failed"):
        download(f"http://127.0.0.1:{port}/x.tar", tmp_path / "x.tar", progress=False, timeout=5)
    assert not (tmp_path / "x.tar").exists()


def test_download_voc_extracts(http_server, tiny_tar, tmp_path):
    http_server.files[TAR_PATH] = tiny_tar
    archive = Archive(TAR_PATH.lstrip("/"), md5(tiny_tar), "tiny")
    devkit = download_voc(tmp_path / "voc", http_server.url + "/", archives=[archive], progress=False)
    assert devkit == tmp_path / "voc" / "VOCdevkit"
    ids = read_image_set(devkit / "VOC2007", "trainval")
    assert ids == _ids(2)
    for i in ids:
        assert (devkit / "VOC2007" / "JPEGImages" / f"{i}.jpg").read_bytes() == (VOCMINI / "JPEGImages" / f"{i}.jpg").read_bytes()
    index = build_voc_index("train", [(devkit / "VOC2007", "trainval")], VOC_CLASSES)
    assert len(index) == 2 and index.issues == []
    n = len(http_server.requests)
    download_voc(tmp_path / "voc", http_server.url, archives=[archive], progress=False)  # done: nothing fetched
    assert len(http_server.requests) == n


def test_cli_download_from_mirror(http_server, tmp_path, monkeypatch, capsys):
    ids = _ids(4)
    tar07 = _voc_tar("2007", {"trainval": ids[:2], "test": ids[2:3]})
    tar12 = _voc_tar("2012", {"trainval": ids[3:]})
    http_server.files.update({TAR_PATH: tar07, "/voc2012/VOCtrainval_11-May-2012.tar": tar12})
    archives = [Archive(TAR_PATH.lstrip("/"), md5(tar07), "tiny"), Archive("voc2012/VOCtrainval_11-May-2012.tar", md5(tar12), "tiny")]
    real = download_mod.download_voc
    monkeypatch.setattr(download_mod, "download_voc", lambda folder, base: real(folder, base, archives, progress=False))
    out = tmp_path / "idx"
    assert main(["data", "voc", "--download", str(tmp_path / "voc"), "--mirror", http_server.url, "--out", str(out)]) == 0
    assert [r.id for r in DatasetIndex.load(out / "train.json").images] == ids[:2] + ids[3:]
    assert [r.id for r in DatasetIndex.load(out / "test.json").images] == ids[2:3]
    # an unreachable mirror is a one-line error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["data", "voc", "--download", str(tmp_path / "v2"), "--mirror", f"http://127.0.0.1:{port}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ssd: error: download of" in err and "Traceback" not in err


def _write_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w") as tar:
        build(tar)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def test_extract_refuses_escaping_and_link_members(tmp_path):
    into = tmp_path / "into"
    into.mkdir()
    escaping = _write_tar(tmp_path / "esc.tar", lambda t: (_add(t, "ok.txt"), _add(t, "../x")))
    with pytest.raises(SSDError, match=r"outside the target folder: \.\./x"):
        extract(escaping, into)
    absolute = _write_tar(tmp_path / "abs.tar", lambda t: _add(t, str(tmp_path / "abs_target")))
    with pytest.raises(SSDError, match="outside the target folder"):
        extract(absolute, into)
    symlink = _write_tar(tmp_path / "sym.tar", lambda t: (_add(t, "ok.txt"), _add(t, "link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")))
    with pytest.raises(SSDError, match="refusing link member link"):
        extract(symlink, into)
    hardlink = _write_tar(tmp_path / "hard.tar", lambda t: _add(t, "h", b"", type=tarfile.LNKTYPE, linkname="ok.txt"))
    with pytest.raises(SSDError, match="refusing link member h"):
        extract(hardlink, into)
    assert list(into.iterdir()) == [] and not (tmp_path / "x").exists() and not (tmp_path / "abs_target").exists()
    (tmp_path / "not.tar").write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(SSDError, match="not a readable tar archive"):
        extract(tmp_path / "not.tar", into)
    good = _write_tar(tmp_path / "good.tar", lambda t: _add(t, "a/b.txt", b"hello"))
    extract(good, into)
    assert (into / "a" / "b.txt").read_bytes() == b"hello"


def test_cli_synthetic(tmp_path, capsys):
    """``ssd data synthetic``: the dataset, its two indexes and the per-class table; --classes picks the shapes
    (and their label order); a bad class is a message and exit code 2, with nothing written."""
    out = tmp_path / "shapes"
    args = ["data", "synthetic", "--out", str(out), "--num-trainval", "6", "--num-test", "2", "--seed", "4"]
    assert main(args + ["--classes", "bar, dash,circle"]) == 0
    train, test = DatasetIndex.load(out / "train.json"), DatasetIndex.load(out / "test.json")
    assert train.classes == test.classes == ("bar", "dash", "circle")
    assert (len(train.images), len(test.images)) == (6, 2)
    assert (out / "VOC" / "VOC2007" / "classes.txt").read_text() == "bar\ndash\ncircle\n"
    assert "dash" in capsys.readouterr().out

    assert main(["data", "synthetic", "--out", str(tmp_path / "bad"), "--classes", "circle,blob"]) == 2
    assert "unknown class 'blob'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_verify_decodes_whole_files_and_reports_truncated_ones(tmp_path, capsys):
    """A JPEG cut in half passes the header check; `ssd data voc --verify` decodes it as training would, reports it
    and leaves it out, and says how long verifying took (`ssd data coco --verify` shares the check: index._image_size)."""
    ids = _ids(3)
    root = copy_voc(tmp_path / "VOC", {"trainval": ids})
    image = root / "JPEGImages" / f"{ids[1]}.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    args = ["data", "voc", "--root", str(root), "--split", "train=trainval", "--classes", ",".join(VOC_CLASSES)]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert len(DatasetIndex.load(tmp_path / "plain" / "train.json").images) == 3  # the header is fine
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "verified"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"verified: decoded 2 images whole in [\d.]+ s", out), out
    assert "truncated" in out and ids[1] in out
    assert [r.id for r in DatasetIndex.load(tmp_path / "verified" / "train.json").images] == [ids[0], ids[2]]
    assert main([*args, "--out", str(tmp_path / "strict"), "--verify", "--on-error", "fail"]) == 2
    assert "truncated" in capsys.readouterr().err


def test_jpeg_decoders_agree_on_vocmini():
    """docs/performance.md's claim behind the decoder order: torchvision's libjpeg-turbo (the fast path) and Pillow
    (the fallback for what it refuses) give the same pixels, so which one decoded a file never shows in training."""
    from ssd.data.image import load_image

    files = sorted(need(VOCMINI / "JPEGImages").glob("*.jpg"))[::9]  # 50 of the 450, spread over the ids
    assert len(files) == 50
    for path in files:
        with Image.open(path) as im:
            pillow = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(load_image(path), pillow), path.name  # load_image: torchvision's decoder first
