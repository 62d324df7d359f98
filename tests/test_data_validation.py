"""Hostile annotation files: every malformed COCO or VOC entry is reported with the item and the reason, or refused
in one line; nothing is relabelled, copied onto another image, read from outside the dataset's folders, or
crashes with a traceback. The cases are the ones an attacker (or a broken converter) writes, then a fuzzer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssd.cli import main
from ssd.data.index import build_coco_index, build_voc_index
from ssd.data.voc import MAX_ANNOTATION_BYTES, write_image_set
from ssd.errors import SSDError

GOOD = {
    "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2, 2, 10, 10]},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """``images/a.png``, ``images/b.png`` (64 x 48), and ``outside.png`` beside the image folder."""
    (tmp_path / "images").mkdir()
    for name in ("images/a.png", "images/b.png", "outside.png"):
        Image.new("RGB", (64, 48), "gray").save(tmp_path / name)
    return tmp_path


def _index(folder: Path, coco: dict, **kw):
    (folder / "ann.json").write_text(json.dumps(coco))
    return build_coco_index("t", folder / "ann.json", folder / "images", **kw)


def _reasons(index) -> str:
    return " | ".join(str(i) for i in index.issues)


@pytest.mark.parametrize(
    "where, value, match",
    [
        ("categories", None, "'categories' must be a list, not null"),
        ("annotations", {"0": {}}, "'annotations' must be a list, not dict"),
        ("categories", [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}], "category id 1 is listed twice"),
        ("categories", [{"id": [1], "name": "cat"}], "malformed category"),
        ("categories", [{"id": True, "name": "cat"}], "malformed category"),
        ("categories", [{"id": 1, "name": None}], "malformed category"),
    ],
)
def test_ambiguous_or_malformed_categories_are_refused(coco_dir, where, value, match):
    coco = {**copy.deepcopy(GOOD), where: value}
    with pytest.raises(SSDError, match=match) as err:
        _index(coco_dir, coco)
    assert "\n" not in str(err.value)


def test_a_category_name_under_two_ids_is_one_class(coco_dir):
    """Exports often list a class again as its own supercategory: both ids get the one label of that name."""
    coco = copy.deepcopy(GOOD)
    coco["categories"] = [{"id": 0, "name": "dog"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    index = _index(coco_dir, coco)
    assert index.classes == ("dog", "cat") and [r.labels.tolist() for r in index.images] == [[2], [1]]
    index = _index(coco_dir, coco, classes=["cat", "dog"])
    assert [r.labels.tolist() for r in index.images] == [[1], [2]]


def test_an_image_id_listed_twice_keeps_the_first_and_copies_nothing(coco_dir):
    coco = copy.deepcopy(GOOD)
    coco["images"].append({"id": 1, "file_name": "b.png"})
    index = _index(coco_dir, coco)
    assert [(r.id, Path(r.file).name, r.labels.tolist()) for r in index.images] == [("1", "a.png", [1]), ("2", "b.png", [2])]
    assert "image id 1 is listed twice ('a.png', 'b.png') (skipped image)" in _reasons(index)


@pytest.mark.parametrize("name", ["../outside.png", "{root}/outside.png", "sub/../../outside.png", "C:\\outside.png"])
def test_file_names_that_leave_the_image_folder_are_skipped(coco_dir, name):
    coco = copy.deepcopy(GOOD)
    coco["images"][0]["file_name"] = name.format(root=coco_dir)
    index = _index(coco_dir, coco)
    assert [r.id for r in index.images] == ["2"]
    assert "leaves the image folder (skipped image)" in _reasons(index)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"bbox": "1234"}, "malformed bbox"),  # a string iterates to four digits: never read as numbers
        ({"bbox": [1, "2", 3, 4]}, "malformed bbox"),
        ({"bbox": [True, 1, 5, 5]}, "malformed bbox"),
        ({"bbox": None}, "malformed bbox"),
        ({"bbox": [1, 2, 3, 4, 5]}, "malformed bbox"),
        ({"category_id": "1"}, "unknown category '1'"),
        ({"category_id": None}, "unknown category None"),
        ({"category_id": 9}, "unknown category 9"),
        ({"iscrowd": "yes"}, "iscrowd must be 0 or 1"),
    ],
)
def test_malformed_annotations_are_dropped_with_the_reason(coco_dir, change, reason):
    coco = copy.deepcopy(GOOD)
    coco["annotations"][0].update(change)
    index = _index(coco_dir, coco)
    assert [r.labels.tolist() for r in index.images] == [[], [2]]
    assert f"annotation 1: {reason}" in _reasons(index)


def test_under_the_fail_policy_the_cli_names_the_item_in_one_line(coco_dir, capsys):
    coco = copy.deepcopy(GOOD)
    coco["images"][1]["file_name"] = "../outside.png"
    (coco_dir / "ann.json").write_text(json.dumps(coco))
    rc = main(["data", "coco", "--json", str(coco_dir / "ann.json"), "--images", str(coco_dir / "images"),
               "--out", str(coco_dir / "out"), "--on-error", "fail"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'../outside.png' leaves the image folder" in err and not (coco_dir / "out").exists()


def test_max_objects_is_a_cli_option(coco_dir, capsys):
    coco = copy.deepcopy(GOOD)
    coco["annotations"] += [{"id": 10 + k, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3]} for k in range(5)]
    (coco_dir / "ann.json").write_text(json.dumps(coco))
    assert main(["data", "coco", "--json", str(coco_dir / "ann.json"), "--images", str(coco_dir / "images"),
                 "--out", str(coco_dir / "out"), "--max-objects", "3", "--name", "t"]) == 0  # fmt: skip
    assert "6 objects, over the limit of 3 (--max-objects) (skipped image)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["data", "coco", "--json", str(coco_dir / "ann.json"), "--images", str(coco_dir / "images"),
              "--out", str(coco_dir / "out"), "--max-objects", "0"])  # fmt: skip
    assert exit_.value.code == 2 and "argument --max-objects: 0 is not positive" in capsys.readouterr().err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.sampled_from(["a.png", "../x", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["id", "bbox", "name"]), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["images", "annotations", "categories"]), item=st.integers(0, 1),
       key=st.sampled_from(["id", "image_id", "category_id", "bbox", "file_name", "name", "iscrowd"]), value=JSON)  # fmt: skip
def test_fuzzed_entries_give_an_index_or_a_one_line_error(coco_dir, where, item, key, value):
    coco = copy.deepcopy(GOOD)
    coco[where][item][key] = value
    try:
        index = _index(coco_dir, coco)
    except SSDError as err:
        assert "\n" not in str(err)
        return
    for record in index.images:
        assert Path(record.file).parent == (coco_dir / "images").resolve()
        assert set(record.labels.tolist()) <= {1, 2}


def _voc(root: Path, ids: list[str], filename_of: dict[str, str] | None = None) -> Path:
    """A VOC year folder with one 64 x 48 image and annotation per id (``filename_of`` overrides <filename>)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in dict.fromkeys(ids):
        Image.new("RGB", (64, 48)).save(root / "JPEGImages" / f"{i}.jpg")
        name = (filename_of or {}).get(i, f"{i}.jpg")
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>64</width><height>48</height></size>"
            "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>"
            "</object></annotation>"
        )
    write_image_set(root, "train", ids)
    return root


def test_voc_ids_listed_twice_or_leaving_the_folders_are_skipped(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "secret.jpg")
    root = _voc(tmp_path / "VOC", ["a", "b", "a", "c"], {"c": "../../secret.jpg"})
    (root / "Annotations" / "sub").mkdir()
    (root / "JPEGImages" / "sub").mkdir()
    (root / "Annotations" / "sub" / "d.xml").write_text((root / "Annotations" / "a.xml").read_text().replace("a.jpg", "sub/d.jpg"))
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "sub" / "d.jpg")
    (root / "ImageSets/Main/train.txt").write_text("a\nb\na\nc\n../Annotations/b\nsub/d\n")
    index = build_voc_index("t", [(root, "train")], ["cat"])
    assert [r.id for r in index.images] == ["a", "b", "sub/d"]  # an id in a subfolder is fine
    reasons = _reasons(index)
    assert "image id 'a' is listed twice (skipped image)" in reasons
    assert "<filename> '../../secret.jpg' leaves the JPEGImages folder (skipped image)" in reasons
    assert "image id '../Annotations/b' leaves the dataset's folders (skipped image)" in reasons


def test_voc_annotation_files_over_the_size_limit_are_skipped_unparsed(tmp_path):
    root = _voc(tmp_path / "VOC", ["a", "b"])
    xml = root / "Annotations" / "b.xml"
    body = "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
    xml.write_text("<annotation><size><width>64</width><height>48</height></size>"
                   + body * (MAX_ANNOTATION_BYTES // len(body) + 1) + "</annotation>")  # fmt: skip
    index = build_voc_index("t", [(root, "train")], ["cat"], max_objects=10**9)
    assert [r.id for r in index.images] == ["a"]
    assert f"over the limit of {MAX_ANNOTATION_BYTES}" in _reasons(index)


def test_voc_images_with_too_many_objects_are_skipped(tmp_path):
    root = _voc(tmp_path / "VOC", ["a", "b"])
    index = build_voc_index("t", [(root, "train")], ["cat"], max_objects=0)
    assert len(index) == 0 and "1 objects, over the limit of 0 (--max-objects)" in _reasons(index)
