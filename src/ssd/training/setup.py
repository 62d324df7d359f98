"""Everything a training loop needs, built from a :class:`~ssd.training.config.TrainConfig`.

The order :func:`ssd.training.loop.train` builds them in::

    resolve_run         the configuration (a resumed run's own, updated by what may change) and its checkpoint
    prepare_run_dir     the run folder, writable, not holding another run
    make_runtime        device (ssd.device.resolve_device, the one rule), processes under torchrun, precision,
                        memory format
    build_model         the SSD (from the preset, a checkpoint to fine-tune from, or the run resumed) with notes
                        on how it was initialised, on the device
    make_train_step     loss, optimiser, fp16 scaler and the compiled or DDP forward, as one TrainStep
    DataStream          training batches on the device, epoch after epoch from any step, whichever pipeline
                        decodes them (the CPU loader, or the GPU one with --device-augment)
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ssd.checkpoint import config_from_checkpoint, load_checkpoint, load_state
from ssd.config import ModelConfig, default_matching, get_preset
from ssd.data.dataset import Batch
from ssd.data.index import DatasetIndex
from ssd.errors import SSDError
from ssd.model import SSD
from ssd.paths import refuse_to_overwrite_inputs
from ssd.training.config import RESUME_OVERRIDABLE, TrainConfig
from ssd.training.step import TARGET_PAD, TrainStep, make_fused, make_loss


def resolve_run(cfg: TrainConfig, resume_overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, dict | None]:
    """The configuration to run, validated, with absolute data paths (so a saved run resumes from any working
    directory), and the checkpoint resumed (``None`` for a new run). A resumed run takes its saved configuration,
    updated by ``resume_overrides`` (only options in :data:`RESUME_OVERRIDABLE`)."""
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
        # A run continues beside the checkpoint it resumes (a copied run folder resumes in the copy), or in --out.
        overrides.setdefault("out_dir", str(Path(cfg.resume).resolve().parent))
        cfg = dataclasses.replace(saved, resume=cfg.resume, init_from=None, **overrides)
    cfg.validate()
    cfg = dataclasses.replace(
        cfg, train_data=str(Path(cfg.train_data).resolve()),
        val_data=str(Path(cfg.val_data).resolve()) if cfg.val_data else None,
    )  # fmt: skip
    return cfg, resume_ckpt


RUN_FILES = ("last.ckpt", "model.ckpt", "best.ckpt", "log.jsonl", "config.json")
"""What a run writes in its folder."""


def prepare_run_dir(cfg: TrainConfig, resumed: bool) -> Path:
    """The run folder, created and checked writable by the main process; stale temporary checkpoints removed."""
    run_dir = Path(cfg.out_dir)
    last = run_dir / "last.ckpt"
    if not resumed and last.exists() and not cfg.overwrite:
        raise SSDError(
            f"--out {run_dir} already holds a run (last.ckpt): continue it with --resume {last}, "
            "choose another --out, or pass --overwrite"
        )
    if resumed and last.exists() and run_dir.resolve() != Path(cfg.resume).resolve().parent:
        raise SSDError(f"--out {run_dir} holds another run (last.ckpt): resume into an empty folder or the run's own")
    writes = [("--out", run_dir / name) for name in RUN_FILES]
    reads = [Path(p) for p in (cfg.train_data, cfg.val_data, cfg.init_from) if p]
    if cfg.pretrained_base not in ("auto", "imagenet", "none"):
        reads.append(Path(cfg.pretrained_base))
    refuse_to_overwrite_inputs(writes, reads)  # the resumed checkpoint is the run's own: it is meant to be replaced
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            for stale in run_dir.glob(".last.ckpt.*.tmp"):  # left by a writer killed mid-write
                stale.unlink(missing_ok=True)
        except OSError as err:
            raise SSDError(f"--out {run_dir}: cannot write there ({err.strerror or err})") from err
    return run_dir


@dataclass(frozen=True)
class DistInfo:
    """This process's place under torchrun (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes."""

    device: torch.device
    dist: DistInfo
    amp: str  # "bf16", "fp16" or "none"
    channels_last: bool
    local_batch: int  # this process's share of the global batch

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)


def make_runtime(cfg: TrainConfig) -> Runtime:
    """The device by :func:`ssd.device.resolve_device` (under torchrun, CUDA's local rank), the process group, the
    autocast precision (``auto``: bf16 on CUDA where supported) and the memory format (default by device)."""
    from ssd.device import channels_last_default, resolve_device

    device = resolve_device(cfg.device, "--device")
    info = DistInfo()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % info.world_size:
        raise SSDError(f"--batch-size {cfg.batch_size} does not split over {info.world_size} processes")
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    channels_last = cfg.channels_last if cfg.channels_last is not None else channels_last_default(device)
    return Runtime(device, info, amp, channels_last, cfg.batch_size // info.world_size)


@dataclass
class BuiltModel:
    """The model on its device, its configuration, and how it was initialised (for the log)."""

    model: SSD
    config: ModelConfig
    notes: list[str] = field(default_factory=list)


def build_model(cfg: TrainConfig, classes: tuple[str, ...], resume_ckpt: dict | None, runtime: Runtime) -> BuiltModel:
    """The SSD to train: the resumed run's, or the preset's initialised from ``--init-from``, ImageNet VGG16 or
    nothing; SyncBatchNorm under torchrun; on the device, in the memory format."""
    if resume_ckpt is not None:
        model_config = config_from_checkpoint(resume_ckpt)
        if tuple(model_config.class_names) != tuple(classes):
            raise SSDError("--resume: the checkpoint's classes differ from the training data's")
        built = BuiltModel(SSD(model_config), model_config)
        load_state(built.model, resume_ckpt["model"])
    else:
        overrides: dict[str, Any] = {} if cfg.batch_norm is None else {"batch_norm": cfg.batch_norm}
        if cfg.image_size is not None:
            overrides["image_size"] = cfg.image_size
        model_config = get_preset(cfg.preset, classes, **overrides)
        model = SSD(model_config)
        built = BuiltModel(model, model_config, _initialise(model, cfg))
    if built.config.batch_norm and runtime.dist.enabled:
        if runtime.device.type != "cuda":
            raise SSDError("SyncBatchNorm needs GPUs: multi-process training with --batch-norm runs on CUDA only")
        built.model = nn.SyncBatchNorm.convert_sync_batchnorm(built.model)
    built.model.to(runtime.device)
    if runtime.channels_last:
        built.model.to(memory_format=torch.channels_last)
    return built


def _initialise(model: SSD, cfg: TrainConfig) -> list[str]:
    """Initialise a new model from ``--init-from`` or ``--pretrained-base``; the notes say how."""
    if cfg.init_from:
        skipped = init_from_checkpoint(model, cfg.init_from)
        return [f"initialised from {cfg.init_from}; re-initialised: {', '.join(skipped) or 'nothing'}"]
    base = cfg.pretrained_base
    if base == "auto":
        base = "imagenet" if model.config.has_vgg16_base else "none"
    from ssd.weights import load_pretrained_base

    notes = list(load_pretrained_base(model, base))
    if base != "none":
        notes.append(f"base initialised from ImageNet VGG16 ({base})")
    return notes


def init_from_checkpoint(model: SSD, path: str) -> list[str]:
    """Load every tensor of ``path`` whose name and shape fit; return the names skipped."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in own if k not in fitting)
    own.update(fitting)
    model.load_state_dict(own)
    return skipped


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
    adamw = cfg.optimizer == "adamw"
    cls, kw = (torch.optim.AdamW, {"betas": (cfg.momentum, 0.999)}) if adamw else (torch.optim.SGD, {"momentum": cfg.momentum})
    return make_fused(cls, groups, lr=lr, **kw) if fused else cls(groups, lr=lr, **kw)


def make_train_step(model: SSD, cfg: TrainConfig, lr: float, runtime: Runtime) -> TrainStep:
    """The step :func:`~ssd.training.loop.train` runs for ``model`` (already on its device): the loss, the
    optimiser, the fp16 scaler; the forward (the model, or its DistributedDataParallel wrapper under torchrun) and
    the loss compiled with ``cfg.compile``, in torch.compile's ``cfg.compile_mode`` (reduce-overhead: CUDA graphs)."""
    net: nn.Module = model
    reduce_positives = None
    if runtime.dist.enabled:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        reduce_positives = _sum_positives_over_ranks
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    if cfg.compile:
        net = torch.compile(net, mode=mode)
    matching = cfg.matching or default_matching(model.config.preset)
    loss_fn = make_loss(model.priors_cxcywh, cfg.loc_loss, matching, compiled=cfg.compile, mode=mode)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp == "fp16")
    return TrainStep(
        net, list(model.parameters()), loss_fn, make_optimizer(model, cfg, lr), scaler, amp_dtype=runtime.amp_dtype,
        channels_last=runtime.channels_last, grad_clip=cfg.grad_clip, reduce_positives=reduce_positives,
        pad_targets_to=TARGET_PAD if cfg.compile else 0,
    )  # fmt: skip


def _sum_positives_over_ranks(num_pos: torch.Tensor) -> torch.Tensor:
    """The loss divisor under data parallelism: the positives of all processes over their number (at least 1)."""
    total = num_pos.detach().clone().float()
    dist.all_reduce(total)
    return total.clamp(min=1) / dist.get_world_size()


def load_train_index(cfg: TrainConfig) -> DatasetIndex:
    index = DatasetIndex.load(cfg.train_data)
    if not index.images:
        raise SSDError(f"{cfg.train_data}: the index has no images")
    return index


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's generators (the data's randomness is seeded per sample, see ssd.data.dataset)."""
    torch.manual_seed(seed)
    random.seed(seed)


class DataStream:
    """Training batches on the device, epoch after epoch, from any step: the same data order and augmentation
    whatever the number of workers and wherever a run is resumed. With ``cfg.device_augment`` the workers read
    bytes and draw the augmentation and the device decodes and renders (ssd.data.gpu_pipeline); otherwise the
    workers decode and augment. The loop does not know which."""

    def __init__(self, cfg: TrainConfig, index: DatasetIndex, model_config: ModelConfig, runtime: Runtime) -> None:
        from ssd.data.dataset import DetectionDataset, TrainBatchSampler, collate
        from ssd.data.transforms import EvalTransform, TrainTransform

        self.cfg, self.device = cfg, runtime.device
        if cfg.augment == "none":
            self.transform: Any = EvalTransform(model_config.image_size, model_config.input_resize)
        else:
            full = cfg.augment == "ssd"
            self.transform = TrainTransform(
                model_config.image_size, model_config.mean, photometric=full, zoom_out=4.0 if full else 1.0,
                crop=full, mirror_boxes=cfg.mirror_boxes,
            )  # fmt: skip
        dataset_cls, collate_fn = DetectionDataset, collate
        if cfg.device_augment:
            from ssd.data.gpu_pipeline import EncodedDetectionDataset, collate_encoded

            dataset_cls, collate_fn = EncodedDetectionDataset, collate_encoded
        dataset = dataset_cls(index, self.transform, seed=cfg.seed, keep_difficult=cfg.keep_difficult)
        self.sampler = TrainBatchSampler(len(dataset), runtime.local_batch, cfg.seed, runtime.dist.rank, runtime.dist.world_size)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, collate_fn=collate_fn, num_workers=cfg.workers,
            pin_memory=runtime.device.type == "cuda", persistent_workers=cfg.workers > 0,
            worker_init_fn=_ignore_sigint if cfg.workers > 0 else None, prefetch_factor=4 if cfg.workers > 0 else None,
        )  # fmt: skip

    def batches(self, step: int) -> Iterator[Batch]:
        """Batches on the device from iteration ``step`` on (``accumulate`` batches per iteration), endlessly."""
        epoch, first = divmod(step * self.cfg.accumulate, self.sampler.batches_per_epoch())
        while True:
            self.sampler.start(epoch, first)
            if self.cfg.device_augment:
                from ssd.data.gpu_pipeline import render_batches

                yield from render_batches(self.loader, self.transform, self.device)
            else:
                for batch in self.loader:
                    yield batch.to(self.device, non_blocking=True)
            epoch, first = epoch + 1, 0


def _ignore_sigint(_: int) -> None:
    # Ctrl-C is handled by the main process, which saves and stops cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

