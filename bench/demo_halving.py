"""A cheaper demo at equal quality (issue 22)? The demo and a candidate setting, full runs, one process.

Both runs are complete ``ssd demo`` runs (:func:`ssd.demo.run_demo`: the same synthetic data, seed and machine),
one after the other, so their training times compare on the same machine in the same session:

- ``demo``: the demo as it is (:data:`ssd.demo.DEMO_TRAINING`);
- ``candidate``: the same with the ``--set`` changes (TrainConfig fields), for example a smaller input and fewer
  iterations.

Usage (from the repository root; ``PYTHONPATH=src`` when the package is not installed)::

    python bench/demo_halving.py --out runs/halving --set image_size=160 --set iterations=940 --set milestones=[750]
    python bench/demo_halving.py --out runs/halving --set amp=bf16          # on a CPU with AVX-512 BF16 or AMX

It writes ``<out>/demo/`` and ``<out>/candidate/`` (each a demo folder with its report) and ``<out>/halving.json``
(mAP, per-class AP, training and total seconds of each, the ratio of training times, machine and versions),
prints a table, and exits 1 unless the candidate's training took at most ``--max-ratio`` (0.5) of the demo's and
its mAP is at least ``--min-map`` (the demo's ``MIN_MAP``). ``--iterations`` and the image counts shorten a dry
run (both runs then get those iterations, before the ``--set`` changes). The demo always runs first; the script
keeps torch's thread count as it starts (``ssd demo`` chooses it from the CPUs free: ``ssd.device``).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from the source tree without installing
sys.path.insert(0, str(ROOT / "bench"))

from demo_ablation import parse_settings, per_class_ap  # noqa: E402


def _run(name: str, out: Path, changes: dict, iterations: int | None, data) -> dict:
    from ssd.demo import run_demo

    result = run_demo(out / name, device="cpu", progress=False, log=lambda m: None, iterations=iterations,
                      changes=changes, data=data)  # fmt: skip
    return {"run": name, "changes": changes, "mAP": round(result.mAP, 4), "ap": result.ap,
            "train_seconds": round(result.train_seconds, 1), "_train_seconds": result.train_seconds, "total_seconds": round(result.total_seconds, 1),
            "report": str(result.report)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for both runs and halving.json")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a training setting of the candidate, e.g. image_size=160 (repeatable)")  # fmt: skip
    parser.add_argument("--max-ratio", type=float, default=0.5,
                        help="the most the candidate's training time may be of the demo's (default 0.5)")  # fmt: skip
    parser.add_argument("--min-map", type=float, help="the least mAP of the candidate (default: ssd.demo.MIN_MAP)")
    parser.add_argument("--iterations", type=int, help="both runs this many iterations, for a dry run")
    parser.add_argument("--train-images", type=int, help="fewer training images, for a dry run")
    parser.add_argument("--test-images", type=int, help="fewer test images, for a dry run")
    args = parser.parse_args(argv)
    changes = parse_settings(args.set, parser)
    if not changes:
        parser.error("give the candidate's settings with --set NAME=VALUE")

    import torch

    from ssd.data.synthetic import DEMO_CONFIG
    from ssd.demo import MIN_MAP, demo_settings
    from ssd.errors import SSDError

    try:
        demo_settings(args.iterations, changes)  # a setting the demo cannot take is refused before any work
    except SSDError as e:
        print(f"demo_halving: {e}", file=sys.stderr)
        return 2
    sizes = {k: v for k, v in (("num_trainval", args.train_images), ("num_test", args.test_images)) if v is not None}
    data = dataclasses.replace(DEMO_CONFIG, **sizes) if sizes else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [_run("demo", out, {}, args.iterations, data), _run("candidate", out, changes, args.iterations, data)]
    ratio = rows[1].pop("_train_seconds") / rows[0].pop("_train_seconds")  # unrounded: a dry run's seconds are small
    min_map = MIN_MAP if args.min_map is None else args.min_map
    record = {
        "command": shlex.join(["python", "bench/demo_halving.py"] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "data_changes": sizes,
        "iterations": args.iterations,
        "train_time_ratio": round(ratio, 3),
        "seconds": round(time.perf_counter() - start, 1),
        "runs": rows,
    }  # fmt: skip
    (out / "halving.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'run':10s} {'mAP':>7s} {'train s':>8s}  per-class AP")
    for row in rows:
        print(f"{row['run']:10s} {row['mAP']:7.4f} {row['train_seconds']:8.1f}  {per_class_ap(row['ap'])}")
    print(f"training time candidate / demo: {ratio:.3f} ({record['device']}; {out / 'halving.json'})")
    failures = [f"the training time ratio {ratio:.3f} is over {args.max_ratio}"] if ratio > args.max_ratio else []
    if rows[1]["mAP"] < min_map:
        failures.append(f"the candidate's mAP {rows[1]['mAP']:.4f} is under {min_map}")
    for failure in failures:
        print(f"demo_halving: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
