"""Is the demo half as costly as before at equal quality (issue 22)? The demo of before and the demo now, full runs.

Both runs are complete ``ssd demo`` runs (:func:`ssd.demo.run_demo`: the same synthetic data, seed and machine),
one after the other in one process, so their training times compare on the same machine in the same session:

- ``before``: the demo as issue 22 found it (:data:`BEFORE`: the ``small`` preset of then, VGG16's block depths
  and widths 8, 16, 32, 128, 128 at 192 px, 1200 iterations of batch 16 with the decay at 960), rebuilt here by
  giving the ``small`` preset its earlier layers for the length of that run;
- ``demo``: the demo as it is (:data:`ssd.demo.DEMO_TRAINING`, today's ``small`` preset), with the ``--set``
  changes (TrainConfig fields), if any, to try a further one.

Usage (from the repository root; ``PYTHONPATH=src`` when the package is not installed)::

    python bench/demo_halving.py --out runs/halving
    python bench/demo_halving.py --out runs/halving --set amp=bf16          # on a CPU with AVX-512 BF16 or AMX

It writes ``<out>/before/`` and ``<out>/demo/`` (each a demo folder with its report) and ``<out>/halving.json``
(mAP, per-class AP, training and total seconds of each, the ratio of training times, machine and versions),
prints a table, and exits 1 unless the demo's training took at most ``--max-ratio`` (0.5) of the earlier one's and
its mAP is at least ``--min-map`` (the demo's ``MIN_MAP``). ``--iterations`` and the image counts shorten a dry
run (both runs then get those iterations, before the ``--set`` changes). The earlier demo runs first; the script
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
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from the source tree without installing
sys.path.insert(0, str(ROOT / "bench"))

from demo_ablation import parse_settings, per_class_ap  # noqa: E402

BEFORE = {
    "small_layers": {"vgg_widths": (8, 16, 32, 128, 128), "vgg_depths": (2, 2, 3, 3, 3), "conv1_stride": 1},
    "training": {"iterations": 1200, "milestones": (960,)},
}
"""The demo that issue 22 measured (2026-12-07): the ``small`` preset's layers and the training length of then (its
other training settings are today's :data:`ssd.demo.DEMO_TRAINING`)."""


@contextmanager
def small_preset_of_before():
    """``ssd.config.PRESETS["small"]`` builds the earlier layers (:data:`BEFORE`) inside the block, today's after."""
    from ssd import config

    today = config.PRESETS["small"]
    config.PRESETS["small"] = lambda names: today(names).replace(**BEFORE["small_layers"])
    try:
        yield
    finally:
        config.PRESETS["small"] = today


def _run(name: str, out: Path, changes: dict, iterations: int | None, data) -> dict:
    from ssd.demo import run_demo

    with small_preset_of_before() if name == "before" else nullcontext():
        result = run_demo(out / name, device="cpu", progress=False, log=lambda m: None, iterations=iterations,
                          changes=changes, data=data)  # fmt: skip
    trained = json.loads((out / name / "run" / "config.json").read_text())  # what the run resolved
    layers = {k: trained["model_config"][k] for k in BEFORE["small_layers"]}
    schedule = {k: trained["train_config"][k] for k in ("iterations", "milestones")}
    return {"run": name, "changes": changes, "small_layers": layers, "schedule": schedule, "mAP": round(result.mAP, 4), "ap": result.ap,
            "train_seconds": round(result.train_seconds, 1), "_train_seconds": result.train_seconds, "total_seconds": round(result.total_seconds, 1),
            "report": str(result.report)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for both runs and halving.json")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a further change of the demo's training, e.g. amp=bf16 (repeatable)")  # fmt: skip
    parser.add_argument("--max-ratio", type=float, default=0.5,
                        help="the most the demo's training time may be of the earlier one's (default 0.5)")  # fmt: skip
    parser.add_argument("--min-map", type=float, help="the least mAP of the demo (default: ssd.demo.MIN_MAP)")
    parser.add_argument("--iterations", type=int, help="both runs this many iterations, for a dry run")
    parser.add_argument("--train-images", type=int, help="fewer training images, for a dry run")
    parser.add_argument("--test-images", type=int, help="fewer test images, for a dry run")
    args = parser.parse_args(argv)
    changes = parse_settings(args.set, parser)

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
    before = {} if args.iterations else dict(BEFORE["training"])  # a dry run: both runs its --iterations
    rows = [_run("before", out, before, args.iterations, data), _run("demo", out, changes, args.iterations, data)]
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
    print(f"training time demo / before: {ratio:.3f} ({record['device']}; {out / 'halving.json'})")
    failures = [f"the training time ratio {ratio:.3f} is over {args.max_ratio}"] if ratio > args.max_ratio else []
    if rows[1]["mAP"] < min_map:
        failures.append(f"the demo's mAP {rows[1]['mAP']:.4f} is under {min_map}")
    for failure in failures:
        print(f"demo_halving: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
