"""The demo must be able to fail: run ``ssd demo`` with one part of the method broken and compare the mAP.

Each change is a full demo run (same data, same seed, same settings) with one thing switched off:

- ``none``: the demo as it is;
- ``no-forced-match``: objects do not claim their best prior (``matching="threshold"``), so an object no
  prior overlaps at IoU >= 0.5 is never a positive (the demo's ``bar`` class, 6-8 times as long as thick,
  is such an object for every prior of the ``small`` preset);
- ``no-box-mirroring``: the horizontal flip mirrors the image but not its boxes (``mirror_boxes=False``).

Usage (from the repository root; ``PYTHONPATH=src`` when the package is not installed)::

    python bench/demo_ablation.py --out runs/ablation --min-drop 0.1     # all three, one after the other
    python bench/demo_ablation.py --out runs/ablation --change no-forced-match
    python bench/demo_ablation.py --out runs/ablation --parallel 3 --device cuda --workers 4

It writes ``<out>/<change>/`` (each a complete demo folder with its report) and ``<out>/ablation.json``
(mAP, per-class AP and drop against ``none`` for each change, seconds, device and versions), and prints a
table. On the 2-core CPU machine each run takes about five minutes. ``--classes`` replaces the dataset's
class list (for example without ``bar``, to see what it adds); ``--iterations``, ``--train-images`` and
``--test-images`` shorten a dry run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from the source tree without installing

CHANGES = {
    "none": {},
    "no-forced-match": {"matching": "threshold"},
    "no-box-mirroring": {"mirror_boxes": False},
}


def parse_settings(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """``--set NAME=VALUE`` options as TrainConfig changes: each value read as JSON (numbers, lists, true/false),
    else kept as the string (``amp=bf16``); a list becomes a tuple, as TrainConfig's tuple fields are."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected NAME=VALUE")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value  # a plain string such as none or bf16
        if isinstance(settings[name], list):
            settings[name] = tuple(settings[name])
    return settings


def per_class_ap(ap: dict) -> str:
    """A run's per-class AP on one line, for the printed tables."""
    return " ".join(f"{c} {'-' if v is None else f'{v:.3f}'}" for c, v in ap.items())


def _run(change: str, out: str, device: str, workers: int, data_changes: dict, threads: int,
         iterations: int | None, extra: dict) -> dict:
    import torch

    from ssd.data.synthetic import DEMO_CONFIG
    from ssd.demo import run_demo

    if threads:
        torch.set_num_threads(threads)
    data = dataclasses.replace(DEMO_CONFIG, **data_changes) if data_changes else None
    result = run_demo(Path(out) / change, device=device, workers=workers, progress=False, log=lambda m: None,
                      iterations=iterations, changes={**extra, **CHANGES[change]}, data=data)  # fmt: skip
    return {"change": change, "settings": CHANGES[change], "mAP": result.mAP, "ap": result.ap,
            "train_seconds": round(result.train_seconds, 1), "total_seconds": round(result.total_seconds, 1),
            "report": str(result.report)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the runs and ablation.json")
    parser.add_argument("--change", action="append", choices=list(CHANGES),
                        help="the changes to run (repeatable; default: all, 'none' first)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto, as the demo)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers per run (default 0, as the demo)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time (default 1)")
    parser.add_argument("--iterations", type=int, help="a shorter run, for a dry run (default: the demo's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another training setting for every run, e.g. amp=none (repeatable)")  # fmt: skip
    parser.add_argument("--min-drop", type=float, metavar="MAP",
                        help="exit 1 when a change drops the mAP by less than this (the issue's check: 0.1)")  # fmt: skip
    parser.add_argument("--classes", help="comma-separated class list replacing the demo dataset's")
    parser.add_argument("--train-images", type=int, help="fewer training images, for a dry run (default: the demo's)")
    parser.add_argument("--test-images", type=int, help="fewer test images, for a dry run (default: the demo's)")
    args = parser.parse_args(argv)

    import torch

    # the unchanged run first: the drops are measured against it
    changes = ["none"] + [c for c in dict.fromkeys(args.change or list(CHANGES)) if c != "none"]
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    data_changes = {k: v for k, v in (("classes", classes), ("num_trainval", args.train_images),
                                      ("num_test", args.test_images)) if v is not None}  # fmt: skip
    extra = parse_settings(args.set, parser)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parallel = max(1, min(args.parallel, len(changes)))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else 0
    jobs = [(c, str(out), args.device, args.workers, data_changes, threads, args.iterations, extra)
            for c in changes]
    from ssd.errors import SSDError

    try:
        if parallel == 1:
            rows = [_run(*job) for job in jobs]
        else:
            with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
                rows = list(pool.map(_run, *zip(*jobs)))
    except SSDError as e:
        print(f"demo_ablation: {e}", file=sys.stderr)
        return 2
    base = rows[0]["mAP"]
    for row in rows:
        row["drop"] = round(base - row["mAP"], 4)
    record = {
        "command": shlex.join(["python", "bench/demo_ablation.py"] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": "cuda: " + torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available()
        else f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "data_changes": data_changes,
        "iterations": args.iterations,
        "settings": extra,
        "parallel": parallel,
        "workers": args.workers,
        "threads_per_run": threads or torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "runs": rows,
    }  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'change':18s} {'mAP':>7s} {'drop':>7s}  per-class AP")
    for row in rows:
        print(f"{row['change']:18s} {row['mAP']:7.4f} {row['drop']:7.4f}  {per_class_ap(row['ap'])}")
    print(f"({record['device']}, {record['seconds']:.0f} s; {out / 'ablation.json'})")
    if args.min_drop is not None:
        short = [r["change"] for r in rows[1:] if r["drop"] < args.min_drop]
        if short:
            print(f"demo_ablation: {', '.join(short)} dropped the mAP by less than {args.min_drop}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
