"""One device rule for every command: ssd.device.resolve_device."""

from __future__ import annotations

import pytest
import torch

from ssd import SSDError
from ssd.device import resolve_device


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SSDError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda", "--device")


def test_cuda_always_comes_back_indexed(monkeypatch):
    """`torch.cuda.set_device(torch.device("cuda"))` raises (seen on an H100): "cuda" must name its index."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(SSDError, match="has 2 CUDA device"):
        resolve_device("cuda:5", "--device")


@pytest.mark.parametrize("bad", ["bogus", "tpu", "cuda:x"])
def test_bad_names_are_refused_with_the_option_named(bad):
    with pytest.raises(SSDError, match="^--device"):
        resolve_device(bad, "--device")
