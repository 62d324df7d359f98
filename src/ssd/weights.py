"""Weights that enter from outside: ImageNet VGG16 for the base, and the tutorial's state dict.

A torchvision VGG16 state dict (``features.<i>.*`` convolutions, ``classifier.0/3`` fc6 (4096, 25088) and
fc7 (4096, 4096)) -> our base's (``conv1_1`` .. ``conv5_3`` copied, fc6/fc7 decimated into ``conv6``
(1024, 512, 3, 3) and ``conv7`` (1024, 1024, 1, 1)); the tutorial's state dict -> ours by renaming.
:data:`VGG16_CONV_NAMES` / :data:`VGG16_FEATURE_INDICES` are the one table of VGG16's convolutions, also
used by :mod:`ssd.convert`. Nothing here runs at import or inside a constructor; downloads happen only
when a user asks for ``imagenet`` weights explicitly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ssd.config import IMAGENET_MEAN, IMAGENET_STD, VGG16_DEPTHS
from ssd.errors import SSDError

VGG16_CONV_NAMES = tuple(
    f"conv{b}_{i}" for b, n in zip(range(1, 6), VGG16_DEPTHS) for i in range(1, n + 1)
)
"""VGG16's 13 convolutions by the paper's names, ``conv1_1`` .. ``conv5_3``: the tutorial's, and our base's where it is
VGG16's own (:attr:`ssd.config.ModelConfig.has_vgg16_base`)."""
VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""Their indices in torchvision's ``vgg16().features``, in the same order."""


def is_tensor_dict(obj: Any) -> bool:
    """A non-empty mapping of string names to tensors: what a state dict is."""
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A state dict from a file on the CPU, read with :func:`ssd.convert.torch_file.restricted_load` (nothing in it
    runs, and it cannot declare more storage than its own size; zip and legacy torch files alike).

    A dict holding the state dict under ``model`` or ``state_dict`` is unwrapped. ``what`` names the file
    in errors (``--pretrained-base``, ``torchvision weights``). Raises :class:`SSDError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SSDError(f"{what}: file not found: {path}")
    from ssd.convert.torch_file import restricted_load  # bounded by the file's size, in either torch format

    try:
        state = restricted_load(path)
    except SSDError as err:
        raise SSDError(f"{what}: cannot read {path} as a state dict ({str(err)[:200]})") from err
    except Exception as err:  # a corrupt or non-torch file fails in many ways
        raise SSDError(
            f"{what}: cannot read {path} as a state dict ({type(err).__name__}: {str(err)[:200]})"
        ) from err
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not is_tensor_dict(state):
        raise SSDError(f"{what}: {path} is not a state dict of tensors")
    return dict(state)


def decimate_fc6(fc6_weight: Tensor, fc6_bias: Tensor) -> tuple[Tensor, Tensor]:
    """fc6 (4096, 25088) -> conv6 (1024, 512, 3, 3): filters 0, 4, ..., 4092; kernel rows/cols 0, 3, 6."""
    w = fc6_weight.reshape(4096, 512, 7, 7)[0::4][:, :, 0::3, 0::3]
    return w.contiguous(), fc6_bias[0::4].contiguous()


def decimate_fc7(fc7_weight: Tensor, fc7_bias: Tensor) -> tuple[Tensor, Tensor]:
    """fc7 (4096, 4096) -> conv7 (1024, 1024, 1, 1): inputs and outputs 0, 4, ..., 4092."""
    w = fc7_weight.reshape(4096, 4096, 1, 1)[0::4, 0::4]
    return w.contiguous(), fc7_bias[0::4].contiguous()


def vgg16_to_base_state(vgg_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision VGG16 state dict (``features.*``, ``classifier.*``) -> our base's state dict.

    conv1_1..conv5_3 are copied; fc6 and fc7 are decimated into conv6 and conv7.
    """
    try:
        out = {}
        for idx, name in zip(VGG16_FEATURE_INDICES, VGG16_CONV_NAMES):
            out[f"{name}.weight"] = vgg_state[f"features.{idx}.weight"]
            out[f"{name}.bias"] = vgg_state[f"features.{idx}.bias"]
        out["conv6.weight"], out["conv6.bias"] = decimate_fc6(
            vgg_state["classifier.0.weight"], vgg_state["classifier.0.bias"]
        )
        out["conv7.weight"], out["conv7.bias"] = decimate_fc7(
            vgg_state["classifier.3.weight"], vgg_state["classifier.3.bias"]
        )
    except KeyError as e:
        raise SSDError(
            f"not a torchvision VGG16 state dict with its classifier: missing {e.args[0]!r} "
            "(IMAGENET1K_FEATURES weights lack a valid classifier; use IMAGENET1K_V1)"
        ) from None
    return out


def imagenet_vgg16_state() -> dict[str, Tensor]:
    """torchvision's ``VGG16_Weights.IMAGENET1K_V1`` state dict (downloaded once, then cached)."""
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # network errors come in many types
        raise SSDError(
            f"could not download ImageNet VGG16 weights ({type(err).__name__}: {err}). Without internet, "
            f"download {weights.url} elsewhere and pass the file with --pretrained-base PATH"
        ) from err


def load_pretrained_base(model, source: str | os.PathLike | None) -> list[str]:
    """Initialise ``model.base`` from ImageNet VGG16 weights.

    Args:
        source: ``"imagenet"`` (torchvision's IMAGENET1K_V1, downloaded), a path to a torchvision
            VGG16 state dict, or ``None``/``"none"`` for nothing.
    Returns:
        notes for the user (e.g. a normalisation that differs from ImageNet's).
    """
    if source is None or str(source) == "none":
        return []
    cfg = model.config
    if not cfg.has_vgg16_base:
        raise SSDError(
            f"ImageNet VGG16 weights fit VGG16's own base (full widths and depths, no BatchNorm); preset "
            f"{cfg.preset!r} (widths {list(cfg.vgg_widths)}, depths {list(cfg.vgg_depths)}, conv1_stride "
            f"{cfg.conv1_stride}, fc_channels {cfg.fc_channels}, batch_norm={cfg.batch_norm}) "
            "cannot use them: --pretrained-base none"
        )
    if str(source) == "imagenet":
        state = imagenet_vgg16_state()
    else:
        state = read_state_dict(source, "--pretrained-base")
    model.base.load_state_dict(vgg16_to_base_state(state))
    notes = []
    if (tuple(cfg.mean), tuple(cfg.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        notes.append(
            f"the model normalises with mean {cfg.mean} / std {cfg.std}, not ImageNet's, "
            "which the VGG16 weights expect"
        )
    return notes


# --- the tutorial's state dict -------------------------------------------------------------------

_TUTORIAL_MAPS = ("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2")


def tutorial_to_state(tutorial_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tutorial's SSD300 state dict (names in ``shared/reference/tutorial-checkpoint.md``) ->
    ours for the ``ssd300`` preset. A plain renaming; only ``rescale_factors`` changes shape
    ((1, 512, 1, 1) -> (512,)).
    """
    out: dict[str, Tensor] = {}
    head = re.compile(r"pred_convs\.(loc|cl)_(\w+)\.(weight|bias)")
    for name, tensor in tutorial_state.items():
        if name == "rescale_factors":
            out["l2norm.weight"] = tensor.reshape(-1)
        elif name.startswith("base."):
            out[name] = tensor
        elif name.startswith("aux_convs."):
            out["extras." + name[len("aux_convs."):]] = tensor
        elif m := head.fullmatch(name):
            kind, fmap, param = m.groups()
            if fmap not in _TUTORIAL_MAPS:
                raise SSDError(f"tutorial state dict: unknown feature map in {name!r}")
            heads = "loc_heads" if kind == "loc" else "cls_heads"
            out[f"{heads}.{_TUTORIAL_MAPS.index(fmap)}.{param}"] = tensor
        else:
            raise SSDError(f"tutorial state dict: unexpected entry {name!r}")
    return out
