"""What a training run depends on: :class:`TrainConfig`, the named recipes, and the schedule resolved for the batch.

Every option is declared once, as a field of :class:`TrainConfig`: its type (a ``Literal`` lists the choices),
its default, its help text, its command-line flag and whether a resumed run may change it. ``ssd train``'s parser,
the validation of choices and :data:`RESUME_OVERRIDABLE` are all derived from these declarations. This module
imports no torch, so ``ssd train --help`` is built without it.

Iterations, milestones, warm-up and the ``*_every`` intervals are counted at ``reference_batch`` (the paper's 32):
with batch B they scale by ``reference_batch / B`` (the images seen stay the same); the learning rate scales by
``B / reference_batch`` only with ``scale_lr``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ssd.device import DEVICE_HELP
from ssd.errors import SSDError

REFERENCE_BATCH = 32


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, resume: bool = False) -> Any:
    """A :class:`TrainConfig` field: ``help`` for ``--help``, ``flag`` when it is not ``--field-name``, ``resume``
    when a resumed run may change it (how to run, not what is trained)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "resume": resume})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (see the module docstring for how iterations are counted)."""

    # data and run folder
    train_data: str = option("", "training index made by `ssd data` (e.g. data/voc/train.json)", flag="--data", metavar="INDEX")
    val_data: str | None = option(None, "validation index, evaluated every --eval-every iterations", flag="--val", metavar="INDEX", resume=True)
    out_dir: str = option("runs/ssd", "run folder (with --resume: default, the folder of the checkpoint resumed)",
                          flag="--out", metavar="DIR", resume=True)  # fmt: skip
    overwrite: bool = option(False, "start a fresh run in an --out folder that already holds one")
    resume: str | None = option(None, "continue a run from its last.ckpt, exactly", metavar="CKPT")
    # model
    preset: str = option("ssd300", "model preset; see `ssd presets`")
    image_size: int | None = option(None, "input side (default: the preset's)")
    batch_norm: bool | None = option(None, "BatchNorm after every convolution (default: the preset's)")
    pretrained_base: str = option("auto", "initialise the VGG16 base: imagenet, a PATH, none, or auto (ImageNet "
                                  "where the preset fits)", metavar="imagenet|PATH|none|auto")  # fmt: skip
    init_from: str | None = option(None, "fine-tune from an ssd checkpoint (other class counts too)", metavar="CKPT")
    # optimisation
    batch_size: int = option(32, "global batch size (split over the processes under torchrun)")
    reference_batch: int = option(REFERENCE_BATCH, "the batch size --iterations, --milestones, --warmup and the "
                                  "*-every options are counted at; give your batch size to count iterations as they run")  # fmt: skip
    iterations: int = option(120_000, "iterations, at the reference batch", resume=True)
    milestones: tuple[int, ...] = option((80_000, 100_000), "lr / 10 at these iterations (comma-separated, at the "
                                         "reference batch)", metavar="N,N")  # fmt: skip
    lr_decay: Literal["step", "cosine"] = option("step", "step: lr / 10 at the milestones (the paper's); cosine: from "
                                                 "lr to 0 over --iterations, or over --max-seconds when that ends first")  # fmt: skip
    optimizer: Literal["sgd", "adamw"] = option("sgd", "sgd (the paper's) or adamw")
    lr: float = option(1e-3, "learning rate (biases at --bias-lr-factor times it)")
    scale_lr: bool = option(False, "scale the rate by batch / reference batch")
    momentum: float = option(0.9, "SGD momentum; AdamW uses (momentum, 0.999) as its betas")
    weight_decay: float = option(5e-4, "weight decay, not on biases")
    bias_lr_factor: float = option(2.0, "the biases' learning rate over the weights' (the paper's 2)")
    warmup: int = option(0, "iterations of linear warm-up, at the reference batch")
    grad_clip: float | None = option(None, "clip the gradient norm to this")
    accumulate: int = option(1, "gradient accumulation steps per iteration")
    loc_loss: Literal["smooth_l1", "l1_mean"] = option("smooth_l1", "localisation loss: smooth_l1 summed over "
                                                       "positives (the paper's) or l1_mean (the tutorial's nn.L1Loss)")  # fmt: skip
    matching: Literal["bipartite", "tutorial", "threshold"] | None = option(
        None, "how priors are matched to objects: bipartite (the paper's and Caffe's), tutorial (the tutorial's and "
        "torchvision's: an object's best prior is forced, the last object wins it), threshold (no forced matches; only "
        "to show what they do); default: the preset's (ssd.config.default_matching)")
    keep_difficult: bool = option(True, "train on difficult objects too", flag="--difficult")
    # data pipeline
    augment: Literal["ssd", "flip", "none"] = option("ssd", "ssd: the paper's augmentations; flip: horizontal flips "
                                                     "only; none: resize only")  # fmt: skip
    mirror_boxes: bool = option(True, "mirror the boxes with a flipped image (off only to show that it matters)")
    device_augment: bool = option(False, "decode JPEGs and augment on the training device (a GPU); loader workers only "
                                  "read bytes and draw the augmentation")  # fmt: skip
    workers: int = option(4, "data loader processes", resume=True)
    seed: int = option(0, "random seed (data order, augmentation, initialisation)")
    # running
    device: str = option("auto", DEVICE_HELP, resume=True)
    amp: Literal["auto", "bf16", "fp16", "none"] = option("auto", "mixed precision (auto: bf16 on CUDA)")
    channels_last: bool | None = option(None, "channels-last memory format (default: on for CUDA and the CPU)")
    compile: bool = option(False, "torch.compile the model and the loss")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = option(
        "default", "torch.compile's mode with --compile; reduce-overhead adds CUDA graphs")
    log_every: int = option(20, "iterations between log records", resume=True)
    checkpoint_every: int = option(2000, "iterations between checkpoints, at the reference batch", resume=True)
    eval_every: int = option(0, "evaluate --val every N iterations, at the reference batch (0: never)", resume=True)
    max_nonfinite: int = option(0, "steps with a non-finite loss or gradient to skip before stopping", resume=True)
    max_seconds: float | None = option(None, "stop (and save) after this much training time in all (a resumed run "
                                       "continues the count)", resume=True)  # fmt: skip
    progress: bool = option(True, "show a progress bar", resume=True)
    tensorboard: bool = option(True, "write TensorBoard logs (when tensorboard is installed)", resume=True)

    def validate(self) -> None:
        """Raise :class:`SSDError` naming the option for a value out of range or a file that does not exist."""
        if not self.train_data and not self.resume:
            raise SSDError("--data: give the training index (made by `ssd data`)")
        for name in ("batch_size", "reference_batch", "iterations", "accumulate", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SSDError(f"{flag_of(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "warmup", "eval_every", "max_nonfinite"):
            if getattr(self, name) < 0:
                raise SSDError(f"{flag_of(name)} must be 0 or more, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SSDError(f"--lr must be positive, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise SSDError(f"--grad-clip must be positive, got {self.grad_clip}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise SSDError(f"--max-seconds must be 0 or more, got {self.max_seconds}")
        for f, choices in _choices().items():
            if getattr(self, f) is not None and getattr(self, f) not in choices:
                listed = ", ".join(choices[:-1]) + " or " + choices[-1]
                raise SSDError(f"{flag_of(f)} must be {listed}, not {getattr(self, f)!r}")
        if self.device_augment and self.augment == "none":
            raise SSDError("--device-augment needs an augmentation (--augment ssd or flip), not --augment none")
        if self.image_size is not None and self.image_size < 32:
            raise SSDError(f"--image-size must be at least 32, got {self.image_size}")
        for name in ("train_data", "val_data", "init_from", "resume"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise SSDError(f"{flag_of(name)}: file not found: {value}")
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
        """From JSON-like values (a saved run's, a --config file's); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SSDError(f"unknown training options: {', '.join(unknown)}")
        d = dict(d)
        if "force_best_prior" in d:  # runs saved before `matching` existed: False meant no forced matches
            d.setdefault("matching", None if d.pop("force_best_prior") else "threshold")
        if "milestones" in d:
            try:
                d["milestones"] = tuple(int(m) for m in d["milestones"])
            except (TypeError, ValueError) as err:
                raise SSDError(f"milestones: expected a list of integers, got {d['milestones']!r}") from err
        return cls(**d)


def flag_of(name: str) -> str:
    """The command-line flag of the TrainConfig field ``name``."""
    f = _FIELDS[name]
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_types() -> dict[str, Any]:
    """Each field's type (the annotations evaluated)."""
    return typing.get_type_hints(TrainConfig)


def literal_choices(t: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal`` type, or of ``Literal[...] | None``; ``None`` for other types."""
    if typing.get_origin(t) is Literal:
        return typing.get_args(t)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return typing.get_args(args[0])
    return None


def _choices() -> dict[str, tuple[str, ...]]:
    """The fields typed as a ``Literal`` (or an optional one) and their choices."""
    return {name: c for name, t in field_types().items() if (c := literal_choices(t)) is not None}


RESUME_OVERRIDABLE = frozenset(name for name, f in _FIELDS.items() if f.metadata.get("resume"))
"""Options a resumed run may change (how to run it); everything else comes from the saved run."""

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    # The tutorial's objective and batch: nn.L1Loss averaged over 4 x positives, its matching, batch 8 (its other
    # settings are the paper's defaults).
    "tutorial": {"loc_loss": "l1_mean", "matching": "tutorial", "batch_size": 8},
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

    def warnings(self) -> list[str]:
        """What in this schedule cannot be meant: milestones at or past the run's end (the rate never decays there)."""
        late = [m for m in self.milestones if m >= self.iterations]
        if self.decay == "step" and late:
            return [f"milestones {', '.join(map(str, late))} lie at or past the run's end ({self.iterations} iterations "
                    "at this batch): the rate is never divided there (lower --milestones, or give --reference-batch "
                    "your batch size to count iterations as they run)"]  # fmt: skip
        return []

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
    """Scale iteration counts from the reference batch to the actual (global, accumulated) batch."""
    batch = cfg.batch_size * cfg.accumulate
    scale = cfg.reference_batch / batch

    def it(x: int) -> int:
        return max(1, round(x * scale)) if x else 0

    lr = cfg.lr * (batch / cfg.reference_batch if cfg.scale_lr else 1.0)
    schedule = Schedule(it(cfg.iterations), tuple(it(m) for m in cfg.milestones), it(cfg.warmup), lr,
                        it(cfg.checkpoint_every), it(cfg.eval_every), cfg.lr_decay)  # fmt: skip
    if schedule.warmup and schedule.warmup >= schedule.iterations:
        raise SSDError(
            f"--warmup {cfg.warmup} resolves to {schedule.warmup} iterations at batch {batch}, not shorter than the "
            f"run ({schedule.iterations}): the rate would never reach --lr. Lower --warmup, or give --reference-batch "
            f"{batch} to count iterations as they run"
        )
    return schedule


def load_config_file(path: str) -> dict[str, Any]:
    """Training options from a JSON or TOML file (keys as TrainConfig fields)."""
    p = Path(path)
    if not p.is_file():
        raise SSDError(f"--config: file not found: {path}")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError as err:  # Python 3.10
                raise SSDError(f"--config {path}: TOML files need Python 3.11 or later; use JSON") from err
            return tomllib.loads(p.read_text())
        return json.loads(p.read_text())
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise SSDError(f"--config {path}: cannot parse: {err}") from err
