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

INDEX_FORMAT = "ssd-index"
INDEX_VERSION = 1
Policy = Literal["skip", "fail"]


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects; ``boxes_xyxy_abs`` (M, 4) continuous pixels, labels 1..K."""

    id: str
    file: str
    width: int
    height: int
    boxes_xyxy_abs: np.ndarray  # (M, 4) float32
    labels: np.ndarray  # (M,) int64
    difficult: np.ndarray  # (M,) bool

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "file": self.file,
            "width": self.width,
            "height": self.height,
            "boxes": [[round(float(v), 4) for v in b] for b in self.boxes_xyxy_abs],
            "labels": [int(v) for v in self.labels],
            "difficult": [int(v) for v in self.difficult],
        }

    @classmethod
    def from_json(cls, d: dict) -> "ImageRecord":
        return cls(
            id=str(d["id"]),
            file=str(d["file"]),
            width=int(d["width"]),
            height=int(d["height"]),
            boxes_xyxy_abs=np.asarray(d["boxes"], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(d["labels"], dtype=np.int64).reshape(-1),
            difficult=np.asarray(d["difficult"], dtype=bool).reshape(-1),
        )


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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, separators=(",", ":")))
        os.replace(tmp, path)
        return path

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


def build_voc_index(
    name: str,
    sources: Sequence[tuple[str | Path, str]],
    classes: Sequence[str],
    policy: Policy = "skip",
    progress: bool = False,
    verify: bool = False,
) -> DatasetIndex:
    """Index the images of ``(voc_root, split)`` sources, e.g. ``[("VOCdevkit/VOC2007", "trainval")]``.

    ``voc_root`` is a year folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets/Main``. ``verify``
    decodes every image whole (slower: a few milliseconds an image) so that a truncated or corrupt file is
    reported and skipped here rather than met in training.
    """
    from ssd.data.voc import parse_voc_xml, read_image_set

    issues = _Collector(policy)
    label_of = {c: i for i, c in enumerate(classes, start=1)}
    records: list[ImageRecord] = []
    todo = []
    for root, split in sources:
        root = Path(root)
        if not root.is_dir():
            raise SSDError(f"VOC folder not found: {root}")
        todo += [(root, split, image_id) for image_id in read_image_set(root, split)]
    bar = _progress(todo, f"indexing {name}", progress)
    for root, split, image_id in bar:
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            issues.add(xml, f"annotation missing for image {image_id} listed in {split}.txt", "skipped image")
            continue
        try:
            ann = parse_voc_xml(xml)
        except SSDError as e:
            issues.add(xml, str(e).removeprefix(f"{xml}: "), "skipped image")
            continue
        image = root / "JPEGImages" / ann.filename
        if not image.is_file():
            image = root / "JPEGImages" / f"{image_id}.jpg"
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
        boxes, labels_a, difficult = _clean_objects(
            str(xml), width, height, ann.boxes_xyxy_abs[keep].reshape(-1, 4),
            np.asarray(labels, dtype=np.int64), ann.difficult[keep], issues,
        )  # fmt: skip
        records.append(ImageRecord(image_id, str(image.resolve()), width, height, boxes, labels_a, difficult))
    return DatasetIndex(name, tuple(classes), records, issues.issues)


def build_coco_index(
    name: str,
    annotations: str | Path,
    images_dir: str | Path,
    classes: Sequence[str] | None = None,
    policy: Policy = "skip",
    progress: bool = False,
    verify: bool = False,
) -> DatasetIndex:
    """Index a COCO-format detection JSON (``images``, ``annotations``, ``categories``); ``verify`` as for
    :func:`build_voc_index`.

    Boxes ``[x, y, w, h]`` become continuous ``[x, y, x + w, y + h]``. Labels follow the categories
    sorted by id unless ``classes`` (names) gives the order. Crowd annotations (``iscrowd``) are
    kept as difficult objects: they are ignored by the VOC scorer and not trained on.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    try:
        coco = json.loads(annotations.read_text())
    except FileNotFoundError:
        raise SSDError(f"COCO annotation file not found: {annotations}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SSDError(f"{annotations}: unreadable COCO JSON: {e}") from e
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise SSDError(f"{annotations}: not a COCO detection file (needs images, annotations, categories)")
    if not images_dir.is_dir():
        raise SSDError(f"image folder not found: {images_dir}")
    try:
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        if classes is None:
            classes = [c["name"] for c in cats]
        label_of_name = {c: i for i, c in enumerate(classes, start=1)}
        label_of_cat = {c["id"]: label_of_name.get(c["name"]) for c in cats}
    except (KeyError, TypeError) as e:
        raise SSDError(f"{annotations}: malformed categories (each needs an id and a name): {e!r}") from e
    issues = _Collector(policy)
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)):
            issues.add(annotations, f"annotation {str(a)[:80]}: no image_id", "dropped object")
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    seen: set = set()
    for img in _progress(coco["images"], f"indexing {name}", progress):
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or not isinstance(img.get("id"), (int, str)):
            issues.add(annotations, f"image entry {str(img)[:80]}: needs an id and a file_name", "skipped image")
            continue
        seen.add(img["id"])
        path = images_dir / img["file_name"]
        try:
            width, height = _image_size(path, verify)
        except SSDError as e:
            issues.add(path, str(e), "skipped image")
            continue
        boxes, labels, difficult = [], [], []
        for a in by_image.get(img["id"], []):
            label = label_of_cat.get(a.get("category_id"))
            if label is None:
                issues.add(path, f"annotation {a.get('id')}: unknown category {a.get('category_id')}", "dropped object")
                continue
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                issues.add(path, f"annotation {a.get('id')}: malformed bbox {a.get('bbox')!r}", "dropped object")
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            difficult.append(bool(a.get("iscrowd", 0)))
        b, l, d = _clean_objects(
            str(path), width, height, np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool), issues,
        )  # fmt: skip
        records.append(ImageRecord(str(img["id"]), str(path.resolve()), width, height, b, l, d))
    for image_id, anns in by_image.items():
        if image_id not in seen:
            for a in anns:
                issues.add(annotations, f"annotation {a.get('id')}: no image {image_id} in images", "dropped object")
    return DatasetIndex(name, tuple(classes), records, issues.issues)


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
