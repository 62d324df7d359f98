"""The training loop: one function, iteration-based, resumable bit for bit.

:func:`train` reads a :class:`TrainConfig`, builds (or resumes) the model, the optimiser, the
schedule and the data pipeline, and runs SGD steps until ``iterations``. A run folder holds::

    config.json        the resolved training and model configuration, versions, seed, git revision
    log.jsonl          one JSON record per logged step (loss parts, learning rate, images/s)
    last.ckpt          the full training state (model, optimiser, schedule, step, RNG), atomically
    model.ckpt         the final weights alone, for `ssd eval` / `ssd detect`
    tb/                TensorBoard logs (when the tensorboard package is installed)

The paper's recipe is the default: SGD, momentum 0.9, weight decay 5e-4 (none on biases), learning
rate 1e-3 with biases at twice the rate, batch 32, 120k iterations, the rate divided by 10 at 80k
and 100k. Iterations are counted at batch 32: with batch B they and the milestones scale by 32 / B
(the images seen stay the same); the learning rate scales by B / 32 only with ``scale_lr``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel: ``batch_size``
is the global batch, split over the processes; the positive count that normalises the loss is
summed over all of them, so the gradients equal a single process's on the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from torch import nn

from ssd.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    config_from_checkpoint,
    load_checkpoint,
    load_state,
    make_checkpoint,
    save_checkpoint,
)
from ssd.config import get_preset
from ssd.errors import SSDError
from ssd.model import SSD
from ssd.training.step import TARGET_PAD, StepHealth, TrainStep, all_finite, make_fused, make_loss

REFERENCE_BATCH = 32


@dataclass
class TrainConfig:
    """Everything a training run depends on. Iteration counts are at batch 32 (see module doc)."""

    train_data: str = ""  # a dataset index (JSON) made by `ssd data`
    val_data: str | None = None  # index evaluated every `eval_every` iterations
    out_dir: str = "runs/ssd"
    overwrite: bool = False  # start a fresh run in a folder that already holds one
    preset: str = "ssd300"
    image_size: int | None = None  # None: the preset's
    batch_norm: bool | None = None  # None: the preset's
    pretrained_base: str = "auto"  # imagenet | PATH | none | auto (imagenet where it fits, else none)
    init_from: str | None = None  # fine-tune from one of our checkpoints
    resume: str | None = None  # a last.ckpt to continue

    batch_size: int = 32
    reference_batch: int = REFERENCE_BATCH  # the batch size that iterations and milestones are given at
    iterations: int = 120_000
    milestones: tuple[int, ...] = (80_000, 100_000)
    # step: lr / 10 at each milestone (the paper's); cosine: from lr to 0 over the run (milestones unused).
    # With --max-seconds, the cosine runs over whichever ends first, the iterations or the time budget.
    lr_decay: Literal["step", "cosine"] = "step"
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    scale_lr: bool = False
    momentum: float = 0.9  # SGD momentum; AdamW uses (momentum, 0.999) as its betas
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0
    warmup: int = 0  # iterations of linear warm-up (at batch 32)
    grad_clip: float | None = None
    accumulate: int = 1
    loc_loss: Literal["smooth_l1", "l1_mean"] = "smooth_l1"
    force_best_prior: bool = True
    keep_difficult: bool = True

    augment: Literal["ssd", "flip", "none"] = "ssd"  # the SSD augmentations, horizontal flips only, or none
    mirror_boxes: bool = True  # False only to show that a broken flip hurts (tests, docs)
    # Decode JPEGs and augment on the training device (workers only read bytes and draw the augmentation):
    # for GPUs whose CPU cores cannot decode fast enough (ssd.data.gpu_pipeline). Same draws and boxes.
    device_augment: bool = False
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    channels_last: bool | None = None  # None: on for CUDA and the CPU (ssd.device.channels_last_default)
    compile: bool = False
    # torch.compile's mode with --compile: reduce-overhead adds CUDA graphs (the fastest step measured on a GPU).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"

    log_every: int = 20
    checkpoint_every: int = 2000  # iterations (at batch 32)
    eval_every: int = 0  # iterations (at batch 32); 0 = never
    max_nonfinite: int = 0  # steps with a non-finite loss or gradient to skip before stopping
    max_seconds: float | None = None  # stop (and save) after this much training time in all (resumes continue the count)
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        if not self.train_data and not self.resume:
            raise SSDError("--data: give the training index (made by `ssd data`)")
        for name in ("batch_size", "reference_batch", "iterations", "accumulate", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SSDError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise SSDError(f"--workers must be 0 or more, got {self.workers}")
        if self.lr <= 0:
            raise SSDError(f"--lr must be positive, got {self.lr}")
        if self.warmup < 0 or self.eval_every < 0 or self.max_nonfinite < 0:
            raise SSDError("--warmup, --eval-every and --max-nonfinite must be 0 or more")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise SSDError(f"--grad-clip must be positive, got {self.grad_clip}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise SSDError(f"--amp must be auto, bf16, fp16 or none, not {self.amp!r}")
        if self.lr_decay not in ("step", "cosine"):
            raise SSDError(f"--lr-decay must be step or cosine, not {self.lr_decay!r}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise SSDError(f"--max-seconds must be 0 or more, got {self.max_seconds}")
        if self.optimizer not in ("sgd", "adamw"):
            raise SSDError(f"--optimizer must be sgd or adamw, not {self.optimizer!r}")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
            raise SSDError(f"--compile-mode must be default, reduce-overhead or max-autotune-no-cudagraphs, not {self.compile_mode!r}")
        if self.augment not in ("ssd", "flip", "none"):
            raise SSDError(f"--augment must be ssd, flip or none, not {self.augment!r}")
        if self.device_augment and self.augment == "none":
            raise SSDError("--device-augment needs an augmentation (--augment ssd or flip), not --augment none")
        if self.image_size is not None and self.image_size < 32:
            raise SSDError(f"--image-size must be at least 32, got {self.image_size}")
        if self.loc_loss not in ("smooth_l1", "l1_mean"):
            raise SSDError(f"--loc-loss must be smooth_l1 or l1_mean, not {self.loc_loss!r}")
        for name, option in (("train_data", "--data"), ("val_data", "--val"), ("init_from", "--init-from"),
                             ("resume", "--resume")):  # fmt: skip
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise SSDError(f"{option}: file not found: {value}")
        from ssd.config import PRESETS

        if self.preset not in PRESETS:
            raise SSDError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.init_from and self.resume:
            raise SSDError("--init-from and --resume exclude each other")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SSDError(f"unknown training options: {', '.join(unknown)}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(int(m) for m in d["milestones"])
        return cls(**d)


RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    # From random weights: BatchNorm, warm-up, a larger rate, gradient clipping (see docs/training.md).
    "scratch": {"batch_norm": True, "pretrained_base": "none", "lr": 1e-2, "warmup": 500, "grad_clip": 10.0},
}
"""Named sets of TrainConfig overrides."""


@dataclass(frozen=True)
class Schedule:
    """The resolved iteration schedule for the actual batch size."""

    iterations: int
    milestones: tuple[int, ...]
    warmup: int
    lr: float
    checkpoint_every: int
    eval_every: int
    decay: str = "step"

    def lr_factor(self, step: int, progress: float | None = None) -> float:
        """The rate multiplier at ``step``; ``progress`` in [0, 1] overrides step / iterations for cosine."""
        if self.decay == "cosine":
            p = min(1.0, step / self.iterations if progress is None else progress)
            factor = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            factor = 0.1 ** sum(step >= m for m in self.milestones)
        if self.warmup and step < self.warmup:
            factor *= (step + 1) / self.warmup
        return factor

    def describe(self, batch_size: int) -> str:
        if self.decay == "cosine":
            decay = "cosine decay to 0"
        else:
            decay = f"divided by 10 at {', '.join(str(m) for m in self.milestones) or 'none'}"
        return (
            f"schedule: {self.iterations} iterations at batch {batch_size} "
            f"({self.iterations * batch_size} images), lr {self.lr:g} {decay}"
            + (f", warm-up {self.warmup}" if self.warmup else "")
        )


def resolve_schedule(cfg: TrainConfig) -> Schedule:
    """Scale iteration counts from the reference batch (32) to the actual (global, accumulated) batch."""
    batch = cfg.batch_size * cfg.accumulate
    scale = cfg.reference_batch / batch

    def it(x: int) -> int:
        return max(1, round(x * scale)) if x else 0

    lr = cfg.lr * (batch / cfg.reference_batch if cfg.scale_lr else 1.0)
    return Schedule(it(cfg.iterations), tuple(it(m) for m in cfg.milestones), it(cfg.warmup), lr,
                    it(cfg.checkpoint_every), it(cfg.eval_every), cfg.lr_decay)  # fmt: skip


# --- environment ---------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def pick_device(name: str, info: DistInfo) -> torch.device:
    """The training device: ``auto`` is CUDA when present, else the CPU; under torchrun, CUDA's local rank."""
    from ssd.device import resolve_device

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(name, "--device")
    if device.type == "cuda":
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)  # resolve_device gives an indexed device, which set_device needs
    return device


def versions() -> dict[str, str]:
    import torchvision

    from ssd.version import __version__

    return {
        "ssd": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "none",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# --- building blocks -----------------------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD (or AdamW) with biases at ``bias_lr_factor`` x the rate and no weight decay on biases.

    ``fused`` (default: when the parameters are on CUDA) takes PyTorch's fused kernel where it has one: one launch
    per step, and a non-finite step skipped on the device without a host sync (:mod:`ssd.training.step`). On the
    CPU, where a sync costs nothing, the default keeps the foreach kernels (their rounding, hence the demo's
    figures, unchanged)."""
    biases, weights = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith(".bias") else weights).append(p)
    groups = [
        {"params": weights, "lr": lr, "weight_decay": cfg.weight_decay},
        {"params": biases, "lr": lr * cfg.bias_lr_factor, "weight_decay": 0.0},
    ]
    if fused is None:
        fused = any(p.is_cuda for p in weights + biases)
    cls, kw = (torch.optim.AdamW, {"betas": (cfg.momentum, 0.999)}) if cfg.optimizer == "adamw" else (torch.optim.SGD, {"momentum": cfg.momentum})
    return make_fused(cls, groups, lr=lr, **kw) if fused else cls(groups, lr=lr, **kw)


def make_train_step(
    model: SSD,
    cfg: TrainConfig,
    lr: float,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    forward: nn.Module | None = None,
    reduce_positives: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainStep:
    """The step :func:`train` runs for ``model`` (already on its device): the loss, the optimiser, the fp16 scaler;
    ``forward`` (default the model; its DistributedDataParallel wrapper under torchrun) and the loss compiled with
    ``cfg.compile``, in torch.compile's ``cfg.compile_mode`` (``"reduce-overhead"``: with CUDA graphs)."""
    device = model.priors_cxcywh.device
    net = forward if forward is not None else model
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    if cfg.compile:
        net = torch.compile(net, mode=mode)
    loss_fn = make_loss(model.priors_cxcywh, cfg.loc_loss, cfg.force_best_prior, compiled=cfg.compile, mode=mode)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainStep(
        net, list(model.parameters()), loss_fn, make_optimizer(model, cfg, lr), scaler, amp_dtype=amp_dtype,
        channels_last=channels_last, grad_clip=cfg.grad_clip, reduce_positives=reduce_positives,
        pad_targets_to=TARGET_PAD if cfg.compile else 0,
    )  # fmt: skip


def _sum_positives_over_ranks(num_pos: torch.Tensor) -> torch.Tensor:
    """The loss divisor under data parallelism: the positives of all processes over their number (at least 1)."""
    total = num_pos.detach().clone().float()
    dist.all_reduce(total)
    return total.clamp(min=1) / dist.get_world_size()


def init_from_checkpoint(model: SSD, path: str) -> list[str]:
    """Load every tensor of ``path`` whose name and shape fit; return the names skipped."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in own if k not in fitting)
    own.update(fitting)
    model.load_state_dict(own)
    return skipped


def _worker_init(_: int) -> None:
    # Ctrl-C is handled by the main process, which saves and stops cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(state["python"]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopRequest:
    """SIGINT sets a flag; the loop saves at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequest":
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _StopAtBoundary(Exception):
    """Raised at a step boundary after Ctrl-C: the state there is consistent and is saved."""


class TrainingStopped(SSDError):
    """The run stopped early (Ctrl-C); the state was saved."""


class TrainingDiverged(SSDError):
    """The loss or gradient became non-finite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path
    model_path: Path | None
    last_loss: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    skipped_images: int = 0
    stopped: bool = False
    evaluations: list[dict[str, Any]] = field(default_factory=list)


# --- the loop ------------------------------------------------------------------------------------


RESUME_OVERRIDABLE = frozenset(
    {"iterations", "workers", "progress", "device", "log_every", "checkpoint_every", "eval_every",
     "val_data", "tensorboard", "max_nonfinite", "max_seconds"}
)  # fmt: skip
"""Options a resumed run may change; everything else comes from the saved run."""


def train(
    cfg: TrainConfig, log: Callable[[str], None] = print, resume_overrides: dict[str, Any] | None = None
) -> TrainResult:
    """Run (or resume) training as configured; returns where the results are.

    With ``cfg.resume`` the saved run's configuration is used, updated by ``resume_overrides``
    (only the fields in :data:`RESUME_OVERRIDABLE`, e.g. more iterations or other workers).

    Raises :class:`TrainingStopped` after saving on Ctrl-C, :class:`TrainingDiverged` on a
    non-finite loss or gradient (after ``max_nonfinite`` skipped steps), :class:`SSDError` on bad input.
    """
    from ssd.data.dataset import DetectionDataset, TrainBatchSampler, collate
    from ssd.data.index import DatasetIndex
    from ssd.data.transforms import EvalTransform, TrainTransform

    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_checkpoint(cfg.resume)
        if "train_config" not in resume_ckpt or "step" not in resume_ckpt:
            raise SSDError(f"--resume: {cfg.resume} holds weights but no training state (use --init-from)")
        saved = TrainConfig.from_dict(resume_ckpt["train_config"])
        overrides = dict(resume_overrides or {})
        refused = sorted(set(overrides) - RESUME_OVERRIDABLE)
        if refused:
            raise SSDError(f"--resume continues the saved run; these options cannot change: {', '.join(refused)}")
        cfg = dataclasses.replace(saved, resume=cfg.resume, init_from=None, **overrides)
    cfg.validate()
    # Absolute data paths, so that the saved run resumes from any working directory.
    cfg = dataclasses.replace(
        cfg, train_data=str(Path(cfg.train_data).resolve()),
        val_data=str(Path(cfg.val_data).resolve()) if cfg.val_data else None,
    )  # fmt: skip

    run_dir = Path(cfg.out_dir)
    if resume_ckpt is None and (run_dir / "last.ckpt").exists() and not cfg.overwrite:
        raise SSDError(
            f"--out {run_dir} already holds a run (last.ckpt): continue it with --resume {run_dir / 'last.ckpt'}, "
            "choose another --out, or pass --overwrite"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            for stale in run_dir.glob(".last.ckpt.*.tmp"):  # left by a writer killed mid-write
                stale.unlink(missing_ok=True)
        except OSError as e:
            raise SSDError(f"--out {run_dir}: cannot write there ({e.strerror or e})") from None

    device_kind = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") else "cpu"
    info = setup_distributed(device_kind)
    device = pick_device(cfg.device, info)
    if cfg.batch_size % info.world_size:
        raise SSDError(f"--batch-size {cfg.batch_size} does not split over {info.world_size} processes")
    local_batch = cfg.batch_size // info.world_size
    schedule = resolve_schedule(cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    from ssd.device import channels_last_default

    channels_last = cfg.channels_last if cfg.channels_last is not None else channels_last_default(device)

    # Data
    train_index = DatasetIndex.load(cfg.train_data)
    if not train_index.images:
        raise SSDError(f"{cfg.train_data}: the index has no images")

    # Model
    notes: list[str] = []
    if resume_ckpt is not None:
        model_config = config_from_checkpoint(resume_ckpt)
        if tuple(model_config.class_names) != tuple(train_index.classes):
            raise SSDError("--resume: the checkpoint's classes differ from the training data's")
        model = SSD(model_config)
        load_state(model, resume_ckpt["model"])
    else:
        overrides = {} if cfg.batch_norm is None else {"batch_norm": cfg.batch_norm}
        if cfg.image_size is not None:
            overrides["image_size"] = cfg.image_size
        model_config = get_preset(cfg.preset, train_index.classes, **overrides)
        model = SSD(model_config)
        if cfg.init_from:
            skipped = init_from_checkpoint(model, cfg.init_from)
            notes.append(f"initialised from {cfg.init_from}; re-initialised: {', '.join(skipped) or 'nothing'}")
        else:
            base = cfg.pretrained_base
            if base == "auto":
                full_vgg = tuple(model_config.vgg_widths) == (64, 128, 256, 512, 512) and not model_config.batch_norm
                base = "imagenet" if full_vgg else "none"
            from ssd.weights import load_pretrained_base

            notes += load_pretrained_base(model, base)
            if base != "none":
                notes.append(f"base initialised from ImageNet VGG16 ({base})")
    if model_config.batch_norm and info.enabled:
        if device.type != "cuda":
            raise SSDError("SyncBatchNorm needs GPUs: multi-process training with --batch-norm runs on CUDA only")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    forward: nn.Module = model
    reduce_positives = None
    if info.enabled:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        reduce_positives = _sum_positives_over_ranks
    step_fn = make_train_step(model, cfg, schedule.lr, amp_dtype, channels_last, forward=forward,
                              reduce_positives=reduce_positives)  # fmt: skip
    optimizer, scaler = step_fn.optimizer, step_fn.scaler
    # Training time of the run: "before" this start (from the checkpoint), "spent" in all, updated each step
    # and agreed across processes (their maximum), so every rank sees the same budget and learning rate.
    clock = {"before": 0.0, "spent": 0.0}

    def lr_factor(at_step: int) -> float:
        progress = None
        if cfg.max_seconds is not None and cfg.lr_decay == "cosine":
            # Whichever ends first: the iterations or the time budget.
            spent = clock["spent"] / cfg.max_seconds if cfg.max_seconds > 0 else 1.0
            progress = max(at_step / schedule.iterations, spent)
        return schedule.lr_factor(at_step, progress)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    step = 0
    if resume_ckpt is not None:
        try:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            if "scaler" in resume_ckpt:
                scaler.load_state_dict(resume_ckpt["scaler"])
            step = int(resume_ckpt["step"])
            clock["before"] = clock["spent"] = float(resume_ckpt.get("train_seconds", 0.0))
            _set_rng_state(resume_ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"--resume {cfg.resume}: the training state is incomplete or does not fit: {e}") from None

    if cfg.augment == "none":
        transform = EvalTransform(model_config.image_size)
    else:
        full = cfg.augment == "ssd"
        transform = TrainTransform(
            model_config.image_size, model_config.mean, photometric=full, zoom_out=4.0 if full else 1.0,
            crop=full, mirror_boxes=cfg.mirror_boxes,
        )  # fmt: skip
    if cfg.device_augment:
        from ssd.data.gpu_pipeline import EncodedDetectionDataset, collate_encoded

        dataset = EncodedDetectionDataset(train_index, transform, seed=cfg.seed, keep_difficult=cfg.keep_difficult)
        collate_fn = collate_encoded
    else:
        dataset = DetectionDataset(train_index, transform, seed=cfg.seed, keep_difficult=cfg.keep_difficult)
        collate_fn = collate
    sampler = TrainBatchSampler(len(dataset), local_batch, cfg.seed, info.rank, info.world_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        worker_init_fn=_worker_init if cfg.workers > 0 else None,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )  # fmt: skip
    val_index = DatasetIndex.load(cfg.val_data) if cfg.val_data else None

    # Run folder
    last_path, model_path = run_dir / "last.ckpt", run_dir / "model.ckpt"
    writer = None
    if info.is_main:
        record = {
            "train_config": cfg.to_dict(),
            "model_config": model_config.to_dict(),
            "schedule": dataclasses.asdict(schedule),
            "versions": versions(),
            "git_revision": git_revision(),
            "world_size": info.world_size,
            "amp": amp,
            "channels_last": channels_last,
            "command": sys.argv,
        }
        (run_dir / "config.json").write_text(json.dumps(record, indent=2))
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                notes.append("TensorBoard logs off: `pip install tensorboard` to get them")
        for note in notes:
            log(note)
        log(schedule.describe(cfg.batch_size * cfg.accumulate))
        log(f"training {model_config.preset} on {len(train_index)} images, {model_config.num_classes - 1} classes, "
            f"device {device}{f' x {info.world_size}' if info.enabled else ''}, amp {amp}; run folder {run_dir}")  # fmt: skip

    def save_state(at_step: int) -> None:
        """Write last.ckpt, only from a state worth resuming: no step over the budget of skipped ones, finite weights."""
        check_health(at_step)
        if not info.is_main:
            return
        if not all_finite(model.parameters()):
            raise TrainingDiverged(
                f"the weights became non-finite by step {at_step}; stopped. The last good checkpoint is "
                f"{last_path if last_path.exists() else 'not written yet'} (try a lower --lr or --grad-clip)"
            )
        extra = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": at_step,
            "train_seconds": clock["spent"],
            "train_config": cfg.to_dict(),
            "rng": _rng_state(),
        }
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        atomic_torch_save(make_checkpoint(model, **extra), last_path)

    batches_per_epoch = sampler.batches_per_epoch()
    result = TrainResult(run_dir, step, last_path, None)
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=schedule.iterations, initial=step, desc="train", unit="it", dynamic_ncols=True)
    log_file = open(run_dir / "log.jsonl", "a" if resume_ckpt is not None else "w") if info.is_main else None
    window_images, window_start = 0, time.perf_counter()

    def batches():
        """Batches from the current position, epoch after epoch."""
        consumed = step * cfg.accumulate
        epoch, first = divmod(consumed, batches_per_epoch)
        while True:
            sampler.start(epoch, first)
            if cfg.device_augment:
                from ssd.data.gpu_pipeline import render_batches

                yield from render_batches(loader, transform, device)
            else:
                yield from loader
            epoch, first = epoch + 1, 0

    def agreed(flag: bool) -> bool:
        """True on every rank when it is true on any (so all ranks leave the loop at the same step)."""
        if not info.enabled:
            return flag
        t = torch.tensor(float(flag), device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def time_spent() -> float:
        """Training time of the run so far; with a time budget, the same on every rank (their maximum)."""
        spent = clock["before"] + time.perf_counter() - loop_start
        if info.enabled and cfg.max_seconds is not None:
            t = torch.tensor(spent, dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            spent = float(t.item())
        return spent

    health = StepHealth(device)
    known_skipped = 0

    def check_health(at_step: int) -> None:
        """Read the skipped-step count (a sync): stop past ``max_nonfinite``, else say what was skipped."""
        nonlocal known_skipped
        count, first = health.read()
        if count > cfg.max_nonfinite:
            raise TrainingDiverged(
                f"the loss or gradient became non-finite at step {first}; stopped at step {at_step}. The last good "
                f"checkpoint is {last_path if last_path.exists() else 'not written yet'} "
                f"(try a lower --lr, --grad-clip, or --amp none)"
            )
        if count > known_skipped:
            log(f"by step {at_step}: {count} step(s) with a non-finite loss or gradient skipped "
                f"({count}/{cfg.max_nonfinite} allowed), the first at step {first}")  # fmt: skip
            known_skipped = count

    model.train()
    stream = batches()
    loop_start = time.perf_counter()
    try:
        with _StopRequest() as stop:
            while step < schedule.iterations:
                if agreed(stop.requested):
                    raise _StopAtBoundary
                micro = []
                for _ in range(cfg.accumulate):
                    try:
                        batch = next(stream)
                    except RuntimeError:
                        if stop.requested:  # a worker died of the same Ctrl-C
                            raise _StopAtBoundary from None
                        raise
                    if batch.failed:
                        result.skipped_images += len(batch.failed)
                    micro.append(batch.to(device, non_blocking=True))
                    window_images += batch.images.shape[0] * info.world_size
                out = step_fn(micro)
                health.record(out.skipped, step + 1)
                clock["spent"] = time_spent()  # kept in last.ckpt: a resumed run continues the count
                scheduler.step()
                step += 1

                if bar is not None:
                    bar.update(1)
                if step % cfg.log_every == 0 or step == schedule.iterations:
                    check_health(step)
                    elapsed = time.perf_counter() - window_start
                    speed = window_images / elapsed if elapsed > 0 else 0.0
                    window_images, window_start = 0, time.perf_counter()
                    values = dict(zip(out.loss._fields, torch.stack(list(out.loss)).tolist()))
                    lr = optimizer.param_groups[0]["lr"]
                    result.last_loss, result.images_per_second = values, speed
                    if info.is_main:
                        rec = {"step": step, **values, "lr": lr, "images_per_s": speed, "grad_norm": float(out.grad_norm)}
                        log_file.write(json.dumps(rec) + "\n")
                        log_file.flush()
                        if writer is not None:
                            for k, v in values.items():
                                writer.add_scalar(f"loss/{k}", v, step)
                            writer.add_scalar("lr", lr, step)
                            writer.add_scalar("images_per_s", speed, step)
                        if bar is not None:
                            bar.set_postfix(loss=f"{values['total']:.3f}", loc=f"{values['loc']:.3f}",
                                            cls=f"{values['cls']:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")  # fmt: skip
                if step % schedule.checkpoint_every == 0 and step < schedule.iterations:
                    save_state(step)
                if val_index is not None and schedule.eval_every and step % schedule.eval_every == 0:
                    result.evaluations.append(_evaluate_during_training(model, val_index, step, writer, log, info, log_file))
                if cfg.max_seconds is not None and clock["spent"] >= cfg.max_seconds:
                    log(f"time budget of {cfg.max_seconds:g} s reached at step {step}")
                    result.stopped = True
                    break
    except _StopAtBoundary:
        # Between steps: the model, optimiser and step counter agree, so the state can be saved.
        if bar is not None:
            bar.close()
        save_state(step)
        raise TrainingStopped(
            f"interrupted at step {step}; state saved to {last_path}. Continue with: ssd train --resume {last_path}"
        ) from None
    except KeyboardInterrupt:
        # A second Ctrl-C, possibly in the middle of a step: the last checkpoint on disk is left as it is.
        raise TrainingStopped(
            f"interrupted at step {step} without saving (second Ctrl-C); the last checkpoint is "
            f"{last_path if last_path.exists() else 'not written yet'}"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if log_file is not None:
            log_file.close()
        stream.close()  # ends the loader iterator and its worker processes
    save_state(step)
    if info.is_main:
        save_checkpoint(model, model_path)
        if result.skipped_images:
            log(f"{result.skipped_images} unreadable images were replaced during training (see warnings)")
    result.step = step
    result.model_path = model_path if info.is_main else None
    return result


def _evaluate_during_training(model, index, step, writer, log, info, log_file) -> dict[str, Any]:
    from ssd.evaluate import evaluate

    if not info.is_main:
        dist.barrier()  # wait for rank 0's evaluation before the next step's collectives
        return {}
    evaluation = evaluate(model, index)
    model.train()
    m_ap = evaluation.voc.mAP
    log(f"step {step}: {index.name} VOC07 mAP {m_ap:.4f}")
    if writer is not None:
        writer.add_scalar("eval/mAP", m_ap, step)
    record = {"step": step, "eval_mAP": m_ap}
    log_file.write(json.dumps(record) + "\n")
    if info.enabled:
        dist.barrier()
    return record


def load_config_file(path: str) -> dict[str, Any]:
    """Training options from a JSON or TOML file (keys as TrainConfig fields)."""
    p = Path(path)
    if not p.is_file():
        raise SSDError(f"--config: file not found: {path}")
    try:
        if p.suffix == ".toml":
            import tomllib

            return tomllib.loads(p.read_text())
        return json.loads(p.read_text())
    except Exception as e:
        raise SSDError(f"--config {path}: cannot parse: {e}") from None

