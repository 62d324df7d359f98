"""``ssd train``: the paper's recipe by default, resumable, mixed precision, multi-GPU via torchrun."""

from __future__ import annotations

import argparse
import sys

from ssd.errors import SSDError

# option -> TrainConfig field, for options that map one to one
_FIELDS = {
    "data": "train_data", "val": "val_data", "out": "out_dir", "preset": "preset", "batch_norm": "batch_norm",
    "pretrained_base": "pretrained_base", "init_from": "init_from", "resume": "resume",
    "batch_size": "batch_size", "iterations": "iterations", "milestones": "milestones", "lr_decay": "lr_decay", "lr": "lr",
    "scale_lr": "scale_lr", "optimizer": "optimizer", "momentum": "momentum", "weight_decay": "weight_decay", "warmup": "warmup",
    "grad_clip": "grad_clip", "accumulate": "accumulate", "loc_loss": "loc_loss", "workers": "workers",
    "seed": "seed", "device": "device", "amp": "amp", "channels_last": "channels_last", "compile": "compile", "compile_mode": "compile_mode",
    "log_every": "log_every", "checkpoint_every": "checkpoint_every", "eval_every": "eval_every",
    "max_nonfinite": "max_nonfinite", "max_seconds": "max_seconds", "augment": "augment", "device_augment": "device_augment", "no_difficult": "keep_difficult",
    "image_size": "image_size", "reference_batch": "reference_batch", "overwrite": "overwrite",
}  # fmt: skip


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from ssd.engine import RECIPES, TrainConfig, TrainingStopped, load_config_file, train

    if args.preset is not None:
        from ssd.config import PRESETS

        if args.preset not in PRESETS:
            raise SSDError(f"--preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    values: dict = dict(RECIPES[args.recipe])
    if args.config:
        values.update(load_config_file(args.config))
    given = {}
    for option, field in _FIELDS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if option == "no_difficult":
            value = not value
        given[field] = value
    values.update(given)
    if args.resume:
        if args.config or args.recipe != "paper":
            raise SSDError("--resume continues the saved run's configuration; --config and --recipe do not apply")
        # A resumed run keeps its configuration; only how-to-run options may change.
        overrides = {k: v for k, v in given.items() if k not in ("resume",)}
        cfg = TrainConfig(resume=args.resume)
    else:
        overrides = None
        cfg = TrainConfig.from_dict(values)
    try:
        result = train(cfg, log=lambda m: print(m, file=sys.stderr), resume_overrides=overrides)
    except TrainingStopped as e:
        print(f"ssd: {e}", file=sys.stderr)
        return 130
    print(f"done: {result.step} iterations; weights: {result.model_path}; full state: {result.checkpoint}")
    if result.evaluations:
        print(f"last evaluation: mAP {result.evaluations[-1]['eval_mAP']:.4f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default)",
        description="Train an SSD. Iteration counts are given at batch 32 and scale by 32/B for batch B "
        "(the resolved schedule is printed). Multi-GPU: torchrun --nproc-per-node N -m ssd.cli train ... "
        "(--batch-size stays the global batch). Ctrl-C saves the state; --resume continues it exactly.",
    )
    from ssd.engine import TrainConfig

    d = TrainConfig()
    p.add_argument("--data", help="training index from `ssd data` (e.g. data/voc/train.json)")
    p.add_argument("--val", help="validation index, evaluated every --eval-every iterations")
    p.add_argument("--out", help=f"run folder (default {d.out_dir})")
    p.add_argument("--preset", help=f"model preset (default {d.preset}); see `ssd presets`")
    p.add_argument("--recipe", choices=("paper", "scratch"), default="paper",
                   help="paper: the paper's SGD recipe (assumes ImageNet weights); scratch: BatchNorm, "
                   "warm-up, lr 1e-2 and gradient clipping at 10, for training from random weights")  # fmt: skip
    bn = p.add_mutually_exclusive_group()
    bn.add_argument("--batch-norm", dest="batch_norm", action="store_true", default=None, help="BatchNorm after every convolution")
    bn.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    p.add_argument("--pretrained-base", metavar="imagenet|PATH|none|auto",
                   help="initialise the VGG16 base (default auto: ImageNet where the preset fits)")  # fmt: skip
    p.add_argument("--init-from", metavar="CKPT", help="fine-tune from an ssd checkpoint (other class counts too)")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true", default=None, help="start afresh in an --out folder that holds a run")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of options (TrainConfig fields)")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {d.batch_size})")
    p.add_argument("--iterations", type=int, help=f"iterations at the reference batch (default {d.iterations})")
    p.add_argument("--reference-batch", type=int,
                   help="the batch size --iterations, --milestones, --warmup and the *-every options are "
                   f"counted at (default {d.reference_batch}: the paper's); give your batch size to count "
                   "iterations as they run")  # fmt: skip
    p.add_argument("--milestones", type=_milestones, help="lr / 10 at these iterations (at batch 32; default 80000,100000)")
    p.add_argument("--lr-decay", choices=("step", "cosine"),
                   help="step: lr / 10 at the milestones (default, the paper's); cosine: from lr to 0 over "
                   "--iterations, or over --max-seconds when that ends first")  # fmt: skip
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd (default, the paper's) or adamw")
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr:g}; biases x2)")
    p.add_argument("--scale-lr", action="store_true", default=None, help="scale the rate by batch/32")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"weight decay, not on biases (default {d.weight_decay:g})")
    p.add_argument("--warmup", type=int, help="linear warm-up iterations (at batch 32)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this")
    p.add_argument("--accumulate", type=int, help="gradient accumulation steps per iteration")
    p.add_argument("--loc-loss", choices=("smooth_l1", "l1_mean"), help="localisation loss (default smooth_l1, the paper's)")
    p.add_argument("--augment", choices=("ssd", "flip", "none"),
                   help="ssd: the paper's augmentations (default); flip: horizontal flips only; none: resize only")  # fmt: skip
    p.add_argument("--device-augment", action="store_true", default=None,
                   help="decode JPEGs and augment on the training device (a GPU); loader workers only read bytes "
                   "and draw the augmentation. For GPUs whose CPU cores cannot keep up")  # fmt: skip
    p.add_argument("--image-size", type=int, help="input side (default: the preset's)")
    p.add_argument("--no-difficult", action="store_true", default=None, help="leave difficult objects out of training")
    p.add_argument("--workers", type=int, help=f"data loader processes (default {d.workers})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), help="mixed precision (default auto: bf16 on CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CUDA and the CPU)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model and the loss")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                   help="torch.compile's mode with --compile (default: default); reduce-overhead adds CUDA graphs, "
                   "the fastest training step measured on a GPU (docs/performance.md)")  # fmt: skip
    p.add_argument("--log-every", type=int, help=f"iterations between log records (default {d.log_every})")
    p.add_argument("--checkpoint-every", type=int, help=f"iterations between checkpoints, at batch 32 (default {d.checkpoint_every})")
    p.add_argument("--eval-every", type=int, help="evaluate --val every N iterations (at batch 32)")
    p.add_argument("--max-seconds", type=float, help="stop (and save) after this much training time in all (a resumed run continues the count)")
    p.add_argument("--max-nonfinite", type=int, help="skip up to N steps with a non-finite loss before stopping (default 0)")
    p.set_defaults(func=_cmd_train)

