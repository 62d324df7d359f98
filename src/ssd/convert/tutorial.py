"""The tutorial's checkpoint (sgrvinod/a-PyTorch-Tutorial-to-Object-Detection) -> our ``ssd300`` checkpoint.

``checkpoint_ssd300.pth.tar`` (``{'epoch', 'model': SSD300, 'optimizer': SGD}``, the whole model pickled,
zip or legacy format) or a state dict saved from its model -> :func:`~ssd.convert.torch_file.restricted_load`
(the tutorial's code is not needed and nothing in the file runs) -> the stubbed module tree walked like
``nn.Module.state_dict`` into the tutorial's names (``rescale_factors`` (1, 512, 1, 1),
``base.conv1_1.weight`` (64, 3, 3, 3), ... ``pred_convs.cl_conv11_2.bias`` (4 * n_classes,)) ->
:func:`ssd.weights.tutorial_to_state` -> our checkpoint. The model's ``priors_cxcy`` (8732, 4) in
(cx, cy, w, h) image fractions, when pickled, must equal the ``ssd300`` preset's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from ssd.config import VOC_CLASSES, get_preset
from ssd.convert.torch_file import restricted_load
from ssd.convert.unpickle import is_stub, stub_name
from ssd.errors import SSDError
from ssd.weights import is_tensor_dict, tutorial_to_state


def _module_state(module: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    """``nn.Module.state_dict`` of a stubbed module: own parameters, persistent buffers, then children."""
    if id(module) in seen:
        raise SSDError(f"module tree has a cycle at {prefix or 'the root'}")
    seen.add(id(module))
    attrs = module.__dict__
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        entries = attrs.get(kind) or {}
        if not isinstance(entries, Mapping):
            raise SSDError(f"{prefix}{kind} is a {type(entries).__name__}, not a dict")
        for name, t in entries.items():
            if t is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(t, Tensor):
                raise SSDError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + str(name)] = t
    children = attrs.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise SSDError(f"{prefix}_modules is a {type(children).__name__}, not a dict")
    for name, child in children.items():
        if child is None:
            continue
        if not is_stub(child):
            raise SSDError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        _module_state(child, f"{prefix}{name}.", out, seen)


def _tutorial_parts(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, info) from a loaded tutorial file: a checkpoint dict, a model, or a state dict."""
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping) and not is_tensor_dict(obj):
        if isinstance(obj.get("epoch"), int):
            info["epoch"] = obj["epoch"]
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise SSDError(
                f"no 'model' entry: the file holds a dict with keys {sorted(map(str, obj))[:8]}"
            )
    if is_tensor_dict(obj):
        state = {str(k): v for k, v in obj.items()}
    elif is_stub(obj):
        if not ({"_parameters", "_modules"} & set(obj.__dict__)):
            raise SSDError(f"the model entry is a {stub_name(obj)} object, neither a model nor a state dict")
        info["class"] = stub_name(obj)
        state = {}
        _module_state(obj, "", state, set())
        holder = obj
        wrapped = obj.__dict__.get("_modules") or {}
        if "priors_cxcy" not in obj.__dict__ and isinstance(wrapped, Mapping) and set(wrapped) == {"module"}:
            holder = wrapped["module"] if is_stub(wrapped["module"]) else obj  # nn.DataParallel
        priors = holder.__dict__.get("priors_cxcy")
        if priors is not None:
            if not isinstance(priors, Tensor):
                raise SSDError(f"the model's priors_cxcy is a {type(priors).__name__}, not a tensor")
            info["priors_cxcy"] = priors
        if isinstance(holder.__dict__.get("n_classes"), int):
            info["n_classes"] = holder.__dict__["n_classes"]
    else:
        raise SSDError(f"the model entry is a {type(obj).__name__}, neither a model nor a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if not state:
        raise SSDError("the model holds no tensors")
    return state, info


def _check_tutorial_priors(priors: Tensor) -> None:
    from ssd.priors import priors_for

    ours = priors_for(get_preset("ssd300"))
    if tuple(priors.shape) != tuple(ours.shape):
        raise SSDError(
            f"the checkpoint's priors_cxcy have shape {tuple(priors.shape)}, the ssd300 preset's "
            f"{tuple(ours.shape)}: this model was built with other priors and cannot be converted"
        )
    diff = (priors.double() - ours.double()).abs().max().item()
    if not diff <= 1e-6:
        raise SSDError(
            f"the checkpoint's priors_cxcy differ from the ssd300 preset's by up to {diff:.3g} "
            f"(tolerance 1e-6): this model was built with other priors and its boxes would decode "
            f"wrongly; refusing to convert"
        )


def _read_tutorial(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    obj = restricted_load(path)
    try:
        state, info = _tutorial_parts(obj)
    except SSDError as e:
        raise SSDError(f"{path}: not the tutorial's checkpoint or state dict: {e}") from None
    if "rescale_factors" not in state or not any(k.startswith("base.") for k in state):
        raise SSDError(
            f"{path}: not the tutorial's SSD300 (no rescale_factors / base.* tensors; found e.g. "
            f"{list(state)[:3]})"
        )
    if "priors_cxcy" in info:
        try:
            _check_tutorial_priors(info["priors_cxcy"])
        except SSDError as e:
            raise SSDError(f"{path}: {e}") from None
    return state, info


def read_tutorial_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tutorial's state dict (its own names: ``base.conv1_1.weight``, ``rescale_factors``, ...) from
    its ``checkpoint_ssd300.pth.tar`` (whole pickled model) or a state-dict file, either format.

    Read with :func:`restricted_load`: the tutorial's code is not needed and nothing in the file runs.
    When the pickled model carries ``priors_cxcy`` they must equal the ``ssd300`` preset's to 1e-6.
    Raises :class:`SSDError` on anything unreadable or not the tutorial's.
    """
    return _read_tutorial(path)[0]


def convert_tutorial(
    src: str | os.PathLike, out: str | os.PathLike, class_names: Sequence[str] = VOC_CLASSES
) -> Path:
    """Convert the tutorial's checkpoint or state dict ``src`` into our checkpoint ``out``
    (``ssd300`` preset with ``class_names``, the foreground classes in the tutorial's label order).
    """
    from ssd.checkpoint import load_state, save_checkpoint
    from ssd.model import build_model

    state, info = _read_tutorial(src)
    head = state.get("pred_convs.cl_conv4_3.weight")
    if head is None or head.ndim != 4 or head.shape[0] % 4:
        raise SSDError(f"{src}: no usable pred_convs.cl_conv4_3.weight (the class head)")
    n_classes = head.shape[0] // 4
    class_names = tuple(class_names)
    if n_classes != len(class_names) + 1:
        raise SSDError(
            f"{src}: the model's heads predict {n_classes} classes (background included) but "
            f"{len(class_names)} class names were given ({len(class_names) + 1} with background)"
        )
    if "n_classes" in info and info["n_classes"] != n_classes:
        raise SSDError(f"{src}: n_classes is {info['n_classes']} but the heads predict {n_classes}")
    model = build_model("ssd300", class_names)
    try:
        mapped = tutorial_to_state(state)
        load_state(model, mapped)
    except SSDError as e:
        raise SSDError(f"{src}: {e}") from None
    source = {"converter": "tutorial", "file": Path(src).name, "epoch": info.get("epoch")}
    return save_checkpoint(model, out, source=source)
