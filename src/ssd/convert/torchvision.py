"""torchvision's ``ssd300_vgg16`` -> our ``ssd300-torchvision`` checkpoint (same network, priors, decoding).

Its state dict (``backbone.features.<i>`` = VGG16 ``features`` up to conv4_3, ``backbone.extra.0`` =
pool4 + conv5_1 .. conv5_3 + fc (conv6, conv7), ``backbone.extra.1..4`` = conv8 .. conv11,
``backbone.scale_weight`` (512,), ``head.{regression,classification}_head.module_list.<k>`` with
(priors per position x 4 or x classes) output channels on map ``k``) -> our names by renaming, with the
heads' per-position prior groups permuted when the configuration orders them differently. The COCO
weights are downloaded (``torch.hub`` cache) or read from a local file with ``weights_only=True``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ssd.config import EXTRA, ModelConfig
from ssd.errors import SSDError
from ssd.weights import VGG16_CONV_NAMES, VGG16_FEATURE_INDICES, read_state_dict

_TV_POOL4 = 23
"""``ssd300_vgg16`` cuts VGG16's ``features`` at pool4 (index 23): ``backbone.features`` holds the layers
before it, ``backbone.extra.0`` the layers from it on (conv5_k at VGG index - 23), then conv6 and conv7
as ``backbone.extra.0.7.1`` and ``.7.3``."""
_TV_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
"""``ssd300_vgg16``'s DefaultBoxGenerator aspect ratios: per position 1, extra, then r, 1/r for each r."""


def _tv_base_names() -> list[tuple[str, str]]:
    """(our ``base.`` name, torchvision's) of every base convolution, conv1_1 .. conv7."""
    pairs = [
        (name, f"backbone.features.{i}" if i < _TV_POOL4 else f"backbone.extra.0.{i - _TV_POOL4}")
        for name, i in zip(VGG16_CONV_NAMES, VGG16_FEATURE_INDICES)
    ]
    return pairs + [("conv6", "backbone.extra.0.7.1"), ("conv7", "backbone.extra.0.7.3")]


def coco_class_names() -> tuple[str, ...]:
    """The 90 foreground names of torchvision's COCO detectors, so that label ``i`` is COCO category id ``i``.

    torchvision's ``categories`` list (read from ``SSD300_VGG16_Weights.COCO_V1.meta``, no download) has 91
    entries: ``__background__`` at 0, then names at their COCO category ids, with ``"N/A"`` at the 10 ids
    COCO leaves unused (12, 26, 29, 30, 45, 66, 68, 69, 71, 83). The network predicts all 91 classes, so
    the placeholders are kept as classes, renamed ``"N/A_<id>"`` to make the names unique; keeping them
    keeps every label equal to its COCO category id (``person`` is 1, ``toothbrush`` 90). They are never
    trained on, so they score low; drop them from results by name if needed.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    categories = list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])
    if categories[0] != "__background__":
        raise SSDError(f"unexpected torchvision COCO categories: {categories[:3]}")
    return tuple(f"{name}_{i}" if name == "N/A" else name for i, name in enumerate(categories) if i > 0)


def _tv_order(k: int) -> list[Any]:
    order: list[Any] = [1.0, EXTRA]
    for r in _TV_ASPECT_RATIOS[k]:
        order += [float(r), 1.0 / r]
    return order


def _head_permutation(config: ModelConfig, k: int) -> list[int]:
    """For map ``k``, the torchvision prior index of each of our per-position priors."""
    tv = _tv_order(k)
    ours = config.priors.aspect_ratios[k]
    if len(ours) != len(tv):
        raise SSDError(
            f"map {k}: the configuration has {len(ours)} priors per position, torchvision's SSD300 {len(tv)}"
        )
    perm = []
    for r in ours:
        match = [
            i for i, t in enumerate(tv)
            if (r == EXTRA and t == EXTRA)
            or (r != EXTRA and t != EXTRA and math.isclose(float(r), t, rel_tol=2e-3))
        ]  # fmt: skip
        if len(match) != 1 or match[0] in perm:
            raise SSDError(f"map {k}: aspect ratios {list(ours)} do not match torchvision's {tv}")
        perm.append(match[0])
    return perm


_TV_HEADS = (("regression_head", "loc_heads"), ("classification_head", "cls_heads"))


def _tv_renames() -> list[tuple[str, str]]:
    """(our name, torchvision's) of every tensor but the heads'."""
    layers = [(f"base.{name}", tv) for name, tv in _tv_base_names()]
    layers += [
        (f"extras.conv{block + 7}_{conv}", f"backbone.extra.{block}.{sub}")
        for block in range(1, 5) for sub, conv in ((0, 1), (2, 2))
    ]  # fmt: skip
    pairs = [(f"{ours}.{p}", f"{tv}.{p}") for ours, tv in layers for p in ("weight", "bias")]
    return pairs + [("l2norm.weight", "backbone.scale_weight")]


def _tv_head_name(tv_head: str, k: int, param: str) -> str:
    return f"head.{tv_head}.module_list.{k}.{param}"


def _tv_heads(tv_state: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our ``loc_heads`` / ``cls_heads``: torchvision's, prior groups permuted into the config's order."""
    n_maps = len(_TV_ASPECT_RATIOS)
    if len(config.priors.aspect_ratios) != n_maps:
        raise SSDError(f"the configuration has {len(config.priors.aspect_ratios)} maps, torchvision's {n_maps}")
    c = config.num_classes
    out: dict[str, Tensor] = {}
    for k in range(n_maps):
        perm = _head_permutation(config, k)
        a = len(perm)
        for (tv_head, ours), width in zip(_TV_HEADS, (4, c)):
            for p in ("weight", "bias"):
                name = _tv_head_name(tv_head, k, p)
                t = tv_state[name]
                if t.shape[0] != a * width:
                    raise SSDError(
                        f"{name} has {t.shape[0]} outputs, expected {a} priors x {width}"
                        + (f" (the model has {c} classes with background)" if width == c else "")
                    )
                t = t.reshape(a, width, *t.shape[1:])[perm].reshape(a * width, *t.shape[1:])
                out[f"{ours}.{k}.{p}"] = t.contiguous()
    return out


def torchvision_state_to_ours(tv_state: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """``ssd300_vgg16(...).state_dict()`` -> our state dict for ``config`` (normally the
    ``ssd300-torchvision`` preset with as many classes as the checkpoint's heads).

    A renaming (``backbone.features.*`` -> ``base.conv1_1`` .. ``conv4_3``, ``backbone.extra.0.*`` ->
    ``conv5_*``, ``conv6``, ``conv7``, ``backbone.scale_weight`` -> ``l2norm.weight``,
    ``backbone.extra.1..4`` -> ``extras.conv8..11``, ``head.regression_head`` / ``classification_head``
    -> ``loc_heads`` / ``cls_heads``), plus a permutation of the heads' per-position prior channels when
    ``config`` orders the priors differently from torchvision's (1, extra, 2, 1/2, 3, 1/3); for the
    ``ssd300-torchvision`` preset the order is the same and the heads are copied as they are.
    """
    renames = _tv_renames()
    try:
        out = {ours: tv_state[theirs] for ours, theirs in renames}
        out.update(_tv_heads(tv_state, config))
    except KeyError as err:  # the missing name says it all
        raise SSDError(f"not a torchvision ssd300_vgg16 state dict: missing {err.args[0]!r}") from None
    used = {theirs for _, theirs in renames} | {
        _tv_head_name(tv_head, k, p)
        for tv_head, _ in _TV_HEADS for k in range(len(_TV_ASPECT_RATIOS)) for p in ("weight", "bias")
    }  # fmt: skip
    extra = sorted(set(tv_state) - used)
    if extra:
        raise SSDError(f"torchvision state dict has unexpected entries, e.g. {extra[:3]}")
    return out


def torchvision_coco_state() -> dict[str, Tensor]:
    """torchvision's ``SSD300_VGG16_Weights.COCO_V1`` state dict (downloaded once, then cached by torch.hub).

    Raises :class:`SSDError` when it cannot be downloaded (e.g. offline), naming the URL to fetch by hand.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    weights = SSD300_VGG16_Weights.COCO_V1
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except Exception as err:  # network errors come in many types
        raise SSDError(
            f"could not download torchvision's SSD300 COCO weights ({type(err).__name__}: {err}). Without "
            f"internet, download {weights.url} elsewhere and pass the file instead of 'coco'"
        ) from err


def convert_torchvision(
    out: str | os.PathLike,
    weights: str | os.PathLike = "coco",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write our checkpoint (``ssd300-torchvision`` preset) of torchvision's ``ssd300_vgg16`` weights.

    Args:
        out: the checkpoint to write.
        weights: ``"coco"`` for ``SSD300_VGG16_Weights.COCO_V1`` (downloaded; :class:`SSDError` when
            offline) or a path to an ``ssd300_vgg16`` state dict.
        class_names: the foreground classes in label order; by default :func:`coco_class_names` when the
            heads predict 91 classes (required otherwise).
    """
    from ssd.checkpoint import load_state, save_checkpoint
    from ssd.model import build_model

    if str(weights) == "coco":
        state, origin = torchvision_coco_state(), "SSD300_VGG16_Weights.COCO_V1"
    else:
        state, origin = read_state_dict(weights, "torchvision weights"), Path(weights).name
    head = state.get("head.classification_head.module_list.0.weight")
    if head is None:
        raise SSDError(f"{origin}: not a torchvision ssd300_vgg16 state dict (no classification head)")
    n_classes = head.shape[0] // 4  # 4 priors per position on the first map
    if class_names is None:
        if n_classes != 91:
            raise SSDError(
                f"{origin}: the heads predict {n_classes} classes (background included); give their "
                f"{n_classes - 1} foreground class names"
            )
        class_names = coco_class_names()
    class_names = tuple(class_names)
    if n_classes != len(class_names) + 1:
        raise SSDError(
            f"{origin}: the heads predict {n_classes} classes (background included) but "
            f"{len(class_names)} class names were given"
        )
    model = build_model("ssd300-torchvision", class_names)
    load_state(model, torchvision_state_to_ours(state, model.config))
    return save_checkpoint(model, out, source={"converter": "torchvision", "weights": origin})
