"""The training sections of bench/compare.py: the step side by side with torchvision's, the step's correctness on
the benchmark's device, and training end to end from JPEG files against the step on tensors in memory.

    train      the step ssd.training.loop.train runs (ssd.training.step.TrainStep: forward, loss, backward, fused SGD),
               eager and, with --train-compile MODE..., compiled (bf16 only), against torchvision's SSD300 step
    train_e2e  ssd.training.loop.train with --device-augment on VOCmini trainval repeated (full-size JPEGs, decoded on the
               device), images/s in its steady state, against the same step on a batch already in memory

Both models have random weights and 21 classes; the flags (cudnn.benchmark, TF32, channels-last) are compare.py's.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ssd.config import VOC_CLASSES, get_preset
from ssd.data.dataset import Batch
from ssd.training.config import TrainConfig
from ssd.training.setup import DistInfo, Runtime, make_train_step
from ssd.loss import MultiBoxLoss, pad_targets
from ssd.model import SSD

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _batch(images: torch.Tensor, boxes, labels) -> Batch:
    device = images.device
    gt_boxes, gt_labels = pad_targets([b.to(device) for b in boxes], [lb.to(device) for lb in labels], device)
    n = images.shape[0]
    return Batch(images, gt_boxes, gt_labels, torch.zeros_like(gt_labels, dtype=torch.bool), torch.arange(n),
                 torch.full((n, 2), 300), ())  # fmt: skip


def _our_step(device, flags, dtype, cfg: TrainConfig, mode: str | None = None):
    """A fresh SSD300 (with BatchNorm if ``cfg.batch_norm``) and the step ssd.training.loop.train would build for it
    (compiled with ``mode`` when given)."""
    model = SSD(get_preset("ssd300", VOC_CLASSES, batch_norm=bool(cfg.batch_norm))).to(device).train()
    if flags["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    cfg = dataclasses.replace(cfg, compile=mode is not None, compile_mode=mode or "default")
    amp = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return make_train_step(model, cfg, cfg.lr, Runtime(device, DistInfo(), amp, flags["channels_last"], 0))


def host_syncs(fn, device) -> str:
    """``"none"`` when ``fn`` runs without a host synchronisation (CUDA's sync debug mode set to error), else
    the error; ``"not checked"`` off CUDA."""
    if device.type != "cuda":
        return "not checked (CUDA only)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as e:
        return f"sync: {str(e).splitlines()[0][:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def bench_train(args, device, flags, timed, rate, random_targets, torchvision_model) -> dict:
    res = {}
    b = args.train_batch
    images = torch.rand(b, 3, 300, 300, device=device)
    boxes, labels = random_targets(b, device)
    x_in = images.contiguous(memory_format=torch.channels_last) if flags["channels_last"] else images
    batch = _batch(x_in, boxes, labels)
    tv = torchvision_model(device).train()
    if flags["channels_last"]:
        tv = tv.to(memory_format=torch.channels_last)
    tv_targets = [{"boxes": bx.to(device) * 300, "labels": lb.to(device)} for bx, lb in zip(boxes, labels)]
    tv_images = list(images)
    opt_tv = torch.optim.SGD(tv.parameters(), lr=1e-5, momentum=0.9)
    cfg = TrainConfig(lr=1e-5, weight_decay=0.0, max_nonfinite=10**9)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        step = _our_step(device, flags, dtype, cfg)

        def step_tv():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                losses = tv(tv_images, tv_targets)
            total = sum(losses.values())
            opt_tv.zero_grad(set_to_none=True)
            total.backward()
            opt_tv.step()

        res[f"ours.{dtype_name}"] = rate(b, timed(lambda: step([batch]), device, args.windows, args.train_iters, args.warmup))
        res[f"ours.{dtype_name}"]["host_syncs"] = host_syncs(lambda: step([batch]), device)
        res[f"torchvision.{dtype_name}"] = rate(b, timed(step_tv, device, args.windows, args.train_iters, args.warmup))
        res[f"ratio.{dtype_name}"] = res[f"ours.{dtype_name}"]["img_s"] / res[f"torchvision.{dtype_name}"]["img_s"]
    res["batch"] = b
    res["checks"] = check_step(device, flags, random_targets, [])
    return res


def bench_train_compiled(args, device, flags, timed, rate, random_targets) -> dict:
    """The step compiled (model and loss), bf16, per torch.compile mode in ``--train-compile``; its loss and gradients
    against the eager step's. Apart from ``train`` so that a slow compilation cannot cost the eager figures."""
    res = {}
    b = args.train_batch
    images = torch.rand(b, 3, 300, 300, device=device)
    x_in = images.contiguous(memory_format=torch.channels_last) if flags["channels_last"] else images
    batch = _batch(x_in, *random_targets(b, device))
    cfg = TrainConfig(lr=1e-5, weight_decay=0.0, max_nonfinite=10**9)
    for mode in args.train_compile:
        start = time.perf_counter()
        step = _our_step(device, flags, torch.bfloat16, cfg, mode)
        step([batch])
        step([batch])  # compiled (and, with CUDA graphs, recorded) here
        key = f"ours_compiled_{mode}.bf16"
        res[key] = rate(b, timed(lambda: step([batch]), device, args.windows, args.train_iters, args.warmup))
        res[key]["compile_s"] = round(time.perf_counter() - start, 1)
        res[key]["host_syncs"] = host_syncs(lambda: step([batch]), device)
        if mode == args.train_compile[0]:  # (each check compiles again, in fp32: once is enough)
            res["checks"] = check_step(device, flags, random_targets, [mode])
    res["batch"] = b
    return res


def check_step(device, flags, random_targets, compile_modes) -> dict:
    """On the benchmark's device, in fp32 with deterministic kernels: the step's loss and gradients against the plain
    computation (forward, MultiBoxLoss, backward), the single-sort ranking of hard negatives against the double
    argsort, and a compiled step's loss and gradients against the eager one's (relative differences)."""
    out = {}
    det, bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        n = 8
        g = torch.Generator().manual_seed(1)
        images = torch.rand(n, 3, 300, 300, generator=g).to(device)
        boxes, labels = random_targets(n, device, seed=1)
        batch = _batch(images, boxes, labels)
        cfg = TrainConfig(lr=0.0, weight_decay=0.0)
        torch.manual_seed(0)
        step = _our_step(device, {"channels_last": False}, None, cfg)
        torch.manual_seed(0)
        plain = SSD(get_preset("ssd300", VOC_CLASSES)).to(device).train()
        got = step([batch])
        loc, logits = plain(images)
        expected = MultiBoxLoss(plain.priors_cxcywh)(loc.float(), logits.float(), batch.boxes_xyxy_rel, batch.labels)
        expected.total.backward()
        grads = list(zip(step.params, plain.parameters()))
        out["loss_equal_to_plain"] = bool(torch.equal(got.loss.total, expected.total.detach()))
        out["grads_equal_to_plain"] = all(torch.equal(p.grad, q.grad) for p, q in grads)
        out["max_grad_diff_to_plain"] = max(float((p.grad - q.grad).abs().max()) for p, q in grads)
        from ssd.loss import hard_negative_mask

        ce = torch.rand(32, 8732, generator=g).to(device)
        pos = (torch.rand(32, 8732, generator=g) < 0.005).to(device)
        loss = ce.masked_fill(pos, float("-inf"))
        rank = loss.argsort(dim=1, descending=True).argsort(dim=1)
        num_neg = torch.minimum((3 * pos.sum(1, keepdim=True)), 8732 - pos.sum(1, keepdim=True))
        out["hard_negatives_equal_to_double_argsort"] = bool(torch.equal(hard_negative_mask(ce, pos, 3.0), (rank < num_neg) & ~pos))
        for mode in compile_modes:
            torch.manual_seed(0)
            compiled = _our_step(device, {"channels_last": False}, None, cfg, mode)
            got_c = compiled([batch])
            out[f"compiled_{mode}_loss_rel_diff"] = float((got_c.loss.total - got.loss.total).abs() / got.loss.total.abs())
            out[f"compiled_{mode}_max_grad_rel_diff"] = max(
                float((p.grad - q.grad).norm() / q.grad.norm().clamp(min=1e-12)) for p, q in zip(compiled.params, step.params)
            )
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = det, bench
    return out


def bench_train_e2e(args, device, flags, timed, rate, voc_index, random_targets) -> dict:
    """``ssd.training.loop.train`` with ``device_augment`` from JPEG files, against its own step on a batch in memory."""
    from ssd.data.index import DatasetIndex
    from ssd.training.loop import train

    if args.e2e_voc:  # e.g. VOC07train300, the time-to-accuracy data: all of its `train` split
        from ssd.data.index import build_voc_index

        reps = build_voc_index("train", [(args.e2e_voc, "train")], VOC_CLASSES).images
        source = f"{args.e2e_voc} train, as stored"
    else:
        index = voc_index("trainval")
        reps = [dataclasses.replace(index.images[i % len(index.images)], id=f"{index.images[i % len(index.images)].id}_{i}")
                for i in range(args.loader_images)]  # fmt: skip
        source = "VOCmini trainval repeated, full-size JPEGs"
    b, gpu = args.e2e_batch, device.type == "cuda"
    amp = "bf16" if gpu else "none"
    with tempfile.TemporaryDirectory() as tmp:
        data = DatasetIndex("e2e", VOC_CLASSES, reps).save(Path(tmp) / "train.json")
        cfg = TrainConfig(
            train_data=str(data), out_dir=str(Path(tmp) / "run"), preset="ssd300", pretrained_base="none",
            batch_size=b, reference_batch=b, iterations=args.e2e_iters, milestones=(), lr=1e-4, weight_decay=0.0,
            max_nonfinite=10**9, workers=args.workers[0], device_augment=not args.e2e_cpu_loader, device=str(device), amp=amp,
            batch_norm=args.e2e_batch_norm, optimizer=args.e2e_optimizer, grad_clip=10.0 if args.e2e_batch_norm else None,
            channels_last=flags["channels_last"], log_every=args.e2e_log_every, checkpoint_every=10**9,
            progress=False, tensorboard=False,
        )  # fmt: skip
        start = time.perf_counter()
        train(cfg, log=lambda m: None)
        wall = time.perf_counter() - start
        import json

        records = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    windows = [r["images_per_s"] for r in records if "images_per_s" in r][2:]  # after start-up and warm-up
    res = {"batch": b, "iterations": args.e2e_iters, "workers": args.workers[0], "wall_s": round(wall, 1),
           "source": source, "decoded_and_augmented_on": "the CPU (loader workers)" if args.e2e_cpu_loader else "the device",
           "batch_norm": args.e2e_batch_norm, "optimizer": args.e2e_optimizer,
           "e2e": {"img_s": statistics.median(windows), "range": [min(windows), max(windows)]} if windows else None}  # fmt: skip
    step = _our_step(device, flags, DTYPES["bf16" if gpu else "fp32"], dataclasses.replace(cfg, lr=1e-4))
    images = torch.rand(b, 3, 300, 300, device=device)
    boxes, labels = random_targets(b, device)
    batch = _batch(images, boxes, labels)
    res["step_in_memory"] = rate(b, timed(lambda: step([batch]), device, args.windows, args.train_iters, args.warmup))
    if res["e2e"]:
        res["e2e_over_step"] = res["e2e"]["img_s"] / res["step_in_memory"]["img_s"]
    return res
