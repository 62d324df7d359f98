"""Dataset indexes: the one file per split that every other command reads.

``ssd data voc`` / ``ssd data coco`` parse annotations once into an index (JSON)::

    {"format": "ssd-index", "version": 1, "name": "train",
     "classes": ["aeroplane", ...],            # label i (1..K) is classes[i - 1]; 0 is background
     "images": [{"id": "000005", "file": "/abs/JPEGImages/000005.jpg", "width": 500, "height": 375,
                 "boxes": [[x1, y1, x2, y2], ...],   # continuous absolute pixels (see ssd.data.voc)
                 "labels": [9, ...], "difficult": [0, ...]}, ...]}

Problems in the data (a missing image, malformed XML, an unknown class, a box outside the image or
with no area, an unreadable or oversized image) are collected as :class:`Issue` records naming the
file and the reason. With ``policy="skip"`` (default) the bad object or image is left out and the
issue reported; with ``policy="fail"`` the first one raises :class:`~ssd.errors.SSDError`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from ssd.errors import SSDError
from ssd.paths import stays_inside, write_atomically

INDEX_FORMAT = "ssd-index"
INDEX_VERSION = 1
Policy = Literal["skip", "fail"]

MAX_OBJECTS_PER_IMAGE = 1000
"""Default bound on one image's objects (``--max-objects``): above the most crowded images of COCO (93) or dense
retail sets (SKU-110K, about 700); an image with more is reported and skipped, so training's memory (matching is
objects x priors per image) never depends on one file."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects; ``boxes_xyxy_abs`` (M, 4) continuous pixels, labels 1..K: the objects to train
    on, boxes clipped to the image and inverted or empty ones dropped. Where that cleaning changed anything,
    ``as_written`` keeps the annotation's objects as the file gives them (boxes, labels, difficult), which the VOC
    scorer uses, as the devkit scores the annotation as it is (:meth:`scored_objects`)."""

    id: str
    file: str
    width: int
    height: int
    boxes_xyxy_abs: np.ndarray  # (M, 4) float32
    labels: np.ndarray  # (M,) int64
    difficult: np.ndarray  # (M,) bool
    as_written: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def scored_objects(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes_xyxy_abs, labels, difficult) as the annotation writes them, for scoring."""
        return self.as_written if self.as_written is not None else (self.boxes_xyxy_abs, self.labels, self.difficult)

    def to_json(self) -> dict:
        out = {"id": self.id, "file": self.file, "width": self.width, "height": self.height,
               **_objects_json(self.boxes_xyxy_abs, self.labels, self.difficult)}  # fmt: skip
        if self.as_written is not None:
            out["as_written"] = _objects_json(*self.as_written)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ImageRecord":
        written = d.get("as_written")
        return cls(str(d["id"]), str(d["file"]), int(d["width"]), int(d["height"]), *_objects_from_json(d),
                   as_written=None if written is None else _objects_from_json(written))  # fmt: skip


def _objects_json(boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray) -> dict:
    return {"boxes": [[round(float(v), 4) for v in b] for b in boxes], "labels": [int(v) for v in labels],
            "difficult": [int(v) for v in difficult]}  # fmt: skip


def _objects_from_json(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(d["boxes"], dtype=np.float32).reshape(-1, 4), np.asarray(d["labels"], dtype=np.int64).reshape(-1),
            np.asarray(d["difficult"], dtype=bool).reshape(-1))  # fmt: skip


@dataclass(frozen=True)
class Issue:
    """A problem found in the data: which file, what, and what was done about it."""

    file: str
    reason: str
    action: str  # "skipped image", "dropped object", "clipped box"

    def __str__(self) -> str:
        return f"{self.file}: {self.reason} ({self.action})"


@dataclass
class DatasetIndex:
    """A named split: class names and image records."""

    name: str
    classes: tuple[str, ...]
    images: list[ImageRecord]
    issues: list[Issue] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_objects(self) -> int:
        return sum(len(r.labels) for r in self.images)

    @property
    def num_difficult(self) -> int:
        return sum(int(r.difficult.sum()) for r in self.images)

    def class_counts(self) -> dict[str, tuple[int, int]]:
        """Per class: (images containing it, objects)."""
        images, objects = Counter(), Counter()
        for r in self.images:
            objects.update(r.labels.tolist())
            images.update(set(r.labels.tolist()))
        return {c: (images[i], objects[i]) for i, c in enumerate(self.classes, start=1)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "pixel_convention": "boxes are continuous [x1, y1, x2, y2] pixels; VOC's 1-based "
            "inclusive [xmin, ymin, xmax, ymax] is stored as [xmin - 1, ymin - 1, xmax, ymax]",
            "images": [r.to_json() for r in self.images],
        }
        text = json.dumps(payload, separators=(",", ":"))
        return write_atomically(path, lambda f: f.write(text.encode("utf-8")), sync=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetIndex":
        path = Path(path)
        if path.is_dir():
            raise SSDError(f"{path} is a folder; give an index file made by `ssd data` (e.g. {path}/train.json)")
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            raise SSDError(f"dataset index not found: {path} (make one with `ssd data voc|coco|synthetic`)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise SSDError(f"{path}: unreadable dataset index: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != INDEX_FORMAT:
            raise SSDError(f"{path}: not a dataset index made by `ssd data`")
        try:
            images = [ImageRecord.from_json(d) for d in payload["images"]]
            return cls(str(payload.get("name", path.stem)), tuple(payload["classes"]), images)
        except (KeyError, TypeError, ValueError) as e:
            raise SSDError(f"{path}: malformed dataset index: {e}") from e


class _Collector:
    """Collects issues, or raises on the first one under the "fail" policy."""

    def __init__(self, policy: Policy) -> None:
        if policy not in ("skip", "fail"):
            raise SSDError(f"--on-error must be skip or fail, not {policy!r}")
        self.policy = policy
        self.issues: list[Issue] = []

    def add(self, file: str | Path, reason: str, action: str) -> None:
        issue = Issue(str(file), reason, action)
        if self.policy == "fail":
            raise SSDError(str(issue).rsplit(" (", 1)[0])
        self.issues.append(issue)


def _image_size(path: Path, verify: bool = False) -> tuple[int, int]:
    """(width, height) from the image header, or with ``verify`` from decoding the whole file as training reads it
    (a truncated or corrupt file passes the header check); raises SSDError for unreadable or oversized images."""
    from PIL import Image

    if verify and path.is_file():
        from ssd.data.image import load_image

        image = load_image(path, upright=False)  # as ssd.data.dataset reads it
        return int(image.shape[2]), int(image.shape[1])
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:
        raise SSDError(f"image too large (Pillow's decompression-bomb limit): {e}") from e
    except FileNotFoundError:
        raise SSDError("image file missing") from None
    except Exception as e:  # PIL raises many types for bad files
        raise SSDError(f"unreadable image: {type(e).__name__}: {e}") from e


def _clean_objects(
    file: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
    issues: _Collector,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip boxes to the image; drop inverted or zero-area ones (each reported)."""
    keep = np.ones(len(boxes), dtype=bool)
    out = boxes.astype(np.float64).copy()
    for j, b in enumerate(boxes):
        if not np.all(np.isfinite(b)):
            issues.add(file, f"object {j + 1}: box {b.tolist()} is not finite", "dropped object")
            keep[j] = False
            continue
        if b[2] <= b[0] or b[3] <= b[1]:
            issues.add(file, f"object {j + 1}: inverted or zero-area box {b.tolist()}", "dropped object")
            keep[j] = False
            continue
        clipped = np.array([max(b[0], 0), max(b[1], 0), min(b[2], width), min(b[3], height)])
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            issues.add(file, f"object {j + 1}: box {b.tolist()} lies outside the {width}x{height} image", "dropped object")
            keep[j] = False
            continue
        if not np.array_equal(clipped, b):
            issues.add(file, f"object {j + 1}: box {b.tolist()} extends outside the {width}x{height} image", "clipped box")
            out[j] = clipped
    return out[keep].astype(np.float32), labels[keep], difficult[keep]


def _record(image_id: str, file: Path, width: int, height: int, boxes: np.ndarray, labels: np.ndarray,
            difficult: np.ndarray, issues: _Collector, where: str) -> ImageRecord:
    """An image's record: its objects cleaned for training (:func:`_clean_objects`, each change reported), and as
    written (finite boxes only) where the cleaning changed them."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clean = _clean_objects(where, width, height, boxes, labels, difficult, issues)
    finite = np.isfinite(boxes).all(axis=1)
    changed = len(clean[0]) != len(boxes) or not np.array_equal(clean[0], boxes.astype(np.float32))
    written = (boxes[finite].astype(np.float32), labels[finite], difficult[finite]) if changed else None
    return ImageRecord(image_id, str(file.resolve()), width, height, *clean, as_written=written)


def voc_classes_of(voc_roots: Iterable[str | Path], splits: Sequence[str]) -> tuple[str, ...]:
    """Class names for a VOC-layout dataset: ``classes.txt`` beside ``Annotations`` if present, else
    the sorted names found in the annotations of the given splits."""
    from ssd.data.voc import parse_voc_xml, read_image_set

    roots = [Path(r) for r in voc_roots]
    for root in roots:
        listed = root / "classes.txt"
        if listed.is_file():
            names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
            if names:
                return tuple(names)
    names = set()
    for root in roots:
        for split in splits:
            if not (root / "ImageSets" / "Main" / f"{split}.txt").is_file():
                continue
            for image_id in read_image_set(root, split):
                try:
                    names.update(parse_voc_xml(root / "Annotations" / f"{image_id}.xml").names)
                except SSDError:
                    pass  # reported when the index is built
    if not names:
        raise SSDError(f"no class names found in {', '.join(map(str, roots))}")
    return tuple(sorted(names))


def _voc_todo(sources: Sequence[tuple[str | Path, str]], issues: _Collector) -> list[tuple[Path, str, str]]:
    """(root, split, image id) for each id of each image set, once: an id listed twice, or one that would leave
    the dataset's folders (absolute, ``..``), is reported and skipped; ids in subfolders are kept."""
    from ssd.data.voc import read_image_set

    todo, seen = [], set()
    for root, split in sources:
        root = Path(root)
        if not root.is_dir():
            raise SSDError(f"VOC folder not found: {root}")
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        for image_id in read_image_set(root, split):
            if not stays_inside(image_id):
                issues.add(listing, f"image id {image_id!r} leaves the dataset's folders", "skipped image")
            elif (root.resolve(), image_id) in seen:
                issues.add(listing, f"image id {image_id!r} is listed twice", "skipped image")
            else:
                seen.add((root.resolve(), image_id))
                todo.append((root, split, image_id))
    return todo


def _voc_image_path(root: Path, image_id: str, filename: str, xml: Path, issues: _Collector) -> Path | None:
    """The image an annotation names (``<filename>``, else ``<id>.jpg``) inside ``JPEGImages``; None (reported)
    when the name would leave that folder."""
    if not stays_inside(filename):
        issues.add(xml, f"<filename> {filename!r} leaves the JPEGImages folder", "skipped image")
        return None
    image = root / "JPEGImages" / filename
    return image if image.is_file() else root / "JPEGImages" / f"{image_id}.jpg"


def build_voc_index(
    name: str,
    sources: Sequence[tuple[str | Path, str]],
    classes: Sequence[str],
    policy: Policy = "skip",
    progress: bool = False,
    verify: bool = False,
    max_objects: int = MAX_OBJECTS_PER_IMAGE,
) -> DatasetIndex:
    """Index the images of ``(voc_root, split)`` sources, e.g. ``[("VOCdevkit/VOC2007", "trainval")]``.

    ``voc_root`` is a year folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets/Main``. ``verify``
    decodes every image whole (slower: a few milliseconds an image) so that a truncated or corrupt file is
    reported and skipped here rather than met in training. An image with more than ``max_objects`` objects is
    reported and skipped.
    """
    from ssd.data.voc import parse_voc_xml

    issues = _Collector(policy)
    label_of = {c: i for i, c in enumerate(classes, start=1)}
    records: list[ImageRecord] = []
    for root, split, image_id in _progress(_voc_todo(sources, issues), f"indexing {name}", progress):
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            issues.add(xml, f"annotation missing for image {image_id} listed in {split}.txt", "skipped image")
            continue
        try:
            ann = parse_voc_xml(xml)
        except SSDError as e:
            issues.add(xml, str(e).removeprefix(f"{xml}: "), "skipped image")
            continue
        if len(ann.names) > max_objects:
            issues.add(xml, f"{len(ann.names)} objects, over the limit of {max_objects} (--max-objects)", "skipped image")
            continue
        image = _voc_image_path(root, image_id, ann.filename, xml, issues)
        if image is None:
            continue
        try:
            width, height = _image_size(image, verify)
        except SSDError as e:
            issues.add(image, str(e), "skipped image")
            continue
        if (width, height) != (ann.width, ann.height) and ann.width > 0 and ann.height > 0:
            issues.add(xml, f"<size> says {ann.width}x{ann.height} but the image is {width}x{height}; using the image's", "kept image")
        keep = []
        labels = []
        for j, n in enumerate(ann.names):
            if n in label_of:
                keep.append(j)
                labels.append(label_of[n])
            else:
                issues.add(xml, f"object {j + 1}: unknown class {n!r}", "dropped object")
        records.append(_record(image_id, image, width, height, ann.boxes_xyxy_abs[keep], np.asarray(labels, dtype=np.int64),
                               ann.difficult[keep], issues, str(xml)))  # fmt: skip
    return DatasetIndex(name, tuple(classes), records, issues.issues)


def _is_id(value: object) -> bool:
    """COCO ids are integers (strings accepted); a bool, a float, a list or null is not an id."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _read_coco(annotations: Path) -> tuple[list, list, list]:
    """The file's ``images``, ``annotations`` and ``categories`` lists; an SSDError naming what is wrong."""
    try:
        coco = json.loads(annotations.read_text())
    except FileNotFoundError as e:
        raise SSDError(f"COCO annotation file not found: {annotations}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SSDError(f"{annotations}: unreadable COCO JSON: {e}") from e
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise SSDError(f"{annotations}: not a COCO detection file (needs images, annotations, categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list):
            kind = "null" if coco[key] is None else type(coco[key]).__name__
            raise SSDError(f"{annotations}: {key!r} must be a list, not {kind}")
    return coco["images"], coco["annotations"], coco["categories"]


def _coco_labels(categories: list, classes: Sequence[str] | None, annotations: Path) -> tuple[tuple[str, ...], dict]:
    """(class names, label of each category id); a category that is not an ``{id, name}`` pair, or an id listed
    twice, is an error (labels would depend on which entry wins); a name under two ids is one class."""
    names_of: dict[int | str, str] = {}
    for c in categories:
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
            raise SSDError(f"{annotations}: malformed category {str(c)[:80]} (each needs an integer id and a name)")
        if c["id"] in names_of:
            raise SSDError(f"{annotations}: category id {c['id']!r} is listed twice ({names_of[c['id']]!r}, {c['name']!r})")
        names_of[c["id"]] = c["name"]
    by_id = sorted(names_of.items(), key=lambda item: (isinstance(item[0], str), item[0]))
    # A name listed under two ids (exports often repeat a class as its own supercategory) is one class: both
    # ids get its label, never two labels for one name.
    classes = tuple(dict.fromkeys(name for _, name in by_id)) if classes is None else tuple(classes)
    label_of_name = {c: i for i, c in enumerate(classes, start=1)}
    return classes, {cat_id: label_of_name.get(name) for cat_id, name in by_id}


def _coco_images(images: list, annotations: Path, issues: _Collector) -> list[dict]:
    """The usable image entries: an id and a file name inside the image folder, each id once (repeats reported)."""
    kept: dict[int | str, dict] = {}
    for img in images:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or not _is_id(img.get("id")):
            issues.add(annotations, f"image entry {str(img)[:80]}: needs an id and a file_name", "skipped image")
        elif img["id"] in kept:
            first = kept[img["id"]]["file_name"]
            issues.add(annotations, f"image id {img['id']!r} is listed twice ({first!r}, {img['file_name']!r})", "skipped image")
        elif not stays_inside(img["file_name"]):
            issues.add(annotations, f"image {img['id']!r}: file name {img['file_name']!r} leaves the image folder", "skipped image")
        else:
            kept[img["id"]] = img
    return list(kept.values())


def _coco_objects(anns: list[dict], label_of_cat: dict, path: Path, issues: _Collector) -> tuple[list, list, list]:
    """One image's annotations as continuous boxes, labels and crowd flags; a malformed one is reported, dropped."""
    boxes, labels, difficult = [], [], []
    for a in anns:
        cat, bbox, crowd = a.get("category_id"), a.get("bbox"), a.get("iscrowd", 0)
        label = label_of_cat.get(cat) if _is_id(cat) else None
        if label is None:
            issues.add(path, f"annotation {a.get('id')}: unknown category {cat!r}", "dropped object")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            issues.add(path, f"annotation {a.get('id')}: malformed bbox {str(bbox)[:80]} (needs [x, y, w, h])", "dropped object")
        elif crowd not in (0, 1):
            issues.add(path, f"annotation {a.get('id')}: iscrowd must be 0 or 1, not {str(crowd)[:20]}", "dropped object")
        else:
            x, y, w, h = (float(v) for v in bbox)
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            difficult.append(bool(crowd))
    return boxes, labels, difficult


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_coco_index(
    name: str,
    annotations: str | Path,
    images_dir: str | Path,
    classes: Sequence[str] | None = None,
    policy: Policy = "skip",
    progress: bool = False,
    verify: bool = False,
    max_objects: int = MAX_OBJECTS_PER_IMAGE,
) -> DatasetIndex:
    """Index a COCO-format detection JSON (``images``, ``annotations``, ``categories``); ``verify`` and
    ``max_objects`` as for :func:`build_voc_index`.

    Boxes ``[x, y, w, h]`` become continuous ``[x, y, x + w, y + h]``. Labels follow the categories
    sorted by id unless ``classes`` (names) gives the order. Crowd annotations (``iscrowd``) are
    kept as difficult objects: they are ignored by the VOC scorer and not trained on. Validated: categories
    (each id and name once, or an error), image entries (an id listed once, a file name inside ``images_dir``),
    annotations (a known category, a bbox of four numbers): what fails is reported and left out, never relabelled.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    images, anns, categories = _read_coco(annotations)
    if not images_dir.is_dir():
        raise SSDError(f"image folder not found: {images_dir}")
    classes, label_of_cat = _coco_labels(categories, classes, annotations)
    issues = _Collector(policy)
    by_image: dict[int | str, list[dict]] = {}
    for a in anns:
        if not isinstance(a, dict) or not _is_id(a.get("image_id")):
            issues.add(annotations, f"annotation {str(a)[:80]}: no image_id", "dropped object")
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    entries = _coco_images(images, annotations, issues)
    for img in _progress(entries, f"indexing {name}", progress):
        path = images_dir / img["file_name"]
        objects = by_image.get(img["id"], [])
        if len(objects) > max_objects:
            issues.add(path, f"{len(objects)} objects, over the limit of {max_objects} (--max-objects)", "skipped image")
            continue
        try:
            width, height = _image_size(path, verify)
        except SSDError as e:
            issues.add(path, str(e), "skipped image")
            continue
        boxes, labels, difficult = _coco_objects(objects, label_of_cat, path, issues)
        records.append(_record(str(img["id"]), path, width, height, np.asarray(boxes, dtype=np.float64),
                               np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool), issues, str(path)))  # fmt: skip
    listed = {img["id"] for img in images if isinstance(img, dict) and _is_id(img.get("id"))}
    for image_id, objects in by_image.items():
        if image_id not in listed:
            for a in objects:
                issues.add(annotations, f"annotation {a.get('id')}: no image {image_id} in images", "dropped object")
    return DatasetIndex(name, classes, records, issues.issues)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from ssd.progress import iterate

    return iterate(items, desc, "img")


def summary_lines(index: DatasetIndex) -> list[str]:
    """A human-readable summary: totals, per-class images/objects, and the issues."""
    lines = [
        f"{index.name}: {len(index)} images, {index.num_objects} objects ({index.num_difficult} difficult), "
        f"{sum(1 for r in index.images if len(r.labels) == 0)} without objects"
    ]
    counts = index.class_counts()
    width = max((len(c) for c in index.classes), default=5)
    lines.append(f"  {'class':<{width}}  images  objects")
    for c, (n_img, n_obj) in counts.items():
        lines.append(f"  {c:<{width}}  {n_img:>6}  {n_obj:>7}")
    if index.issues:
        actions = Counter(i.action for i in index.issues)
        lines.append(f"  {len(index.issues)} problems: " + ", ".join(f"{n} {a}" for a, n in actions.items()))
        lines += [f"    {i}" for i in index.issues]
    return lines
