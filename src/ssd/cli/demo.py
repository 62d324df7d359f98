"""``ssd demo``: synthetic data -> training -> evaluation -> drawn detections -> report, offline."""

from __future__ import annotations

import argparse
import json
import sys

from ssd.device import DEVICE_HELP
from ssd.errors import SSDError


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssd.demo import MIN_MAP, run_demo

    if args.iterations is not None and args.iterations < 1:
        raise SSDError(f"--iterations must be at least 1, got {args.iterations}")
    if args.workers < 0:
        raise SSDError(f"--workers must be 0 or more, got {args.workers}")
    result = run_demo(
        args.out, device=args.device, workers=args.workers, progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr), iterations=args.iterations,
    )  # fmt: skip
    print(f"VOC07 mAP on the synthetic test split: {result.mAP:.4f} (expected at least {MIN_MAP})")
    for name, ap in result.ap.items():
        print(f"  {name:<10} {'-' if ap is None else f'{ap:.4f}'}")
    print(f"training {result.train_seconds:.0f} s, whole demo {result.total_seconds:.0f} s")
    print(f"report: {result.report}")
    if args.json:
        print(json.dumps({"mAP": result.mAP, "ap": result.ap, "train_seconds": result.train_seconds,
                          "total_seconds": result.total_seconds, "files": result.files}))  # fmt: skip
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole system offline in about 5 minutes: synthetic data, training, evaluation, drawings",
        description="Write a synthetic shapes dataset, train the small preset on it, evaluate it, draw its "
        "detections and write a report. Needs no GPU and no internet; uses a GPU when there is one.",
    )
    p.add_argument("--out", default="ssd-demo", help="output folder (default ssd-demo)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: the demo is compute-bound)")
    p.add_argument("--iterations", type=int, help="training iterations (default: the demo's fixed setting)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.set_defaults(func=_cmd_demo)
