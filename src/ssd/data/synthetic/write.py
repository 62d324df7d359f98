"""Writing the synthetic dataset: :func:`generate_synthetic` and what it reports.

config -> the folder made ready (ours replaced, a foreign one refused) -> ``synthetic.json`` (incomplete) and
``classes.txt`` -> per split, per image: :func:`~ssd.data.synthetic.render.render_image` -> ``JPEGImages/<id>.jpg``
and ``Annotations/<id>.xml`` (:func:`ssd.data.voc.write_voc_xml`), counted -> the split's image sets -> the
complete ``synthetic.json`` with the counts -> :class:`SyntheticSummary`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ssd.data.synthetic.config import SyntheticConfig
from ssd.data.synthetic.render import SyntheticObject, render_image
from ssd.data.voc import voc_xml, write_image_set, write_voc_xml
from ssd.errors import SSDError

__all__ = ["MARKER", "SplitSummary", "SyntheticSummary", "annotation_xml", "generate_synthetic"]

MARKER = "synthetic.json"
_GENERATOR = "ssd.data.synthetic"
_FORMAT = 1
_DATABASE = "Synthetic shapes (ssd.data.synthetic)"  # the annotations' <source><database>


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split. ``per_class``: objects of each class (difficult ones included);
    ``small``: objects of size < ``small_size`` (difficult ones included)."""

    images: int = 0
    empty_images: int = 0
    objects: int = 0
    difficult: int = 0
    truncated: int = 0
    small: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_synthetic` wrote: the VOC2007 folder, the classes and the counts per split."""

    voc_root: Path
    classes: tuple[str, ...]
    splits: dict[str, SplitSummary]
    seconds: float

    def lines(self) -> list[str]:
        """A printable table: one row per split, then objects per class and split."""
        names = list(self.splits)
        out = [f"synthetic dataset in {self.voc_root} ({self.seconds:.1f} s)"]
        row = "{:<10}{:>8}{:>7}{:>9}{:>10}{:>10}{:>7}".format
        out.append(row("split", "images", "empty", "objects", "difficult", "truncated", "small"))
        for n, s in self.splits.items():
            out.append(row(n, s.images, s.empty_images, s.objects, s.difficult, s.truncated, s.small))
        width = max([len(c) for c in self.classes] + [5])
        out.append(f"{'class':<{width}}" + "".join(f"{n:>10}" for n in names))
        for c in self.classes:
            out.append(f"{c:<{width}}" + "".join(f"{self.splits[n].per_class.get(c, 0):>10}" for n in names))
        return out

    def to_json(self) -> dict:
        return {
            "classes": list(self.classes),
            "splits": {n: dataclasses.asdict(s) for n, s in self.splits.items()},
            "seconds": round(self.seconds, 3),
        }


def annotation_xml(image_id: str, width: int, height: int, objects: Sequence[SyntheticObject]) -> str:
    """The VOC annotation of one synthetic image, as :func:`generate_synthetic` writes it."""
    return voc_xml(image_id, width, height, objects, database=_DATABASE)


class _Tally:
    """The counts of one split as its images are written, and each class's presence in each image (1: a
    non-difficult object of the class, 0: only difficult ones, -1: none), the devkit's per-class lists."""

    def __init__(self, classes: Sequence[str], small_size: float) -> None:
        self.small_size = small_size
        self.counts = dict(images=0, empty_images=0, objects=0, difficult=0, truncated=0, small=0)
        self.per_class = {c: 0 for c in classes}
        self.presence: dict[str, list[int]] = {c: [] for c in classes}

    def add(self, objects: Sequence[SyntheticObject], width: int, height: int) -> None:
        self.counts["images"] += 1
        self.counts["empty_images"] += not objects
        self.counts["objects"] += len(objects)
        self.counts["difficult"] += sum(o.difficult for o in objects)
        self.counts["truncated"] += sum(o.truncated for o in objects)
        self.counts["small"] += sum(o.size(width, height) < self.small_size for o in objects)
        for c, flags in self.presence.items():
            mine = [o for o in objects if o.name == c]
            self.per_class[c] += len(mine)
            flags.append(1 if any(not o.difficult for o in mine) else (0 if mine else -1))

    def summary(self) -> SplitSummary:
        return SplitSummary(**self.counts, per_class=self.per_class)


@contextmanager
def _writing(where: Path) -> Iterator[None]:
    """Turn an OSError into an SSDError naming ``where``; the OSError (which file, which call) stays its cause."""
    try:
        yield
    except OSError as exc:
        raise SSDError(f"{where}: cannot write the synthetic dataset: {exc.strerror or exc}") from exc


def _is_synthetic(voc_root: Path) -> bool:
    try:
        payload = json.loads((voc_root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("generator") == _GENERATOR


def _prepare(root: Path, overwrite: bool) -> Path:
    """The VOC2007 folder under ``root``, emptied of what a generation writes; SSDError for a folder refused."""
    if root.exists() and not root.is_dir():
        raise SSDError(f"{root}: not a folder")
    voc_root = root / "VOC2007"
    if root.is_dir() and any(root.iterdir()) and not _is_synthetic(voc_root) and not overwrite:
        raise SSDError(
            f"{root}: folder is not empty and holds no synthetic dataset; choose an empty folder or overwrite"
        )
    if voc_root.exists() and not voc_root.is_dir():
        raise SSDError(f"{voc_root}: not a folder")
    # Remove what a previous generation wrote (only those entries), so no stale image survives.
    for name in ("JPEGImages", "Annotations", "ImageSets", "classes.txt", MARKER):
        p = voc_root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    return voc_root


def _write_marker(voc_root: Path, config: SyntheticConfig, splits: dict[str, SplitSummary] | None) -> None:
    """``synthetic.json``: generator, format and configuration, complete with the counts once ``splits`` is given."""
    marker = {"generator": _GENERATOR, "format": _FORMAT, "config": config.to_json(), "complete": splits is not None}
    if splits is not None:
        marker["summary"] = {n: dataclasses.asdict(s) for n, s in splits.items()}
    (voc_root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _write_split(voc_root: Path, config: SyntheticConfig, split: str, first_id: int, bar) -> SplitSummary:
    """Draw and write the images of ``split``, numbered from ``first_id``, and its image sets."""
    tally = _Tally(config.classes, config.small_size)
    ids = [f"{first_id + index:06d}" for index in range(config.splits[split])]
    for index, image_id in enumerate(ids):
        image, objects = render_image(config, split, index)
        image.save(voc_root / "JPEGImages" / f"{image_id}.jpg", quality=config.jpeg_quality)
        path = voc_root / "Annotations" / f"{image_id}.xml"
        write_voc_xml(path, image_id, image.width, image.height, objects, database=_DATABASE)
        tally.add(objects, image.width, image.height)
        if bar is not None:
            bar.update(1)
    write_image_set(voc_root, split, ids)
    for c, flags in tally.presence.items():
        write_image_set(voc_root, f"{c}_{split}", ids, flags)
    return tally.summary()


def generate_synthetic(
    root: str | Path,
    config: SyntheticConfig = SyntheticConfig(),
    progress: bool = False,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write the synthetic dataset of ``config`` to ``<root>/VOC2007`` (see the package docstring).

    ``root`` may be missing, empty, or hold a dataset this function wrote before (``VOC2007/synthetic.json``):
    that one's files are replaced. Any other non-empty folder is refused unless ``overwrite`` is true; then
    only ``VOC2007/{JPEGImages,Annotations,ImageSets,classes.txt,synthetic.json}`` are replaced and other
    files are left alone. ``progress`` shows a progress bar (on stderr).

    Returns:
        The counts per split and class, also stored in ``VOC2007/synthetic.json``.

    Raises:
        SSDError: the folder is refused, or cannot be written.
    """
    start = time.perf_counter()
    root = Path(root)
    with _writing(root):
        voc_root = _prepare(root, overwrite)
        _write_marker(voc_root, config, None)  # first, so that a half-written dataset is still recognised as ours
        (voc_root / "classes.txt").write_text("".join(f"{c}\n" for c in config.classes), encoding="utf-8")

    bar = None
    if progress:
        from ssd.progress import progress as progress_bar

        bar = progress_bar(sum(config.splits.values()), "synthetic data", "img")
    splits: dict[str, SplitSummary] = {}
    first_id = 1  # ids number trainval, then test, as VOC2007 numbers one folder
    try:
        with _writing(voc_root):
            for split, count in config.splits.items():
                splits[split] = _write_split(voc_root, config, split, first_id, bar)
                first_id += count
            _write_marker(voc_root, config, splits)
    finally:
        if bar is not None:
            bar.close()
    return SyntheticSummary(voc_root, tuple(config.classes), splits, time.perf_counter() - start)
