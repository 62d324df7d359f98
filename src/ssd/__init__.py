"""Single Shot MultiBox Detector (SSD) in PyTorch.

Public API::

    import ssd
    model = ssd.build_model("ssd300", class_names=ssd.VOC_CLASSES)
    loc_offsets, cls_logits = model(images)          # images: (N, 3, S, S) RGB in [0, 1]
    detections = model.detect(images)                # one record per image
    ssd.save_checkpoint(model, "model.ckpt")
    model = ssd.load_model("model.ckpt")
    detector = ssd.Detector.from_checkpoint("model.ckpt")
    result = detector("photo.jpg")                   # boxes in original pixels, class names

Names are imported on first use, so ``import ssd`` (and the ``ssd`` command's start-up) stays cheap
and the command can configure the threading runtime before PyTorch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssd.version import __version__

_EXPORTS = {
    "PRESETS": "ssd.config",
    "VOC_CLASSES": "ssd.config",
    "ModelConfig": "ssd.config",
    "PriorConfig": "ssd.config",
    "get_preset": "ssd.config",
    "SSDError": "ssd.errors",
    "CheckpointError": "ssd.errors",
    "SSD": "ssd.model",
    "build_model": "ssd.model",
    "Detections": "ssd.postprocess",
    "save_checkpoint": "ssd.checkpoint",
    "load_checkpoint": "ssd.checkpoint",
    "load_model": "ssd.checkpoint",
    "Detector": "ssd.detector",
    "DetectSettings": "ssd.settings",
    "TrainConfig": "ssd.training.config",
    "train": "ssd.training.loop",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ssd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from ssd.checkpoint import load_checkpoint, load_model, save_checkpoint
    from ssd.config import PRESETS, VOC_CLASSES, ModelConfig, PriorConfig, get_preset
    from ssd.detector import Detector
    from ssd.settings import DetectSettings
    from ssd.training.config import TrainConfig
    from ssd.training.loop import train
    from ssd.errors import CheckpointError, SSDError
    from ssd.model import SSD, build_model
    from ssd.postprocess import Detections
