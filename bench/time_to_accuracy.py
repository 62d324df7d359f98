"""Time to accuracy: train from random weights for a wall-clock budget, then evaluate (issue: GPU speed, part 2).

    PYTHONPATH=src python bench/time_to_accuracy.py --train-voc DATA/VOC07train300/VOCdevkit/VOC2007 \\
        --test-voc ../shared/data/VOCmini/VOCdevkit/VOC2007 --seconds 400 --out OUT

Trains on the `train` image set of --train-voc (2501 VOC2007 images at 300 px) with the preset and recipe given,
stops after --seconds of training (compilation included), evaluates on the `test` image set of --test-voc
(VOCmini test, 150 images) and writes OUT/time_to_accuracy.json: images/s, iterations, VOC07 mAP, settings,
device and versions. Dry-run on a CPU with tiny settings: --seconds 20 --preset small --batch-size 8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-voc", required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-voc", required=True)
    p.add_argument("--test-split", default="test")
    p.add_argument("--seconds", type=float, default=400)
    p.add_argument("--out", required=True, help="folder for time_to_accuracy.json and the training log")
    p.add_argument("--work", help="folder for the run's checkpoints (default OUT/run)")
    p.add_argument("--preset", default="ssd300")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", default="cosine", help="cosine: from --lr to 0 over the time budget")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="warm-up iterations")
    p.add_argument("--augment", default="ssd")
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", help="torch.compile's mode with --compile (reduce-overhead: CUDA graphs)")
    p.add_argument("--device-augment", action="store_true", help="decode and augment on the GPU (ssd.data.gpu_pipeline)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    import torch

    from ssd.checkpoint import load_model
    from ssd.config import VOC_CLASSES
    from ssd.data.index import build_voc_index
    from ssd.training.config import TrainConfig
    from ssd.training.log import versions
    from ssd.training.loop import train
    from ssd.evaluate import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_index = build_voc_index("train", [(args.train_voc, args.train_split)], VOC_CLASSES)
    test_index = build_voc_index("test", [(args.test_voc, args.test_split)], VOC_CLASSES)
    train_path = train_index.save(out / "train.json")
    cfg = TrainConfig(
        train_data=str(train_path), out_dir=str(Path(args.work) if args.work else out / "run"), overwrite=True,
        preset=args.preset, batch_norm=True, pretrained_base="none", optimizer=args.optimizer, lr=args.lr,
        lr_decay=args.lr_decay, weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=10.0,
        batch_size=args.batch_size, reference_batch=args.batch_size, iterations=10**9, milestones=(),
        augment=args.augment, workers=args.workers, device=args.device, compile=args.compile,
        compile_mode=args.compile_mode, device_augment=args.device_augment,
        max_seconds=args.seconds, log_every=50, checkpoint_every=10**9, progress=False, tensorboard=False,
    )  # fmt: skip
    start = time.perf_counter()
    result = train(cfg, log=lambda m: print(m, file=sys.stderr))
    train_seconds = time.perf_counter() - start
    device = "cuda" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "cpu"
    model = load_model(result.model_path, device=device)
    evaluation = evaluate(model, test_index, batch_size=64, workers=min(args.workers, 8))
    report = {
        "preset": args.preset, "recipe": {k: getattr(args, k) for k in ("batch_size", "optimizer", "lr", "lr_decay", "weight_decay",
                                                                   "warmup", "augment", "compile", "compile_mode", "device_augment")},
        "train_images": len(train_index), "test_images": len(test_index), "budget_s": args.seconds,
        "train_wall_s": train_seconds, "iterations": result.step,
        "train_images_per_s": result.step * args.batch_size / train_seconds,
        "eval_seconds": evaluation.seconds, "eval_images_per_s": evaluation.images_per_second,
        "voc07_mAP": evaluation.voc.mAP, "ap": evaluation.voc.ap, "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    (out / "time_to_accuracy.json").write_text(json.dumps(report, indent=1))
    if result.run_dir.resolve() != (out / "run").resolve():
        import shutil

        for name in ("log.jsonl", "config.json"):
            shutil.copy(result.run_dir / name, out / f"train_{name}")
    print(json.dumps({k: report[k] for k in ("iterations", "train_images_per_s", "voc07_mAP", "eval_images_per_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
