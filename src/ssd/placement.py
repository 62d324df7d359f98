"""Putting a model where inference runs, and back: one rule for evaluation, the Detector and ``SSD.detect``.

::

    model (any device, mode, memory format; also inside DDP or torch.compile)
      -> with InferencePlacement(model, device) as placed:   moved to device, eval mode, channels-last where
                                                              ssd.device.channels_last_default says
             placed.model(placed.inputs(images))              inputs on the device, in the model's memory format
      -> model as it was: device, each module's training flag, memory format

The caller's model is never changed behind its back: what the block changed is undone when it ends.
:meth:`InferencePlacement.apply` without the ``with`` places a model for good (for a model its user owns, such
as one :meth:`ssd.detector.Detector.from_checkpoint` loaded).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssd.device import channels_last_default, resolve_device, to_channels_last

__all__ = ["InferencePlacement", "unwrap_model", "model_device", "is_channels_last"]


def unwrap_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(runnable, core)``: the model without DistributedDataParallel / DataParallel wrappers (whose forward
    would synchronise processes), and the network inside it (also without a ``torch.compile`` wrapper)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    core = model
    while isinstance(getattr(core, "_orig_mod", None), nn.Module):
        core = core._orig_mod
    return model, core


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first convolution holds its weights channels-last (the model's memory format)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)


class InferencePlacement:
    """A model on ``device`` in eval mode and its memory format, for a ``with`` block (see the module docstring).

    Args:
        model: the model to run (an :class:`~ssd.model.SSD`, possibly wrapped by DDP or ``torch.compile``).
        device: where to run; ``None``: where the model is (when :meth:`apply` runs).
        channels_last: convert the convolutions to channels-last (NHWC); ``None``: as
            :func:`ssd.device.channels_last_default` says for the device. ``False`` leaves the memory format as
            it is, and so does a compiled model that stays on its device (its graph was traced for it).

    Inside the block: ``model`` (what to call), ``core`` (the network, for its configuration and priors),
    ``device``, ``channels_last`` and :meth:`inputs`.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, *,
                 channels_last: bool | None = None) -> None:  # fmt: skip
        self._runnable, self.core = unwrap_model(model)
        self._device = None if device is None else resolve_device(device, "device")
        self._channels_last = channels_last
        self._undo: list = []
        self.model: nn.Module = self._runnable
        self.device: torch.device = self._device or model_device(self.core)
        self.channels_last = False

    def apply(self) -> "InferencePlacement":
        """Move, convert and switch to eval mode now; :meth:`restore` undoes it."""
        core, home = self.core, model_device(self.core)
        self.device = self._device or home
        moved = self.device != home
        self.model = self.core if moved else self._runnable  # a compiled wrapper is specialised: move the bare model
        wanted = channels_last_default(self.device) if self._channels_last is None else self._channels_last
        self.channels_last = bool(wanted) and self.model is core
        convert = self.channels_last and not is_channels_last(core)
        modes = [(m, m.training) for m in self._runnable.modules()]
        self._undo = [lambda: [m.train(t) for m, t in modes]]
        if moved:
            core.to(self.device)
            self._undo.append(lambda: core.to(home))
        if convert:
            to_channels_last(core)
            self._undo.append(lambda: core.to(memory_format=torch.contiguous_format))
        self.model.eval()
        return self

    def restore(self) -> None:
        """Undo :meth:`apply`: the model's memory format, device and every module's training flag as they were."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "InferencePlacement":
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.restore()

    def inputs(self, images: Tensor) -> Tensor:
        """A batch (N, 3, S, S) on the model's device, in its memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
