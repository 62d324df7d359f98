"""The SSD network: a modified VGG16 base, extra feature layers and the prediction heads.

Data flow of :meth:`SSD.forward`::

    images (N, 3, S, S) RGB in [0, 1]
      -> (x - mean) / std                        (buffers from the configuration)
      -> VGG16 base: conv1_1 .. conv4_3 [L2Norm * scale -> map 0] .. pool5 (3x3/1/1) (the preset's block depths:
         map 0 is block 4's last convolution),
         conv6 (3x3, dilation 6, padding 6), conv7 (1x1)  [-> map 1]
      -> extra blocks (1x1 then 3x3 or 4x4)        [-> maps 2..]
      -> per map: loc head (4 A_k channels), cls head (C A_k channels), 3x3 / padding 1
      -> loc_offsets (N, P, 4), cls_logits (N, P, C), flattened (map, row, column, prior)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd.config import ModelConfig, get_preset
from ssd.errors import SSDError
from ssd.placement import InferencePlacement
from ssd.postprocess import Detections, postprocess
from ssd.priors import priors_for
from ssd.settings import DetectSettings


class SSDOutput(NamedTuple):
    """Raw network outputs: offsets w.r.t. ``priors_cxcywh`` and class logits (not scores)."""

    loc_offsets: Tensor  # (N, P, 4)
    cls_logits: Tensor  # (N, P, C)


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels, times a learnable per-channel scale."""

    def __init__(self, channels: int, scale: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)


class _ConvStack(nn.Module):
    """Named convolutions (and pools) applied in order; ReLU after each convolution.

    Modules are attributes named like the paper's layers (``conv1_1``, ``pool1``, ...), optionally
    with a BatchNorm ``bn1_1`` after ``conv1_1``.
    """

    def __init__(self, batch_norm: bool) -> None:
        super().__init__()
        self._order: list[str] = []
        self._batch_norm = batch_norm

    def _conv(self, name: str, cin: int, cout: int, k: int, **kw: int) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, bias=not self._batch_norm, **kw))
        if self._batch_norm:
            setattr(self, "bn" + name[4:], nn.BatchNorm2d(cout))
        self._order.append(name)

    def _pool(self, name: str, pool: nn.Module) -> None:
        setattr(self, name, pool)
        self._order.append(name)

    def _run(self, x: Tensor, names: Sequence[str]) -> Tensor:
        for name in names:
            x = getattr(self, name)(x)
            if name.startswith("conv"):
                if self._batch_norm:
                    x = getattr(self, "bn" + name[4:])(x)
                x = F.relu(x, inplace=True)
        return x


class VGGBase(_ConvStack):
    """VGG16's five blocks (pool3 in ceil mode, pool5 3x3/1/1) plus conv6 (atrous) and conv7.

    ``config.vgg_depths`` convolutions per block; with ``config.conv1_stride == 2`` conv1_1 strides and pool1 is
    left out (:class:`~ssd.config.ModelConfig`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.batch_norm)
        cin = 3
        for block, (n_convs, width) in enumerate(zip(config.vgg_depths, config.vgg_widths), start=1):
            for i in range(1, n_convs + 1):
                stride = config.conv1_stride if (block, i) == (1, 1) else 1
                self._conv(f"conv{block}_{i}", cin, width, 3, padding=1, stride=stride)
                cin = width
            if block == 1 and config.conv1_stride == 2:
                continue  # conv1_1 already halved the resolution
            if block == 3:
                pool = nn.MaxPool2d(2, 2, ceil_mode=True)
            elif block == 5:
                pool = nn.MaxPool2d(3, 1, padding=1)
            else:
                pool = nn.MaxPool2d(2, 2)
            self._pool(f"pool{block}", pool)
        self._conv("conv6", cin, config.fc_channels, 3, padding=6, dilation=6)
        self._conv("conv7", config.fc_channels, config.fc_channels, 1)
        split = self._order.index("pool4")
        self._to_conv4_3, self._to_conv7 = self._order[:split], self._order[split:]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        conv4_3 = self._run(x, self._to_conv4_3)
        conv7 = self._run(conv4_3, self._to_conv7)
        return conv4_3, conv7


class ExtraLayers(_ConvStack):
    """conv8_1, conv8_2, conv9_1, ...: one feature map per block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.batch_norm)
        cin = config.fc_channels
        self._blocks = []
        for b, block in enumerate(config.extras, start=8):
            self._conv(f"conv{b}_1", cin, block.mid_channels, 1)
            self._conv(
                f"conv{b}_2", block.mid_channels, block.out_channels, block.kernel_size,
                stride=block.stride, padding=block.padding,
            )  # fmt: skip
            self._blocks.append((f"conv{b}_1", f"conv{b}_2"))
            cin = block.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for names in self._blocks:
            x = self._run(x, names)
            maps.append(x)
        return maps


class SSD(nn.Module):
    """Single Shot MultiBox Detector built from a :class:`~ssd.config.ModelConfig`.

    ``model(images)`` takes RGB in [0, 1], shape (N, 3, S, S) with ``S = config.image_size``, and
    returns :class:`SSDOutput` ``(loc_offsets (N, P, 4), cls_logits (N, P, C))`` where ``P`` is the
    number of priors (``model.priors_cxcywh``, fractional cx, cy, w, h) and ``C`` counts background.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.base = VGGBase(config)
        self.l2norm = L2Norm(config.vgg_widths[3], config.l2norm_scale)
        self.extras = ExtraLayers(config)
        per_pos = config.priors.priors_per_position
        c = config.num_classes
        self.loc_heads = nn.ModuleList(
            nn.Conv2d(ch, 4 * a, 3, padding=1) for ch, a in zip(config.source_channels, per_pos)
        )
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(ch, c * a, 3, padding=1) for ch, a in zip(config.source_channels, per_pos)
        )
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("priors_cxcywh", priors_for(config), persistent=False)
        self.reset_parameters()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases for every convolution; BatchNorm to identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.l2norm.weight, self.config.l2norm_scale)

    def features(self, images: Tensor) -> list[Tensor]:
        """The source feature maps, largest first, for images RGB in [0, 1]."""
        x = (images - self.mean) / self.std
        conv4_3, conv7 = self.base(x)
        return [self.l2norm(conv4_3), conv7, *self.extras(conv7)]

    def forward(self, images: Tensor) -> SSDOutput:
        n = images.shape[0]
        locs, logits = [], []
        for fmap, loc_head, cls_head in zip(self.features(images), self.loc_heads, self.cls_heads):
            # (N, A*4, H, W) -> (N, H, W, A*4) -> (N, H*W*A, 4): the prior order (map, row, col, prior)
            locs.append(loc_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(cls_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, self.config.num_classes))
        return SSDOutput(torch.cat(locs, dim=1), torch.cat(logits, dim=1))

    def check_images(self, images: Tensor) -> None:
        """A one-line :class:`SSDError` unless ``images`` is a floating-point batch (N, 3, S, S), S the model's
        input size (other sizes lay out other priors: the boxes would be wrong, not refused)."""
        s = self.config.image_size
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise SSDError(f"images must be a tensor (N, 3, {s}, {s}), RGB in [0, 1] resized to the model's input, "
                           f"got {shape}; ssd.Detector takes images of any size")  # fmt: skip
        if not images.is_floating_point():
            raise SSDError(f"images must be floating point RGB in [0, 1], not {images.dtype}; ssd.Detector takes uint8")

    @torch.no_grad()
    def detect(
        self,
        images: Tensor,
        *,
        min_score: float = 0.01,
        max_overlap: float = 0.45,
        top_k: int = 200,
        image_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
    ) -> list[Detections]:
        """Detections for a batch of images (N, 3, S, S) RGB in [0, 1]: one record per image.

        images -> (eval mode, on the model's device) forward -> postprocess -> Detections per image. Boxes are
        ``xyxy_rel`` unless ``image_sizes`` ((height, width) per image of the original images) is given, then
        ``xyxy_abs`` in those pixels. Defaults are the paper's test settings. The model's mode is restored
        afterwards and its memory format left as it is.
        """
        self.check_images(images)
        DetectSettings(min_score=min_score, max_overlap=max_overlap, top_k=top_k).check_model(
            self.config.class_names, self.config.num_priors
        )  # the ranges, one-line errors
        if images.shape[0] == 0:
            return []
        with InferencePlacement(self, channels_last=False) as placed:
            loc_offsets, cls_logits = placed.model(placed.inputs(images))
        return postprocess(
            loc_offsets, cls_logits, self.priors_cxcywh, self.config.decode,
            min_score=min_score, max_overlap=max_overlap, top_k=top_k, image_sizes=image_sizes,
        )  # fmt: skip


def build_model(
    preset: str | ModelConfig = "ssd300",
    class_names: Sequence[str] | int | None = None,
    **overrides,
) -> SSD:
    """An SSD with fresh (Xavier) weights: ``build_model("ssd300", class_names=[...])``.

    ``class_names`` lists the foreground classes (default: the 20 VOC classes) or gives their
    number; ``overrides`` replace configuration fields (e.g. ``batch_norm=True``). No weights are
    downloaded: see :mod:`ssd.weights` for ImageNet initialisation.
    """
    if isinstance(preset, ModelConfig):
        config = preset.replace(**overrides) if overrides else preset
        if class_names is not None:
            raise ValueError("give class names in the configuration, not beside it")
    else:
        config = get_preset(preset, class_names, **overrides) if class_names is not None else get_preset(
            preset, **overrides
        )
    return SSD(config)
