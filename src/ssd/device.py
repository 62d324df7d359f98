"""Choosing the device: one rule for every command and API.

Importing this module does not import torch (the command line builds its help from :data:`DEVICE_HELP`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssd.errors import SSDError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA, then Apple MPS, then the CPU; the default), cpu, cuda, cuda:N or mps"
"""The choices of every command's ``--device``, as its help text says them."""


def resolve_device(name: str | torch.device | None = "auto", option: str = "device") -> torch.device:
    """``auto`` (CUDA, then Apple MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    A CUDA device always comes back with its index (``cuda`` is the current device), so it compares equal
    to the device of a tensor on it and can be passed to ``torch.cuda.set_device``. Errors are
    :class:`SSDError` messages that start with ``option`` (e.g. ``--device``)."""
    import torch

    if isinstance(name, torch.device) and not (name.type == "cuda" and name.index is None):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise SSDError(f"{option} {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SSDError(f"{option} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SSDError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SSDError(f"{option} {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise SSDError(f"{option} {name}: use auto, cpu, cuda, cuda:N or mps")
    return device


def channels_last_default(device: torch.device) -> bool:
    """Whether convolutions run channels-last (NHWC) by default on ``device``: on CUDA and on the CPU, where
    oneDNN's NHWC kernels make SSD300's forward faster (measured: docs/performance.md, "CPU"); not on MPS."""
    return device.type in ("cuda", "cpu")


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convert ``model``'s 4-d parameters and buffers to channels-last in place (values unchanged)."""
    import torch

    return model.to(memory_format=torch.channels_last)
