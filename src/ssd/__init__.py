"""Single Shot MultiBox Detector (SSD) in PyTorch.

Public API::

    import ssd
    model = ssd.build_model("ssd300", class_names=ssd.VOC_CLASSES)
    loc_offsets, cls_logits = model(images)          # images: (N, 3, S, S) RGB in [0, 1]
    detections = model.detect(images)                # one record per image
    ssd.save_checkpoint(model, "model.ckpt")
    model = ssd.load_model("model.ckpt")
"""

__version__ = "0.1.0"

from ssd.config import PRESETS, VOC_CLASSES, ModelConfig, PriorConfig, get_preset  # noqa: E402
from ssd.errors import CheckpointError, SSDError  # noqa: E402
from ssd.model import SSD, build_model  # noqa: E402
from ssd.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from ssd.postprocess import Detections  # noqa: E402

__all__ = [
    "__version__",
    "PRESETS",
    "VOC_CLASSES",
    "ModelConfig",
    "PriorConfig",
    "get_preset",
    "SSDError",
    "CheckpointError",
    "SSD",
    "build_model",
    "Detections",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]
