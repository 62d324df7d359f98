"""Prior (default) boxes, generated from a :class:`~ssd.config.PriorConfig`.

The order is the contract with the heads: map by map, row by row, column by column, then the
per-position ratios in the configured order, exactly as the heads' outputs are flattened
((N, A*4, H, W) -> (N, H, W, A*4) -> (N, H*W*A, 4)).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ssd.config import EXTRA, ModelConfig, PriorConfig


def make_priors(cfg: PriorConfig, feature_map_sizes: Sequence[int], image_size: int) -> Tensor:
    """Priors as a float32 tensor (P, 4), ``cxcywh_rel``.

    For map ``k`` of side ``f_k`` the centre of cell ``(i, j)`` is ``((j + offset) * step_k,
    (i + offset) * step_k) / image_size`` with ``step_k`` from the config, or ``1 / f_k`` of the
    image when no steps are given. Values are computed in float64 and clamped as configured.
    """
    if len(feature_map_sizes) != len(cfg.aspect_ratios):
        raise ValueError(f"{len(feature_map_sizes)} maps but {len(cfg.aspect_ratios)} ratio lists")
    out = []
    for k, (f, (s, extra)) in enumerate(zip(feature_map_sizes, cfg.map_scales(image_size))):
        wh = []
        for r in cfg.aspect_ratios[k]:
            if r == EXTRA:
                if extra is None:
                    raise ValueError(f"map {k} asks for an extra prior but has no next scale")
                wh.append((extra, extra))
            else:
                wh.append((s * math.sqrt(r), s / math.sqrt(r)))
        wh_t = torch.tensor(wh, dtype=torch.float64)  # (A, 2)
        if cfg.steps is not None:
            centres = (torch.arange(f, dtype=torch.float64) + cfg.offset) * cfg.steps[k] / image_size
        else:
            centres = (torch.arange(f, dtype=torch.float64) + cfg.offset) / f
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (f, f), row-major
        cxcy = torch.stack([cx, cy], dim=-1).reshape(f * f, 1, 2).expand(f * f, len(wh), 2)
        boxes = torch.cat([cxcy, wh_t.expand(f * f, len(wh), 2)], dim=-1).reshape(-1, 4)
        out.append(boxes)
    priors = torch.cat(out, dim=0)
    if cfg.clip == "all":
        priors = priors.clamp(0.0, 1.0)
    elif cfg.clip == "wh":
        priors = torch.cat([priors[:, :2], priors[:, 2:].clamp(0.0, 1.0)], dim=1)
    return priors.to(torch.float32)


def priors_for(config: ModelConfig) -> Tensor:
    """The priors (P, 4) ``cxcywh_rel`` of a model configuration."""
    return make_priors(config.priors, config.feature_map_sizes, config.image_size)
