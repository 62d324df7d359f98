"""Importing weights people already have, one module per source, into our checkpoints.

``ssd convert tutorial SRC OUT``
    the tutorial's pickled ``checkpoint_ssd300.pth.tar`` -> :mod:`ssd.convert.torch_file` (the zip or
    legacy file, storages bounded by the file's size) + :mod:`ssd.convert.unpickle` (a restricted
    unpickler: tensors, plain containers, inert stubs; nothing named by the pickle is imported or run)
    -> :mod:`ssd.convert.tutorial` (the module tree -> the tutorial's state dict -> ``ssd300`` preset).
``ssd convert torchvision OUT``
    ``ssd300_vgg16``'s state dict (COCO download or a local file) -> :mod:`ssd.convert.torchvision`
    (renamed, heads permuted if needed) -> ``ssd300-torchvision`` preset.
"""

from __future__ import annotations

from ssd.convert.torch_file import restricted_load
from ssd.convert.torchvision import (
    coco_class_names,
    convert_torchvision,
    torchvision_coco_state,
    torchvision_state_to_ours,
)
from ssd.convert.tutorial import convert_tutorial, read_tutorial_checkpoint
from ssd.convert.unpickle import is_stub, stub_name

__all__ = [
    "restricted_load",
    "is_stub",
    "stub_name",
    "read_tutorial_checkpoint",
    "convert_tutorial",
    "coco_class_names",
    "torchvision_state_to_ours",
    "torchvision_coco_state",
    "convert_torchvision",
]
