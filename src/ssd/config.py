"""Model configurations and presets.

A :class:`ModelConfig` fully describes a network: its layers, input size, normalisation, prior boxes
and decoding rules. Everything else (feature-map sizes, priors per position, number of priors) is
derived from it, never typed twice. Configurations are frozen, JSON-serialisable through
:meth:`ModelConfig.to_dict`, and are what a checkpoint stores to rebuild its model.

Presets (see :data:`PRESETS`):

``ssd300``
    The paper's SSD300 with the tutorial's priors (scales 0.1, 0.2, 0.375, 0.55, 0.725, 0.9; the last
    map's extra prior 1.0; ratio 1:3 written as 0.333; all four values clamped to [0, 1]) and ImageNet
    normalisation. The tutorial's checkpoints convert to it exactly.
``ssd300-torchvision``
    torchvision's ``ssd300_vgg16``: same network, its priors (scales 0.07 ... 0.87 and 1.05, steps 8 ...
    300, widths and heights clipped), its normalisation, its resizing of inputs (bilinear on the float image, no
    antialiasing) and its decoding (size clamp, boxes clipped to the image, 400 candidates per class).
``ssd512``
    The paper's SSD512 as the original Caffe code builds it (``ssd_pascal_512.py``: min/max sizes 7%/15% of 512
    px on conv4_3, then 15% ... 90% in steps of 15 with the next map's size as the max, steps 8 ... 512, priors
    not clipped). (lufficc/SSD's variant clips the priors to the image and ends at 537.65 px; checkpoints store
    their priors' configuration, so models trained with it still load as they were.)
``small``
    The same code with fewer layers and channels and a 192-pixel input, for CPU work (tests, the demo): one
    convolution in each of the first two blocks, the first at stride 2 in place of pool1 (the maps keep their
    sizes), two in the fifth; widths 16, 16, 32, 128, 128 (VGG16's divided by 4 to 8) and 256 for conv6 and conv7.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

from ssd.errors import SSDError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes; label ``i`` (1..20) is ``VOC_CLASSES[i - 1]``, label 0 is background."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EXTRA = "extra"
"""Token in an aspect-ratio list for the extra 1:1 prior of scale sqrt(s_k * s_k+1)."""

Ratio = Union[float, str]
ClipMode = Literal["none", "wh", "all"]
InputResize = Literal["antialias", "bilinear"]

# Sane bounds, checked before anything is built, so that a small file (a checkpoint's configuration) cannot
# describe a network that takes the machine. Each is far above any published SSD (SSD512: 24564 priors).
MAX_IMAGE_SIZE = 4096
MAX_CLASSES = 10_000
MAX_CHANNELS = 16_384
MAX_EXTRA_BLOCKS = 16
MAX_RATIOS_PER_POSITION = 32
MAX_BLOCK_DEPTH = 16
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)
MAX_PRIORS = 1_000_000


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    """A one-line SSDError unless ``value`` is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SSDError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _check_finite(name: str, values: Sequence[Any], positive: bool = False) -> None:
    """A one-line SSDError unless every value is a finite number (and positive, if asked)."""
    for v in values:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not number or not math.isfinite(v) or (positive and v <= 0):
            raise SSDError(f"{name} must hold finite{' positive' if positive else ''} numbers, got {v!r}")


@dataclass(frozen=True)
class PriorConfig:
    """How prior (default) boxes are laid out on the feature maps.

    Per map ``k`` a prior of ratio ``r`` has width ``s_k * sqrt(r)`` and height ``s_k / sqrt(r)``
    (fractions of the image side); the ``"extra"`` token is a 1:1 prior of side
    ``sqrt(s_k * s_k+1)``. Give the scales either as fractions (``scales``) or in pixels of the
    input (``min_sizes`` for ``s_k`` and ``max_sizes`` for the extra prior's ``s_k+1``).

    Attributes:
        aspect_ratios: per map, the per-position order of ratios (1.0 is the square prior of scale
            ``s_k``). The order is the order of the head's channels.
        scales: fractions of the image side, ``len(maps) + 1`` values (or ``len(maps)`` when
            ``last_extra_scale`` is given).
        min_sizes, max_sizes: the same in pixels of ``image_size`` (lufficc/SSD style).
        last_extra_scale: literal side of the last map's extra prior (the tutorial's 1.0).
        steps: pixels between cell centres per map; ``None`` uses ``image_size / map_size``.
        offset: position of the centre inside a cell (0.5 = middle).
        clip: ``"none"``, ``"wh"`` (widths and heights clamped to [0, 1]) or ``"all"`` (all four
            cx, cy, w, h values clamped to [0, 1]).
    """

    aspect_ratios: tuple[tuple[Ratio, ...], ...]
    scales: tuple[float, ...] | None = None
    min_sizes: tuple[float, ...] | None = None
    max_sizes: tuple[float, ...] | None = None
    last_extra_scale: float | None = None
    steps: tuple[float, ...] | None = None
    offset: float = 0.5
    clip: ClipMode = "all"

    def __post_init__(self) -> None:
        n = len(self.aspect_ratios)
        for key in ("scales", "min_sizes", "max_sizes", "steps"):
            _check_finite(f"priors.{key}", getattr(self, key) or (), positive=True)
        _check_finite("priors.offset", (self.offset,))
        if self.last_extra_scale is not None:
            _check_finite("priors.last_extra_scale", (self.last_extra_scale,), positive=True)
        if (self.scales is None) == (self.min_sizes is None):
            raise SSDError("priors: give exactly one of scales or min_sizes/max_sizes")
        if self.scales is not None:
            want = (n,) if self.last_extra_scale is not None else ()
            if len(self.scales) not in (n + 1, *want):
                raise SSDError(f"priors: {n} maps need {n + 1} scales, got {len(self.scales)}")
        else:
            if self.max_sizes is None or len(self.min_sizes) != n or len(self.max_sizes) != n:
                raise SSDError(f"priors: min_sizes and max_sizes need {n} values each")
        if self.steps is not None and len(self.steps) != n:
            raise SSDError(f"priors: {n} maps need {n} steps, got {len(self.steps)}")
        if self.clip not in ("none", "wh", "all"):
            raise SSDError(f"priors: clip must be none, wh or all, not {self.clip!r}")
        for ratios in self.aspect_ratios:
            _check_int("priors: ratios per position", len(ratios), 1, MAX_RATIOS_PER_POSITION)
            for r in ratios:
                if r != EXTRA and not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
                    raise SSDError(f"priors: aspect ratio {r!r} is neither positive nor {EXTRA!r}")

    @property
    def priors_per_position(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.aspect_ratios)

    def map_scales(self, image_size: int) -> list[tuple[float, float]]:
        """Per map ``(s_k, extra_k)``: the side of the 1:1 prior and of the extra prior, as fractions."""
        n = len(self.aspect_ratios)
        out = []
        for k in range(n):
            if self.scales is not None:
                s = self.scales[k]
                nxt = self.scales[k + 1] if k + 1 < len(self.scales) else None
                extra = math.sqrt(s * nxt) if nxt is not None else None
            else:
                s = self.min_sizes[k] / image_size
                extra = math.sqrt(self.min_sizes[k] * self.max_sizes[k]) / image_size
            if k == n - 1 and self.last_extra_scale is not None:
                extra = self.last_extra_scale
            out.append((s, extra))
        return out


@dataclass(frozen=True)
class ExtraBlock:
    """One block of extra feature layers: 1x1 conv to ``mid`` channels, then a ``kernel`` conv."""

    mid_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1

    def __post_init__(self) -> None:
        _check_int("extras: mid_channels", self.mid_channels, 1, MAX_CHANNELS)
        _check_int("extras: out_channels", self.out_channels, 1, MAX_CHANNELS)
        _check_int("extras: kernel_size", self.kernel_size, 1, 7)
        _check_int("extras: stride", self.stride, 1, 4)
        _check_int("extras: padding", self.padding, 0, 6)


@dataclass(frozen=True)
class DecodeConfig:
    """Model-specific decoding rules (thresholds such as min_score are call arguments).

    Attributes:
        size_clamp: upper bound on ``0.2 * size_offset`` before ``exp`` (torchvision: log(1000/16));
            ``None`` for no clamp (the tutorial).
        clip_boxes: clip decoded boxes to the image before NMS.
        candidates_per_class: keep at most this many best-scoring boxes per class before NMS.
    """

    size_clamp: float | None = None
    clip_boxes: bool = False
    candidates_per_class: int | None = None

    def __post_init__(self) -> None:
        if self.candidates_per_class is not None:
            _check_int("decode.candidates_per_class (or null)", self.candidates_per_class, 1, MAX_PRIORS)
        if self.size_clamp is not None:
            _check_finite("decode.size_clamp", (self.size_clamp,), positive=True)


@dataclass(frozen=True)
class ModelConfig:
    """A complete, serialisable description of an SSD network.

    Attributes:
        preset: the preset this configuration came from (informative).
        class_names: the foreground classes; label ``i`` is ``class_names[i - 1]``, label 0 is background.
        image_size: square input side ``S``; ``model(images)`` takes (N, 3, S, S).
        vgg_widths: output channels of the five VGG16 blocks.
        fc_channels: channels of conv6 (3x3, dilation 6) and conv7 (1x1).
        extras: the extra blocks after conv7, one feature map each.
        priors: the prior layout; one entry per feature map (conv4_3, conv7, then one per extra block).
        batch_norm: BatchNorm after every convolution of the base and the extras.
        vgg_depths: convolutions in each of the five VGG blocks (VGG16's 2, 2, 3, 3, 3).
        conv1_stride: the stride of ``conv1_1``; with 2, ``pool1`` is left out, so the maps keep their sizes while
            the first block runs at half the input's resolution (large maps of few channels are where a CPU spends
            the most time per multiplication).
        mean, std: RGB normalisation applied inside the model to inputs in [0, 1].
        l2norm_scale: initial per-channel scale of the L2-normalised conv4_3 features.
        decode: model-specific decoding rules.
        input_resize: how an image is brought to S x S for this model (:func:`ssd.data.transforms.resize_for_model`):
            ``"antialias"`` (ours: the uint8 image, antialiased) or ``"bilinear"`` (torchvision's detection transform:
            the float image, bilinear, no antialiasing), so a converted model sees what it was trained on.
    """

    preset: str
    class_names: tuple[str, ...]
    image_size: int
    vgg_widths: tuple[int, int, int, int, int]
    fc_channels: int
    extras: tuple[ExtraBlock, ...]
    priors: PriorConfig
    batch_norm: bool = False
    vgg_depths: tuple[int, int, int, int, int] = VGG16_DEPTHS
    conv1_stride: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    l2norm_scale: float = 20.0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    input_resize: InputResize = "antialias"

    def __post_init__(self) -> None:
        if self.input_resize not in ("antialias", "bilinear"):
            raise SSDError(f"input_resize must be antialias or bilinear, not {self.input_resize!r}")
        if len(self.class_names) < 1:
            raise SSDError("a model needs at least one class")
        _check_int("number of classes", len(self.class_names), 1, MAX_CLASSES)
        if not all(isinstance(c, str) for c in self.class_names):
            raise SSDError(f"class names must be strings: {list(self.class_names)[:5]}")
        _check_int("image_size", self.image_size, 32, MAX_IMAGE_SIZE)
        if len(self.vgg_widths) != 5:
            raise SSDError(f"vgg_widths needs 5 values (one per VGG block), got {len(self.vgg_widths)}")
        for w in (*self.vgg_widths, self.fc_channels):
            _check_int("vgg_widths and fc_channels", w, 1, MAX_CHANNELS)
        if len(self.vgg_depths) != 5:
            raise SSDError(f"vgg_depths needs 5 values (one per VGG block), got {len(self.vgg_depths)}")
        for d in self.vgg_depths:
            _check_int("vgg_depths", d, 1, MAX_BLOCK_DEPTH)
        _check_int("conv1_stride", self.conv1_stride, 1, 2)
        _check_int("number of extra blocks", len(self.extras), 0, MAX_EXTRA_BLOCKS)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SSDError(f"mean and std need 3 values (R, G, B), got {len(self.mean)} and {len(self.std)}")
        _check_finite("mean", self.mean)
        _check_finite("std", self.std, positive=True)
        _check_finite("l2norm_scale", (self.l2norm_scale,))
        if len(set(self.class_names)) != len(self.class_names):
            raise SSDError(f"class names must be unique: {list(self.class_names)}")
        if "background" in self.class_names or "__background__" in self.class_names:
            raise SSDError("class_names lists foreground classes only (label 0 is background)")
        n_maps = 2 + len(self.extras)
        if len(self.priors.aspect_ratios) != n_maps:
            raise SSDError(
                f"priors describe {len(self.priors.aspect_ratios)} maps but the network has {n_maps}"
            )
        sizes = self.feature_map_sizes
        if min(sizes) < 1:
            raise SSDError(f"input size {self.image_size} is too small for this network: maps {sizes}")
        if self.num_priors > MAX_PRIORS:
            raise SSDError(f"this configuration lays out {self.num_priors} priors, over the limit of {MAX_PRIORS}")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (the width of ``cls_logits``)."""
        return len(self.class_names) + 1

    @property
    def feature_map_sizes(self) -> tuple[int, ...]:
        """Side of each source feature map, from the layer arithmetic."""
        s = self.image_size
        s = (s - 1) // 2 + 1 if self.conv1_stride == 2 else s // 2  # conv1_1 at stride 2 (3x3, pad 1), or pool1
        s = s // 2  # pool2
        s = -(-s // 2)  # pool3, ceil mode
        sizes = [s]  # conv4_3
        s = s // 2  # pool4; pool5 (3x3, stride 1, pad 1), conv6 (dilation 6, pad 6), conv7 keep it
        sizes.append(s)
        for block in self.extras:
            s = (s + 2 * block.padding - block.kernel_size) // block.stride + 1
            sizes.append(s)
        return tuple(sizes)

    @property
    def has_vgg16_base(self) -> bool:
        """Whether the base is VGG16's own (widths, depths, strides, conv6/7 widths, no BatchNorm): the one that
        ImageNet VGG16 weights fit."""
        return (tuple(self.vgg_widths) == VGG16_WIDTHS and tuple(self.vgg_depths) == VGG16_DEPTHS
                and self.conv1_stride == 1 and self.fc_channels == 1024 and not self.batch_norm)  # fmt: skip

    @property
    def source_channels(self) -> tuple[int, ...]:
        return (self.vgg_widths[3], self.fc_channels) + tuple(b.out_channels for b in self.extras)

    @property
    def num_priors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_map_sizes, self.priors.priors_per_position))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-compatible dict (tuples become lists)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; raises :class:`SSDError` on unknown or missing fields."""
        try:
            d = dict(d)
            d["class_names"] = tuple(d["class_names"])
            d["vgg_widths"] = tuple(d["vgg_widths"])
            if "vgg_depths" in d:  # configurations saved before the field existed have VGG16's
                d["vgg_depths"] = tuple(d["vgg_depths"])
            d["mean"] = tuple(d["mean"])
            d["std"] = tuple(d["std"])
            d["extras"] = tuple(ExtraBlock(**b) for b in d["extras"])
            p = dict(d["priors"])
            p["aspect_ratios"] = tuple(tuple(r) for r in p["aspect_ratios"])
            for key in ("scales", "min_sizes", "max_sizes", "steps"):
                if p.get(key) is not None:
                    p[key] = tuple(p[key])
            d["priors"] = PriorConfig(**p)
            d["decode"] = DecodeConfig(**d.get("decode", {}))
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise SSDError(f"invalid model configuration: {e}") from e


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


# --- presets -------------------------------------------------------------------------------------

_SSD300_EXTRAS = (
    ExtraBlock(256, 512, 3, 2, 1),  # conv8: 19 -> 10
    ExtraBlock(128, 256, 3, 2, 1),  # conv9: 10 -> 5
    ExtraBlock(128, 256, 3, 1, 0),  # conv10: 5 -> 3
    ExtraBlock(128, 256, 3, 1, 0),  # conv11: 3 -> 1
)
_TUTORIAL_RATIOS_4 = (1.0, EXTRA, 2.0, 0.5)
_TUTORIAL_RATIOS_6 = (1.0, EXTRA, 2.0, 3.0, 0.5, 0.333)
_TV_RATIOS_4 = (1.0, EXTRA, 2.0, 0.5)
_TV_RATIOS_6 = (1.0, EXTRA, 2.0, 0.5, 3.0, 1.0 / 3.0)


def _ssd300(class_names: Sequence[str]) -> ModelConfig:
    return ModelConfig(
        preset="ssd300",
        class_names=tuple(class_names),
        image_size=300,
        vgg_widths=VGG16_WIDTHS,
        fc_channels=1024,
        extras=_SSD300_EXTRAS,
        priors=PriorConfig(
            aspect_ratios=(_TUTORIAL_RATIOS_4,) + (_TUTORIAL_RATIOS_6,) * 3 + (_TUTORIAL_RATIOS_4,) * 2,
            scales=(0.1, 0.2, 0.375, 0.55, 0.725, 0.9),
            last_extra_scale=1.0,
            clip="all",
        ),
    )


def _ssd300_torchvision(class_names: Sequence[str]) -> ModelConfig:
    return ModelConfig(
        preset="ssd300-torchvision",
        class_names=tuple(class_names),
        image_size=300,
        vgg_widths=VGG16_WIDTHS,
        fc_channels=1024,
        extras=_SSD300_EXTRAS,
        priors=PriorConfig(
            aspect_ratios=(_TV_RATIOS_4,) + (_TV_RATIOS_6,) * 3 + (_TV_RATIOS_4,) * 2,
            scales=(0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
            steps=(8, 16, 32, 64, 100, 300),
            clip="wh",
        ),
        mean=(0.48235, 0.45882, 0.40784),
        std=(1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
        decode=DecodeConfig(size_clamp=math.log(1000.0 / 16), clip_boxes=True, candidates_per_class=400),
        input_resize="bilinear",
    )


def _ssd512(class_names: Sequence[str]) -> ModelConfig:
    ratios_4 = (1.0, EXTRA, 2.0, 0.5)
    ratios_6 = (1.0, EXTRA, 2.0, 0.5, 3.0, 1.0 / 3.0)
    return ModelConfig(
        preset="ssd512",
        class_names=tuple(class_names),
        image_size=512,
        vgg_widths=VGG16_WIDTHS,
        fc_channels=1024,
        extras=(
            ExtraBlock(256, 512, 3, 2, 1),  # conv8: 32 -> 16
            ExtraBlock(128, 256, 3, 2, 1),  # conv9: 16 -> 8
            ExtraBlock(128, 256, 3, 2, 1),  # conv10: 8 -> 4
            ExtraBlock(128, 256, 3, 2, 1),  # conv11: 4 -> 2
            ExtraBlock(128, 256, 4, 1, 1),  # conv12: 2 -> 1
        ),
        priors=PriorConfig(
            aspect_ratios=(ratios_4,) + (ratios_6,) * 4 + (ratios_4,) * 2,
            # Caffe's ssd_pascal_512.py: conv4_3 at 7% and 15% of 512 px, then min_ratio 15 to max_ratio 90 in
            # steps of 15 (each map's max size is the next map's min size), no clipping.
            min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
            max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
            steps=(8, 16, 32, 64, 128, 256, 512),
            clip="none",
        ),
    )


def _small(class_names: Sequence[str]) -> ModelConfig:
    ratios_4 = (1.0, EXTRA, 2.0, 0.5)
    ratios_6 = (1.0, EXTRA, 2.0, 0.5, 3.0, 1.0 / 3.0)
    return ModelConfig(
        preset="small",
        class_names=tuple(class_names),
        image_size=192,
        # Few convolutions and channels where the maps are large: on a CPU that is where the time goes, far more
        # than the arithmetic says (docs/performance.md, "The demo").
        vgg_widths=(16, 16, 32, 128, 128),
        vgg_depths=(1, 1, 3, 3, 2),
        conv1_stride=2,
        fc_channels=256,
        extras=(
            ExtraBlock(64, 128, 3, 2, 1),  # 12 -> 6
            ExtraBlock(32, 64, 3, 2, 1),  # 6 -> 3
            ExtraBlock(32, 64, 3, 2, 1),  # 3 -> 2
            ExtraBlock(32, 64, 3, 2, 1),  # 2 -> 1
        ),
        priors=PriorConfig(
            aspect_ratios=(ratios_4,) + (ratios_6,) * 3 + (ratios_4,) * 2,
            scales=(0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
            clip="all",
        ),
    )


PRESETS = {
    "ssd300": _ssd300,
    "ssd300-torchvision": _ssd300_torchvision,
    "ssd512": _ssd512,
    "small": _small,
}
"""Preset name -> builder taking the foreground class names."""


DEFAULT_MATCHING = {"ssd300-torchvision": "tutorial"}
"""Each preset's default matching rule (:func:`ssd.loss.match`), where it is not ``"bipartite"`` (the paper's):
a model converted from torchvision is fine-tuned with torchvision's own rule."""


def default_matching(preset: str) -> str:
    return DEFAULT_MATCHING.get(preset, "bipartite")


def get_preset(
    name: str, class_names: Sequence[str] | int = VOC_CLASSES, **overrides: Any
) -> ModelConfig:
    """The configuration of preset ``name`` for ``class_names`` (or a count of unnamed classes).

    ``overrides`` replace top-level fields, e.g. ``batch_norm=True``.
    """
    if name not in PRESETS:
        raise SSDError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if isinstance(class_names, int):
        if class_names < 1:
            raise SSDError(f"a model needs at least one class, got {class_names}")
        class_names = tuple(f"class{i}" for i in range(1, class_names + 1))
    cfg = PRESETS[name](class_names)
    return cfg.replace(**overrides) if overrides else cfg
