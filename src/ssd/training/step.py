"""One training step, with no host synchronisation: forward, loss, backward, clipping, optimiser update.

Data flow of :meth:`TrainStep.__call__`::

    Batch x accumulate (images (N, 3, S, S) on the device, padded targets (N, M, 4) and (N, M))
      -> model under autocast -> loc_offsets (N, P, 4), cls_logits (N, P, C)
      -> MultiBoxLoss in float32 -> backward of total / accumulate (scaled under fp16)
      -> unscale, clip_grad_norm_ -> ``skipped``: the loss or the gradient norm is not finite (a device flag)
      -> optimiser update, skipped on the device where ``skipped`` is set

Nothing here waits for the device: the loss parts, the gradient norm and the ``skipped`` flag come back as
device tensors that the loop reads when it logs (:class:`StepHealth` keeps the count of skipped steps on the
device too). The skip without a sync rests on PyTorch's fused optimisers, which take a ``found_inf`` tensor
and leave parameters and state untouched where it is set (the mechanism ``GradScaler`` uses); an optimiser
without that support falls back to reading the flag on the host, the one sync of such a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ssd.data.dataset import Batch
from ssd.loss import LossOutput, MultiBoxLoss

TARGET_PAD = 8
"""A compiled loss sees the object dimension padded to a multiple of this, so that batches with different
object counts share a few compiled shapes instead of recompiling for each count (padding is ignored)."""


class StepOutput(NamedTuple):
    """What one step gives back, all on the device (read them only when needed: reading waits)."""

    loss: LossOutput  # summed over the accumulated micro-batches and divided by their number
    grad_norm: Tensor  # () the total gradient norm before clipping
    skipped: Tensor  # () bool: the loss or the gradient was not finite, the update was not applied


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` skips its update on the device given ``found_inf`` (PyTorch's fused SGD/Adam/AdamW)."""
    return all(group.get("fused") for group in optimizer.param_groups)


def make_fused(optimizer_cls: type[torch.optim.Optimizer], groups: list[dict], **kw) -> torch.optim.Optimizer:
    """``optimizer_cls(groups, fused=True, **kw)`` where PyTorch has a fused kernel for the parameters' device, else the default
    (foreach) implementation. Fused SGD's momentum buffers start at zero (so a skipped first step leaves defined
    state; the first update is then the same, ``0.9 * 0 + g == g``)."""
    try:
        optimizer = optimizer_cls(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device, dtype or PyTorch version
        return optimizer_cls(groups, **kw)
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group["momentum"]:
                for p in group["params"]:
                    optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))
    return optimizer


@dataclass
class TrainStep:
    """One optimiser step over ``accumulate`` micro-batches; see the module docstring for the data flow.

    Args:
        forward: what runs the network (the model, its DistributedDataParallel wrapper or a compiled one).
        params: the parameters whose gradients are clipped and checked.
        loss_fn: the MultiBox loss (or its compiled form), called as ``loss_fn(loc, logits, boxes, labels,
            reduce_positives=...)``.
        optimizer, scaler: the optimiser and the fp16 gradient scaler (disabled outside fp16).
        amp_dtype: the autocast dtype (``None``: no autocast).
        channels_last: feed the images channels-last.
        grad_clip: the maximum gradient norm (``None``: no clipping; the norm is still computed and checked).
        reduce_positives: maps the local positive count to the loss divisor under data parallelism.
        pad_targets_to: pad the object dimension of the targets to a multiple of this (0: as given).
    """

    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    params: list[nn.Parameter]
    loss_fn: Callable[..., LossOutput]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip: float | None = None
    reduce_positives: Callable[[Tensor], Tensor] | None = None
    pad_targets_to: int = 0
    device_skip: bool = field(init=False)

    def __post_init__(self) -> None:
        self.device_skip = supports_device_skip(self.optimizer) and not self.scaler.is_enabled()

    def __call__(self, batches: Sequence[Batch]) -> StepOutput:
        """One update from ``batches`` (already on the device); gradients are cleared first."""
        self.optimizer.zero_grad(set_to_none=True)
        parts: LossOutput | None = None
        for batch in batches:
            out = self._forward_backward(batch, len(batches))
            parts = out if parts is None else LossOutput(*(a + b for a, b in zip(parts, out)))
        assert parts is not None, "a step needs at least one batch"
        parts = LossOutput(*(p / len(batches) for p in parts))
        self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.params, max_norm)
        skipped = ~torch.isfinite(parts.total)
        if not self.scaler.is_enabled():  # under fp16 an infinite gradient is the scaler's overflow: it skips it
            skipped = skipped | ~torch.isfinite(grad_norm)
        self._update(skipped)
        return StepOutput(parts, grad_norm.detach(), skipped)

    def _forward_backward(self, batch: Batch, accumulate: int) -> LossOutput:
        images = batch.images.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.images
        with torch.autocast(images.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loc_offsets, cls_logits = self.forward(images)
        boxes, labels = pad_objects_to(batch.boxes_xyxy_rel, batch.labels, self.pad_targets_to)
        out = self.loss_fn(loc_offsets.float(), cls_logits.float(), boxes, labels, reduce_positives=self.reduce_positives)
        self.scaler.scale(out.total / accumulate).backward()
        # Copies: under CUDA graphs the compiled loss's outputs live in memory that its next replay overwrites.
        return LossOutput(*(t.detach().clone() for t in out))

    def _update(self, skipped: Tensor) -> None:
        if self.scaler.is_enabled():
            # The scaler skips updates with infinite gradients (a non-finite loss gives them too); fused optimisers
            # take its flag on the device, others read it on the host.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.device_skip:
            self.optimizer.found_inf = skipped.float()  # read by the fused kernels: no update where set
            self.optimizer.grad_scale = None
            self.optimizer.step()
        elif not bool(skipped):  # the host sync of optimisers without a fused kernel
            self.optimizer.step()


def pad_objects_to(boxes: Tensor, labels: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Pad (N, M, 4) boxes and (N, M) labels with zeros (label 0: padding) so that M is a multiple of ``multiple``."""
    m = labels.shape[1]
    extra = (-m) % multiple if multiple > 0 else 0
    if multiple > 0 and m == 0:
        extra = multiple
    if not extra:
        return boxes, labels
    return nn.functional.pad(boxes, (0, 0, 0, extra)), nn.functional.pad(labels, (0, extra))


class StepHealth:
    """Counts skipped steps on the device; :meth:`read` (a sync) gives the count and the first skipped step."""

    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.first = torch.full((), -1, dtype=torch.int64, device=device)

    def record(self, skipped: Tensor, step: int) -> None:
        """``skipped`` is the flag of the step numbered ``step`` (1-based)."""
        self.first = torch.where((self.first < 0) & skipped, step, self.first)
        self.count = self.count + skipped.to(torch.int64)

    def read(self) -> tuple[int, int | None]:
        """(skipped steps so far, the first of them or ``None``)."""
        count, first = (int(v) for v in torch.stack([self.count, self.first]).tolist())
        return count, first if first >= 0 else None


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor is finite (one sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def make_loss(
    priors_cxcywh: Tensor, loc_loss: str, matching: str, compiled: bool, mode: str | None = None
) -> Callable[..., LossOutput]:
    """The MultiBox loss module for training, compiled (torch.compile ``mode``) when the model is (see
    :data:`TARGET_PAD`)."""
    loss = MultiBoxLoss(priors_cxcywh, loc_loss=loc_loss, matching=matching)  # type: ignore[arg-type]
    return torch.compile(loss, mode=mode) if compiled else loss
