"""``ssd train``: the Caffe SSD's recipe by default (``ssd_pascal.py``, as the tutorial), resumable, mixed precision, multi-GPU via torchrun.

The options are :class:`~ssd.training.config.TrainConfig`'s fields, one flag each, built from their declarations
(type, choices, default, help); ``--recipe`` and ``--config`` choose sets of values. Building the parser imports
no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any

from ssd.errors import SSDError
from ssd.training.config import RECIPES, TrainConfig, field_types, flag_of, literal_choices

SET_OPTIONS = ("recipe", "config")
"""Options that are not TrainConfig fields: they choose sets of values."""


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _base_type(t: Any) -> Any:
    """``X`` for ``X | None``, else ``t``."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    optional = typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1
    return args[0] if optional else t


def _help(f: dataclasses.Field, t: Any) -> str:
    """The field's help text with its default (a ``None`` default is explained by the text itself)."""
    text = f.metadata["help"]
    if f.default is None or f.default == "":
        return text
    if t is bool:
        return f"{text} (default: {'on' if f.default else 'off'})"
    shown = ",".join(str(v) for v in f.default) if isinstance(f.default, tuple) else f.default
    return f"{text} (default {shown})"


def add_field_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: booleans as ``--x/--no-x``, ``Literal`` types as choices, the default in the
    help. Unset flags stay ``None``, so that a recipe, a config file or a resumed run's own values apply."""
    types_ = field_types()
    for f in dataclasses.fields(TrainConfig):
        t = _base_type(types_[f.name])
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": _help(f, t).replace("%", "%%")}
        if t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif literal_choices(t) is not None:
            kw["choices"] = literal_choices(t)
        else:
            kw["type"] = _milestones if f.name == "milestones" else t
            kw["metavar"] = f.metadata.get("metavar")
        p.add_argument(flag_of(f.name), **kw)


def _cmd_train(args: argparse.Namespace) -> int:
    from ssd.training.config import load_config_file
    from ssd.training.loop import train

    values: dict = dict(RECIPES[args.recipe])
    if args.config:
        values.update(load_config_file(args.config))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    values.update(given)
    if args.resume:
        if args.config or args.recipe != "paper":
            raise SSDError("--resume continues the saved run's configuration; --config and --recipe do not apply")
        # A resumed run keeps its configuration; only how-to-run options may change.
        overrides = {k: v for k, v in given.items() if k != "resume"}
        cfg = TrainConfig(resume=args.resume)
    else:
        overrides = None
        cfg = TrainConfig.from_dict(values)
    from ssd.errors import TrainingStopped

    try:
        result = train(cfg, log=lambda m: print(m, file=sys.stderr), resume_overrides=overrides)
    except TrainingStopped as e:
        print(f"ssd: {e}", file=sys.stderr)
        return 130
    print(f"done: {result.step} iterations on {result.device}; weights: {result.model_path}; full state: {result.checkpoint}")
    if result.evaluations:
        print(f"last evaluation: mAP {result.evaluations[-1]['eval_mAP']:.4f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default)",
        description="Train an SSD. Iteration counts are given at the reference batch (32) and scale by 32/B for "
        "batch B (the resolved schedule is printed). Multi-GPU: torchrun --nproc-per-node N -m ssd.cli train ... "
        "(--batch-size stays the global batch). Ctrl-C saves the state; --resume continues it exactly.",
    )
    p.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                   help="paper: the paper's SGD recipe (assumes ImageNet weights); tutorial: the tutorial's objective "
                   "(L1 loss averaged over 4 x positives, its matching) at its batch of 8; scratch: BatchNorm, "
                   "warm-up, lr 1e-2 and gradient clipping at 10, for training from random weights")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of options (TrainConfig fields)")
    add_field_options(p)
    p.set_defaults(func=_cmd_train)
