"""The ``ssd`` command: the only place that parses arguments, picks devices and prints.

Each sub-command lives in a module of this package with a ``register(subparsers)`` function.
Every user-fixable problem is an :class:`~ssd.errors.SSDError`, printed as one line
(``ssd: error: ...``) with exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ssd.version import __version__
from ssd.errors import SSDError, os_error_message

COMMAND_MODULES: tuple[str, ...] = ("demo", "data", "train", "evaluate", "detect", "serve", "export", "convert")
"""Sub-command modules of this package, in the order ``ssd --help`` lists them."""

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _cmd_info(args: argparse.Namespace) -> int:
    from ssd.checkpoint import config_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    config = config_from_checkpoint(ckpt)
    n_params = sum(t.numel() for k, t in ckpt["model"].items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    info = {
        "file": str(args.checkpoint),
        "format_version": ckpt["format_version"],
        "library_version": ckpt.get("library_version"),
        "preset": config.preset,
        "image_size": config.image_size,
        "num_classes": config.num_classes,
        "class_names": list(config.class_names),
        "feature_maps": list(config.feature_map_sizes),
        "num_priors": config.num_priors,
        "batch_norm": config.batch_norm,
        "mean": list(config.mean),
        "std": list(config.std),
        "parameters": n_params,
        "other_entries": sorted(k for k in ckpt if k not in ("format", "format_version", "library_version", "config", "model")),
    }
    if isinstance(ckpt.get("eval"), dict):  # best.ckpt: the evaluation that made it the best
        info["evaluation"] = {k: ckpt["eval"].get(k) for k in ("mAP", "step", "split")}
    if isinstance(ckpt.get("step"), int):  # last.ckpt: where training stands
        info["step"] = ckpt["step"]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list) and key == "class_names":
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    import torch

    from ssd.config import PRESETS, get_preset
    from ssd.model import SSD

    rows = []
    for name in PRESETS:
        config = get_preset(name)
        with torch.device("meta"):
            n_params = sum(p.numel() for p in SSD(config).parameters())
        rows.append((name, config.image_size, config.feature_map_sizes, config.num_priors, n_params))
    print(f"{'preset':<20}{'input':>6}  {'feature maps':<28}{'priors':>7}{'parameters (21 classes)':>26}")
    for name, size, maps, priors, n_params in rows:
        print(f"{name:<20}{size:>6}  {str(list(maps)):<28}{priors:>7}{n_params:>26,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssd",
        description="Single Shot MultiBox Detector: train, evaluate, detect and export SSD models.",
    )
    parser.add_argument("--version", action="version", version=f"ssd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print what a checkpoint holds (configuration, classes, size)")
    p.add_argument("checkpoint", help="an ssd checkpoint file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("presets", help="list the model presets")
    p.set_defaults(func=_cmd_presets)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"ssd.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if "torch" not in sys.modules and args.command not in ("info", "presets"):  # loaded: its threads are set
            from ssd.device import prepare_cpu_threads

            prepare_cpu_threads()
        return int(args.func(args) or 0)
    except SSDError as e:
        print(f"ssd: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # a full disk, a read-only folder, a file gone: the machine's state, said in one line
        print(f"ssd: error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ssd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
