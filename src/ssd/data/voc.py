"""Pascal VOC annotations: XML reading and writing, image-set lists and the pixel convention.

Reading: ``<voc_root>/ImageSets/Main/<split>.txt`` -> :func:`read_image_set` (ids) -> ``Annotations/<id>.xml`` ->
:func:`parse_voc_xml` -> :class:`VOCAnnotation` (boxes ``(M, 4)`` continuous). Writing, the inverse for a dataset
this package makes: objects with devkit boxes -> :func:`write_voc_xml` (the VOC2007 file layout) and
:func:`write_image_set`; what is written reads back unchanged.

Pixel convention (the one place it is stated)
---------------------------------------------
VOC XML boxes are **1-based inclusive integer pixels**: ``<xmin>1</xmin><xmax>3</xmax>`` covers pixels 1, 2
and 3, a width of ``xmax - xmin + 1 = 3`` as the official devkit counts it. Inside the library boxes are
**continuous absolute coordinates** ``[x1, y1, x2, y2]`` where pixel ``i`` (1-based) spans ``[i - 1, i)``, so

    continuous = [xmin - 1, ymin - 1, xmax, ymax]        (``voc_pixels_to_continuous``)
    devkit     = [x1 + 1,   y1 + 1,   x2,   y2]          (``continuous_to_voc_pixels``, the inverse)

and ``x2 - x1`` equals the devkit width ``xmax - xmin + 1``. :attr:`VOCAnnotation.boxes_xyxy_abs` holds
continuous coordinates; the VOC scorer (:mod:`ssd.metrics`) works in devkit pixels, so detections in continuous
coordinates go through :func:`continuous_to_voc_pixels` before scoring or being written to results files.

Class lists are deliberately not defined here (they live in :mod:`ssd.config`); this module keeps class
*names* as strings.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence
from xml.sax.saxutils import escape

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ssd.errors import SSDError

MAX_ANNOTATION_BYTES = 8 * 1024 * 1024
"""Larger annotation files are refused before parsing, so one file cannot take the parser's memory."""

__all__ = [
    "VOCAnnotation",
    "parse_voc_xml",
    "read_image_set",
    "read_annotations",
    "VOCObject",
    "voc_xml",
    "write_voc_xml",
    "write_image_set",
    "voc_pixels_to_continuous",
    "continuous_to_voc_pixels",
]


def _as_boxes(boxes: ArrayLike) -> NDArray[np.float64]:
    arr = np.array(boxes, dtype=np.float64)  # a copy: the helpers never alter their input
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {arr.shape}")
    return arr


def voc_pixels_to_continuous(boxes: ArrayLike) -> NDArray[np.float64]:
    """Devkit boxes ``(..., 4)`` ``[xmin, ymin, xmax, ymax]`` (1-based inclusive pixels) to continuous
    ``[x1, y1, x2, y2] = [xmin - 1, ymin - 1, xmax, ymax]`` (float64, a new array)."""
    arr = _as_boxes(boxes)
    arr[..., 0:2] -= 1.0
    return arr


def continuous_to_voc_pixels(boxes: ArrayLike) -> NDArray[np.float64]:
    """Continuous boxes ``(..., 4)`` ``[x1, y1, x2, y2]`` to devkit pixels ``[x1 + 1, y1 + 1, x2, y2]``
    (float64, a new array; not rounded, the devkit accepts fractional coordinates)."""
    arr = _as_boxes(boxes)
    arr[..., 0:2] += 1.0
    return arr


@dataclass(frozen=True, eq=False)
class VOCAnnotation:
    """One image's VOC annotation.

    Attributes:
        image_id: the annotation file's stem (e.g. ``"000021"``).
        filename: the ``<filename>`` element (the image file name, e.g. ``"000021.jpg"``).
        width, height: image size in pixels from ``<size>``.
        names: class name of each object, ``(M,)``.
        boxes_xyxy_abs: ``(M, 4)`` float64 continuous absolute ``[x1, y1, x2, y2]``
            (= ``[xmin - 1, ymin - 1, xmax, ymax]`` of the XML), read-only.
        difficult: ``(M,)`` bool ``<difficult>`` flags (missing means ``False``), read-only.
    """

    image_id: str
    filename: str
    width: int
    height: int
    names: tuple[str, ...]
    boxes_xyxy_abs: NDArray[np.float64]
    difficult: NDArray[np.bool_]

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy_abs, dtype=np.float64).reshape(-1, 4)
        difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not (len(self.names) == boxes.shape[0] == difficult.shape[0]):
            raise ValueError(
                f"{self.image_id}: {len(self.names)} names, {boxes.shape[0]} boxes, "
                f"{difficult.shape[0]} difficult flags"
            )
        boxes.flags.writeable = False
        difficult.flags.writeable = False
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "boxes_xyxy_abs", boxes)
        object.__setattr__(self, "difficult", difficult)

    @property
    def boxes_voc_pixels(self) -> NDArray[np.float64]:
        """``(M, 4)`` boxes back in devkit 1-based inclusive pixels ``[xmin, ymin, xmax, ymax]``."""
        return continuous_to_voc_pixels(self.boxes_xyxy_abs)


def _child_text(elem: ET.Element, tag: str, path: Path, where: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise SSDError(f"{path}: missing <{tag}> in {where}")
    return child.text.strip()


def _number(text: str, path: Path, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SSDError(f"{path}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise SSDError(f"{path}: {what} is not a finite number: {text!r}")
    return value


def parse_voc_xml(path: str | Path) -> VOCAnnotation:
    """Read one VOC annotation XML file.

    Boxes are converted from the file's 1-based inclusive pixels to continuous coordinates (see the module
    docstring). ``<difficult>`` missing means 0.

    Raises:
        SSDError: naming the file and the reason, when it cannot be read or parsed, or ``<size>`` (width,
            height) or an object's ``<name>`` / ``<bndbox>`` (xmin, ymin, xmax, ymax) is missing or not a number.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_ANNOTATION_BYTES:
            raise SSDError(f"{path}: annotation file of {path.stat().st_size} bytes is over the limit of "
                           f"{MAX_ANNOTATION_BYTES} (a VOC file with a thousand objects takes about 300 kB)")  # fmt: skip
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise SSDError(f"{path}: malformed XML: {exc}") from None
    except OSError as exc:
        raise SSDError(f"{path}: cannot read annotation: {exc.strerror or exc}") from None

    size = root.find("size")
    if size is None:
        raise SSDError(f"{path}: missing <size>")
    width = int(_number(_child_text(size, "width", path, "<size>"), path, "<width>"))
    height = int(_number(_child_text(size, "height", path, "<size>"), path, "<height>"))
    filename_elem = root.find("filename")
    if filename_elem is not None and filename_elem.text and filename_elem.text.strip():
        filename = filename_elem.text.strip()
    else:
        filename = f"{path.stem}.jpg"

    names: list[str] = []
    boxes: list[list[float]] = []
    difficult: list[bool] = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"object {k}"
        names.append(_child_text(obj, "name", path, where))
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise SSDError(f"{path}: missing <bndbox> in {where}")
        boxes.append(
            [
                _number(_child_text(bndbox, tag, path, f"<bndbox> of {where}"), path, f"<{tag}> of {where}")
                for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
        )
        diff_elem = obj.find("difficult")
        if diff_elem is None or diff_elem.text is None or not diff_elem.text.strip():
            difficult.append(False)
        else:
            difficult.append(bool(int(_number(diff_elem.text.strip(), path, f"<difficult> of {where}"))))

    return VOCAnnotation(
        image_id=path.stem,
        filename=filename,
        width=width,
        height=height,
        names=tuple(names),
        boxes_xyxy_abs=voc_pixels_to_continuous(np.array(boxes, dtype=np.float64).reshape(-1, 4)),
        difficult=np.array(difficult, dtype=bool),
    )


def read_image_set(voc_root: str | Path, split: str) -> list[str]:
    """Image ids of ``<voc_root>/ImageSets/Main/<split>.txt`` (first token of each non-blank line, in order).

    ``voc_root`` is a year folder such as ``VOCdevkit/VOC2007``. Raises SSDError when the file is missing.
    """
    path = Path(voc_root) / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = path.read_text()
    except OSError as exc:
        raise SSDError(f"{path}: cannot read image set {split!r}: {exc.strerror or exc}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def read_annotations(voc_root: str | Path, image_ids: Sequence[str]) -> list[VOCAnnotation]:
    """Parse ``<voc_root>/Annotations/<id>.xml`` for each id, in order."""
    ann_dir = Path(voc_root) / "Annotations"
    return [parse_voc_xml(ann_dir / f"{image_id}.xml") for image_id in image_ids]


# --------------------------------------------------------------------------------------------- writing


class VOCObject(Protocol):
    """What :func:`voc_xml` needs of an object: class name, devkit box ``(xmin, ymin, xmax, ymax)`` (1-based
    inclusive pixels) and the two flags."""

    @property
    def name(self) -> str: ...

    @property
    def box(self) -> tuple[int, int, int, int]: ...

    @property
    def difficult(self) -> bool: ...

    @property
    def truncated(self) -> bool: ...


def _object_xml(obj: VOCObject) -> list[str]:
    xmin, ymin, xmax, ymax = obj.box
    return [
        "\t<object>",
        f"\t\t<name>{escape(obj.name)}</name>",
        "\t\t<pose>Unspecified</pose>",
        f"\t\t<truncated>{int(obj.truncated)}</truncated>",
        f"\t\t<difficult>{int(obj.difficult)}</difficult>",
        "\t\t<bndbox>",
        f"\t\t\t<xmin>{xmin}</xmin>",
        f"\t\t\t<ymin>{ymin}</ymin>",
        f"\t\t\t<xmax>{xmax}</xmax>",
        f"\t\t\t<ymax>{ymax}</ymax>",
        "\t\t</bndbox>",
        "\t</object>",
    ]


def voc_xml(
    image_id: str, width: int, height: int, objects: Sequence[VOCObject], *, database: str, folder: str = "VOC2007"
) -> str:
    """The VOC annotation of one image ``<image_id>.jpg`` of ``width x height`` RGB pixels, tab-indented as
    the VOC2007 files are: folder, filename, source database, size, ``segmented`` 0, and per object its name,
    pose ``Unspecified``, truncated and difficult flags and devkit box. Text is XML-escaped."""
    lines = [
        "<annotation>",
        f"\t<folder>{escape(folder)}</folder>",
        f"\t<filename>{escape(image_id)}.jpg</filename>",
        "\t<source>",
        f"\t\t<database>{escape(database)}</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        lines += _object_xml(obj)
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_voc_xml(
    path: str | Path, image_id: str, width: int, height: int, objects: Sequence[VOCObject], *, database: str,
    folder: str = "VOC2007",
) -> None:  # fmt: skip
    """Write :func:`voc_xml` to ``path`` (UTF-8); :func:`parse_voc_xml` reads it back. Raises OSError."""
    text = voc_xml(image_id, width, height, objects, database=database, folder=folder)
    Path(path).write_text(text, encoding="utf-8")


def write_image_set(voc_root: str | Path, name: str, ids: Sequence[str], flags: Sequence[int] | None = None) -> None:
    """Write ``<voc_root>/ImageSets/Main/<name>.txt``: one id a line, or with ``flags`` the devkit's per-class
    form ``<id> <flag>`` (1: a non-difficult object of the class, 0: only difficult ones, -1: none; ``name`` is
    then ``<class>_<split>``). :func:`read_image_set` reads the ids back. Raises OSError."""
    path = Path(voc_root) / "ImageSets" / "Main" / f"{name}.txt"
    if flags is None:
        text = "".join(f"{i}\n" for i in ids)
    else:
        text = "".join(f"{i} {p:2d}\n" for i, p in zip(ids, flags, strict=True))
    path.write_text(text, encoding="utf-8")
