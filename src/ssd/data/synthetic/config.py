"""The settings of the synthetic dataset: :class:`SyntheticConfig`, checked when built, and the demo's
:data:`DEMO_CONFIG`. What each setting does to the images is in the package docstring (:mod:`ssd.data.synthetic`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ssd.data.synthetic.shapes import DEFAULT_CLASSES, SHAPES
from ssd.errors import SSDError

__all__ = ["SyntheticConfig", "DEMO_CONFIG"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset (all keyword arguments; defaults in brackets).

    Attributes:
        num_trainval: images in the ``trainval`` split [2000].
        num_test: images in the ``test`` split [200].
        classes: class names, in label order, each a key of :data:`SHAPES` [circle, square, star, ring, bar].
        image_size: smallest and largest image side in pixels; width and height are drawn independently
            [(224, 320)].
        objects_per_image: fewest and most objects attempted in a non-empty image [(1, 6)]; an object that
            finds no place within the overlap limits is dropped.
        object_size: smallest and largest size of an ordinary object (longest box side / shorter image side)
            [(0.08, 0.6)].
        small_size: the "small" threshold [0.15].
        small_fraction: share of ordinary objects drawn below ``small_size`` (except bars and dashes,
            drawn in their own sizes) [0.32].
        max_iou: largest IoU between two objects' boxes [0.4].
        difficult_fraction: share of objects that are difficult (half tiny, half low-contrast) [0.08].
        difficult_size: size range of the tiny difficult objects [(0.03, 0.06)].
        truncated_fraction: share of objects of size >= ``small_size`` allowed to cross the border [0.1].
        empty_fraction: share of images without objects [0.05].
        jpeg_quality: JPEG quality [90].
        seed: the seed, a non-negative integer [0].

    Raises:
        SSDError: a setting out of its range, an unknown or repeated class, or no images at all.
    """

    num_trainval: int = 2000
    num_test: int = 200
    classes: tuple[str, ...] = DEFAULT_CLASSES
    image_size: tuple[int, int] = (224, 320)
    objects_per_image: tuple[int, int] = (1, 6)
    object_size: tuple[float, float] = (0.08, 0.6)
    small_size: float = 0.15
    small_fraction: float = 0.32
    max_iou: float = 0.4
    difficult_fraction: float = 0.08
    difficult_size: tuple[float, float] = (0.03, 0.06)
    truncated_fraction: float = 0.1
    empty_fraction: float = 0.05
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("classes", "image_size", "objects_per_image", "object_size", "difficult_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

        def fail(msg: str) -> None:
            raise SSDError(f"synthetic dataset: {msg}")

        if self.num_trainval < 0 or self.num_test < 0 or self.num_trainval + self.num_test == 0:
            fail(f"need a non-negative number of images per split, and some images "
                 f"(trainval {self.num_trainval}, test {self.num_test})")  # fmt: skip
        if not self.classes:
            fail("no classes")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            fail(f"unknown class {', '.join(map(repr, unknown))}; the shapes are {', '.join(SHAPES)}")
        if len(set(self.classes)) != len(self.classes):
            fail(f"repeated class in {', '.join(self.classes)}")
        lo, hi = self.image_size
        if not (32 <= lo <= hi <= 4096):
            fail(f"image_size must be 32 <= min <= max <= 4096, got {self.image_size}")
        lo, hi = self.objects_per_image
        if not (0 <= lo <= hi <= 100):
            fail(f"objects_per_image must be 0 <= min <= max <= 100, got {self.objects_per_image}")
        smin, smax = self.object_size
        if not (0 < smin < self.small_size < smax <= 1):
            fail(f"need 0 < object_size min < small_size < object_size max <= 1, got object_size "
                 f"{self.object_size}, small_size {self.small_size}")  # fmt: skip
        dmin, dmax = self.difficult_size
        if not (0 < dmin <= dmax <= smin):
            fail(f"difficult_size must be 0 < min <= max <= object_size min, got {self.difficult_size}")
        for name in ("small_fraction", "max_iou", "difficult_fraction", "truncated_fraction", "empty_fraction"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                fail(f"{name} must lie in [0, 1], got {value}")
        if not (1 <= self.jpeg_quality <= 100):
            fail(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if not (0 <= self.seed < 2**63):
            fail(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of images, in id order."""
        return {"trainval": self.num_trainval, "test": self.num_test}

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DEMO_CONFIG = SyntheticConfig(
    num_trainval=2000,
    num_test=200,
    classes=("circle", "square", "star", "ring", "bar"),
    image_size=(224, 320),
    objects_per_image=(1, 6),
    object_size=(0.08, 0.6),
    small_size=0.15,
    small_fraction=0.32,
    max_iou=0.4,
    difficult_fraction=0.08,
    difficult_size=(0.03, 0.06),
    truncated_fraction=0.1,
    empty_fraction=0.05,
    jpeg_quality=90,
    seed=0,
)
"""The fixed setting of ``ssd demo`` (see the package docstring); spelled out field by field so that changing
the defaults of :class:`SyntheticConfig` does not change the demo."""
