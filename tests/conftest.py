"""Shared fixtures: the read-only `../shared` folder beside the repository, and determinism."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDENS = SHARED / "reference" / "goldens"
VOCMINI = SHARED / "data" / "VOCmini" / "VOCdevkit" / "VOC2007"

torch.set_num_threads(min(2, torch.get_num_threads()))


def need(path: Path) -> Path:
    """``path`` in ../shared; a test that needs it is skipped where it is missing, but fails under CI (``CI=true``),
    where a missing folder means a broken checkout, not a developer's partial one."""
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"shared data not found under CI: {path}")
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture(scope="session")
def tutorial_golden() -> dict:
    return torch.load(need(GOLDENS / "tutorial_golden.pt"), weights_only=True)


def tutorial_state_spec() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the tutorial's state dict, read from shared/reference/tutorial-checkpoint.md."""
    text = need(SHARED / "reference" / "tutorial-checkpoint.md").read_text()
    block = text.split("```")[1]
    spec = []
    for line in block.strip().splitlines():
        name, shape = line.split("\t")
        spec.append((name, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return spec


@pytest.fixture(scope="session")
def tutorial_recipe_state() -> dict[str, torch.Tensor]:
    """The golden recipe's weights (goldens/README.md), generated in the tutorial's state-dict order."""
    g = torch.Generator().manual_seed(20261126)
    state = {}
    for name, shape in tutorial_state_spec():
        if name == "rescale_factors":
            t = 20 + 0.5 * torch.randn(shape, generator=g)
        elif name.endswith(".weight"):
            t = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        else:
            t = torch.randn(shape, generator=g) * 0.01
        state[name] = t
    return state
