"""Side-by-side speed of ssd's SSD300 and torchvision's ssd300_vgg16, in one process, same flags.

    PYTHONPATH=src python bench/compare.py --out bench-results.json            # CPU: small counts
    PYTHONPATH=src python bench/compare.py --device cuda --out gpu.json        # GPU: the issue's sizes

Both models have random weights and 21 classes. Global flags (cudnn.benchmark, TF32, channels-last, the autocast
dtype, torch.compile) are set once and apply to both. Every figure is the median of several timed windows after
warm-up; the JSON records the device, versions, flags and the counts used. Runs from the source tree with only
torch, torchvision, numpy and pillow.

Sections (``--only`` picks some):
  train    training step (forward + loss + backward + SGD), fp32 and bf16 autocast (bench/train_bench.py)
  train_compiled  our step compiled, per --train-compile mode, bf16 on GPU
  train_e2e  training end to end from JPEG files against the same step on tensors in memory
  forward  network forward, fp32 and bf16; torchvision as backbone + head on the same pre-normalised batch
  post     post-processing at the paper's settings on fixed synthetic head outputs with ~70 candidates per
           class per image; our output is checked identical to an exact slow reference and to torchvision's
  input    JPEG decode + the full training augmentation on VOCmini, one process per core and with N workers
  input_gpu  the same with ssd.data.gpu_pipeline: N workers read the bytes and draw the augmentation, the main
           process decodes (decode_jpeg) and renders on the benchmark's device; also decode+render alone
  eval     end-to-end evaluation of VOCmini test repeated to --eval-images images (decode, forward, NMS, scoring),
           with class heads biased to background so the candidate count is a trained model's, not 8732 x 20
  latency  single-image detection from a file, each library as a user calls it (CPU)
  int8     ssd export --int8's model against our fp32 and torchvision's, latency and batch 8 (bench/int8_cpu.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ssd.config import VOC_CLASSES, get_preset  # noqa: E402
from ssd.model import SSD  # noqa: E402
from ssd.postprocess import postprocess  # noqa: E402

VOCMINI = ROOT.parent / "shared" / "data" / "VOCmini" / "VOCdevkit" / "VOC2007"  # --voc changes it


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, windows: int, iters: int, warmup: int) -> list[float]:
    """Seconds per call, one figure per window."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        out.append((time.perf_counter() - start) / iters)
    return out


def rate(batch: int, seconds: list[float]) -> dict:
    per_s = [batch / s for s in seconds]
    return {"img_s": statistics.median(per_s), "range": [min(per_s), max(per_s)]}


def torchvision_model(device):
    from torchvision.models.detection import ssd300_vgg16

    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(device)


def random_targets(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(n):
        m = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 0.6
        wh = 0.1 + torch.rand(m, 2, generator=g) * 0.3
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=1.0)], 1))
        labels.append(torch.randint(1, 21, (m,), generator=g))
    return boxes, labels


def bench_train(args, device, flags) -> dict:
    import train_bench

    return train_bench.bench_train(args, device, flags, timed, rate, random_targets, torchvision_model)


def bench_train_compiled(args, device, flags) -> dict:
    import train_bench

    return train_bench.bench_train_compiled(args, device, flags, timed, rate, random_targets)


def bench_train_e2e(args, device, flags) -> dict:
    import train_bench

    return train_bench.bench_train_e2e(args, device, flags, timed, rate, _voc_index, random_targets)


def bench_forward(args, device, flags) -> dict:
    res = {}
    b = args.infer_batch
    ours = SSD(get_preset("ssd300", VOC_CLASSES)).to(device).eval()
    tv = torchvision_model(device).eval()
    if flags["channels_last"]:
        ours, tv = ours.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)
    images = torch.rand(b, 3, 300, 300, device=device)
    normalised = (images - ours.mean) / ours.std
    if flags["channels_last"]:
        images, normalised = images.to(memory_format=torch.channels_last), normalised.to(memory_format=torch.channels_last)
    f_ours = torch.compile(ours) if flags["compile"] else ours

    def tv_net(x):
        features = list(tv.backbone(x).values())
        return tv.head(features)

    f_tv = torch.compile(tv_net) if flags["compile"] else tv_net
    for dtype_name in args.dtypes:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            res[f"ours.{dtype_name}"] = rate(b, timed(lambda: f_ours(images), device, args.windows, args.infer_iters, args.warmup))
            res[f"torchvision.{dtype_name}"] = rate(b, timed(lambda: f_tv(normalised), device, args.windows, args.infer_iters, args.warmup))
            if args.profile and device.type == "cuda":
                res[f"profile.ours.{dtype_name}"] = kernel_time_split(lambda: f_ours(images), b)
                res[f"profile.torchvision.{dtype_name}"] = kernel_time_split(lambda: f_tv(normalised), b)
        res[f"ratio.{dtype_name}"] = res[f"ours.{dtype_name}"]["img_s"] / res[f"torchvision.{dtype_name}"]["img_s"]
    res["batch"] = b
    return res


CONV_KERNELS = ("conv", "cudnn", "xmma", "implicit", "gemm", "sm90_", "sm80_", "cutlass", "winograd", "fft")
"""Kernel name parts of cuDNN's / CUTLASS's convolutions; inductor's fused ``triton_*`` kernels (whose names may
mention the convolution they follow) are counted apart."""


def kernel_time_split(fn, batch: int, iters: int = 5) -> dict:
    """GPU time per image of ``fn`` by kernel kind (torch.profiler): convolutions (cuDNN / CUTLASS / GEMM kernels,
    by name) against everything else, and the five costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and getattr(e, "device_time_total", 0) > 0]
    per_image = lambda us: us / 1000 / iters / batch  # noqa: E731  (microseconds in all -> ms per image)
    conv = sum(e.device_time_total for e in kernels
               if not e.key.startswith("triton") and any(k in e.key.lower() for k in CONV_KERNELS))  # fmt: skip
    total = sum(e.device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: -e.device_time_total)[:5]
    return {"gpu_ms_per_image": per_image(total), "conv_ms_per_image": per_image(conv),
            "other_ms_per_image": per_image(total - conv), "conv_share": conv / total if total else None,
            "top": [[e.key[:90], round(per_image(e.device_time_total), 5)] for e in top]}  # fmt: skip


def synthetic_head_outputs(n: int, priors: int, classes: int, device, seed: int = 0):
    """Background logit high; ~70 priors per class per image above a 0.01 score, scores spread."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, priors, classes, generator=g) * 0.5
    logits[..., 0] += 7.0
    # choose ~70 priors per (image, class) to lift above the 0.01 threshold
    lift = torch.rand(n, priors, classes, generator=g) < 70 / priors
    logits += lift * (3.5 + 3.0 * torch.rand(n, priors, classes, generator=g))
    loc = torch.randn(n, priors, 4, generator=g) * 0.5
    return loc.to(device), logits.to(device)


def decoded(loc, logits, priors, clip, size_clamp):
    """Class scores and xyxy boxes, on the inputs' device (the part both implementations share)."""
    from ssd.boxes import cxcywh_to_xyxy, decode

    scores_all = torch.softmax(logits.float(), -1)
    boxes_all = cxcywh_to_xyxy(decode(loc.float(), priors, size_clamp))
    return scores_all, boxes_all.clamp(0, 1) if clip else boxes_all


def reference_postprocess(scores_all, boxes_all, min_score, max_overlap, top_k, cap):
    """Per image, per class, exact greedy NMS in plain loops on the CPU: the slow oracle.

    It takes the decoded scores and boxes, computed on the device under test, so that it checks the selection
    (threshold, cap, NMS, top-k) exactly; exp() on a GPU and on a CPU may differ in the last bit."""
    from torchvision.ops import box_iou

    out = []
    scores_all, boxes_all = scores_all.cpu(), boxes_all.cpu()
    for i in range(scores_all.shape[0]):
        kept = []
        for c in range(1, scores_all.shape[-1]):
            s = scores_all[i, :, c]
            idx = torch.nonzero(s > min_score).flatten()
            idx = idx[torch.argsort(s[idx], descending=True, stable=True)]
            if cap is not None:
                idx = idx[:cap]
            b = boxes_all[i, idx]
            iou = box_iou(b, b)
            suppressed = torch.zeros(len(idx), dtype=torch.bool)
            for j in range(len(idx)):
                if suppressed[j]:
                    continue
                kept.append((float(s[idx[j]]), c, b[j]))
                suppressed |= iou[j].double() > max_overlap  # in double, as torchvision's CPU nms
        kept.sort(key=lambda t: -t[0])
        out.append(kept[:top_k])
    return out


def bench_post(args, device, flags) -> dict:
    from torchvision.ops import box_convert

    res = {}
    n = args.post_batch
    config = get_preset("ssd300-torchvision", VOC_CLASSES)
    ours = SSD(config)
    priors = ours.priors_cxcywh.to(device)
    loc, logits = synthetic_head_outputs(n, priors.shape[0], 21, device)
    dec = config.decode
    run_ours = lambda: postprocess(loc, logits, priors, dec, min_score=0.01, max_overlap=0.45, top_k=200)  # noqa: E731
    tv = torchvision_model(device).eval()
    anchors = box_convert(priors, "cxcywh", "xyxy") * 300
    head = {"bbox_regression": loc, "cls_logits": logits}
    run_tv = lambda: tv.postprocess_detections(head, [anchors] * n, [(300, 300)] * n)  # noqa: E731
    with torch.inference_mode():
        res["ours"] = rate(n, timed(run_ours, device, args.windows, args.post_iters, 1))
        res["torchvision"] = rate(n, timed(run_tv, device, args.windows, args.post_iters, 1))
        mine = run_ours()
        theirs = run_tv()
        check = min(n, args.post_check_images)
        ref = reference_postprocess(*decoded(loc[:check], logits[:check], priors, True, dec.size_clamp), 0.01, 0.45,
                                    200, dec.candidates_per_class)  # fmt: skip
    identical_ref = all(
        len(r) == len(m.scores)
        and torch.equal(torch.tensor([c for _, c, _ in r], dtype=torch.int64), m.labels.cpu())
        and torch.allclose(torch.stack([b for _, _, b in r]) if r else torch.zeros(0, 4), m.boxes.cpu(), atol=0, rtol=0)
        for r, m in zip(ref, mine[:check])
    )
    identical_tv = all(
        torch.equal(m.labels, t["labels"]) and torch.allclose(m.boxes * 300, t["boxes"], atol=1e-3)
        for m, t in zip(mine, theirs)
    )
    res["ratio"] = res["ours"]["img_s"] / res["torchvision"]["img_s"]
    res["candidates_per_class_per_image"] = float(
        (torch.softmax(logits.float(), -1)[..., 1:] > 0.01).sum(1).float().mean()
    )
    res["detections_per_image"] = sum(len(m.scores) for m in mine) / n
    res["identical_to_exact_reference"] = identical_ref
    res["reference_images_checked"] = check
    res["identical_to_torchvision"] = identical_tv
    res["nms_method"] = "loop (one torchvision nms per image and class)" if device.type == "cpu" else "matrix (all groups at once)"
    res["batch"] = n
    return res


def _voc_index(split: str):
    from ssd.data.index import build_voc_index

    return build_voc_index(split, [(VOCMINI, split)], VOC_CLASSES)


def bench_input(args, device, flags) -> dict:
    from ssd.data.dataset import DetectionDataset, TrainBatchSampler, collate
    from ssd.data.transforms import TrainTransform

    index = _voc_index("trainval")
    dataset = DetectionDataset(index, TrainTransform(300, get_preset("ssd300").mean), seed=0)
    res = {"images": len(index), "source": "VOCmini trainval, full-size JPEGs"}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = min(args.input_images, len(dataset))
        for k in range(min(10, n)):
            dataset[(99, k)]
        times = []
        for w in range(args.windows):
            start = time.perf_counter()
            for k in range(n):
                dataset[(w, k)]
            times.append((time.perf_counter() - start) / n)
        res["per_core"] = rate(1, times)
    finally:
        torch.set_num_threads(torch_threads)
    # The loaders read VOCmini trainval repeated to --loader-images images, so that every worker runs many
    # batches and the figure is the steady state, not the start-up of the workers.
    import dataclasses

    from ssd.data.index import DatasetIndex

    reps = [dataclasses.replace(index.images[i % len(index.images)], id=f"{index.images[i % len(index.images)].id}_{i}")
            for i in range(args.loader_images)]  # fmt: skip
    dataset = DetectionDataset(DatasetIndex("trainval-repeated", index.classes, reps),
                               TrainTransform(300, get_preset("ssd300").mean), seed=0)  # fmt: skip
    res["loader_images"] = len(dataset)
    for workers in args.workers:
        sampler = TrainBatchSampler(len(dataset), 32, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                             persistent_workers=workers > 0, prefetch_factor=4 if workers else None)  # fmt: skip
        it = iter(loader)
        next(it)
        start, count = time.perf_counter(), 0
        for batch in it:
            count += batch.images.shape[0]
        res[f"workers_{workers}"] = {"img_s": count / (time.perf_counter() - start)}
        del loader
    return res


def bench_input_gpu(args, device, flags) -> dict:
    """The GPU input pipeline end to end, over the repeated trainval index of ``bench_input``'s loaders."""
    import dataclasses

    from ssd.data.dataset import TrainBatchSampler
    from ssd.data.gpu_pipeline import EncodedDetectionDataset, collate_encoded, render_batch
    from ssd.data.index import DatasetIndex
    from ssd.data.transforms import TrainTransform

    index = _voc_index("trainval")
    reps = [dataclasses.replace(index.images[i % len(index.images)], id=f"{index.images[i % len(index.images)].id}_{i}")
            for i in range(args.loader_images)]  # fmt: skip
    transform = TrainTransform(300, get_preset("ssd300").mean)
    dataset = EncodedDetectionDataset(DatasetIndex("trainval-repeated", index.classes, reps), transform, seed=0)
    batch_size = 32
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
           "decoder": f"torchvision.io.decode_jpeg(device={str(device)!r})", "loader_images": len(dataset),
           "batch": batch_size, "source": "VOCmini trainval, full-size JPEGs, repeated"}  # fmt: skip
    for workers in args.workers:
        sampler = TrainBatchSampler(len(dataset), batch_size, seed=0)
        extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_encoded,
                                             num_workers=workers, pin_memory=device.type == "cuda", **extra)  # fmt: skip
        it = iter(loader)
        kept = [next(it)]
        render_batch(kept[0], transform, device)  # warm-up: workers started, decoder and kernels initialised
        sync(device)
        start, count = time.perf_counter(), 0
        for encoded in it:
            count += render_batch(encoded, transform, device).images.shape[0]
            if len(kept) < 4:
                kept.append(encoded)
        sync(device)
        res[f"workers_{workers}"] = {"img_s": count / (time.perf_counter() - start)}
        del it, loader
    # The main process's share alone (decode + render of batches already read): the ceiling the workers feed.
    cycle = iter(range(1 << 30))
    seconds = timed(lambda: render_batch(kept[next(cycle) % len(kept)], transform, device), device, args.windows,
                    len(kept), 1)  # fmt: skip
    res["decode_render_only"] = rate(batch_size, seconds)
    return res


def _like_a_trained_model(model, images: torch.Tensor, candidates: float) -> float:
    """Random weights score every prior near 1/C, so every prior passes the 0.01 threshold for every class
    (8732 x 20 candidates per image), which no trained model does. Raise the class heads' background bias until
    ``images`` (real test images, in [0, 1]) give ``candidates`` class scores above 0.01 per image on average, the
    load of a trained SSD300 at the paper's settings (the post section's ~70 per class); returns the bias added."""
    with torch.inference_mode():
        logits = model(images).cls_logits.float()

    def count(bias: float) -> float:
        shifted = logits.clone()
        shifted[..., 0] += bias
        return float((torch.softmax(shifted, -1)[..., 1:] > 0.01).sum()) / images.shape[0]

    lo, hi = 0.0, 30.0
    for _ in range(30):  # the count falls as the background bias rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) > candidates else (lo, mid)
    with torch.no_grad():
        for head in model.cls_heads:
            head.bias.view(-1, model.num_classes)[:, 0] += hi
    return hi


def bench_eval(args, device, flags) -> dict:
    from ssd.data.index import DatasetIndex
    from ssd.evaluate import evaluate

    base = _voc_index("test")
    records = [base.images[i % len(base.images)] for i in range(args.eval_images)]
    import dataclasses

    records = [dataclasses.replace(r, id=f"{r.id}_{i}") for i, r in enumerate(records)]
    index = DatasetIndex("test-repeated", base.classes, records)
    model = SSD(get_preset("ssd300", VOC_CLASSES)).eval().to(device)
    if flags["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    from ssd.data.dataset import read_image
    from ssd.data.transforms import EvalTransform

    probe = torch.stack([EvalTransform(300).resize(read_image(r.file)) for r in base.images[:16]]).to(device) / 255
    res = {"images": len(index), "workers": args.eval_workers, "candidates_per_image": args.eval_candidates,
           "background_bias_added": _like_a_trained_model(model, probe, args.eval_candidates)}  # fmt: skip
    for decode in args.eval_decode:
        sync(device)
        start = time.perf_counter()
        evaluation = evaluate(model, index, batch_size=args.infer_batch, device=device, workers=args.eval_workers,
                              amp=device.type == "cuda", decode_on_device=decode == "device")  # fmt: skip
        seconds = time.perf_counter() - start
        res[f"decode_{decode}"] = {"seconds": seconds, "img_s": len(index) / seconds, "mAP": evaluation.voc.mAP,
                                   "detections_per_image": len(evaluation.det_scores) / len(index)}  # fmt: skip
    return res


def bench_latency(args, device, flags) -> dict:
    from torchvision.io import decode_image

    from ssd.detector import Detector

    path = sorted((VOCMINI / "JPEGImages").glob("*.jpg"))[0]
    ours = Detector(SSD(get_preset("ssd300", VOC_CLASSES)).eval(), device="cpu", owns_model=True)
    tv = torchvision_model(torch.device("cpu")).eval()

    def run_tv():
        img = decode_image(str(path)).float() / 255
        with torch.inference_mode():
            tv([img])

    res = {"image": path.name}
    res["ours_s"] = statistics.median(timed(lambda: ours(str(path)), torch.device("cpu"), args.windows, args.latency_iters, 1))
    res["torchvision_s"] = statistics.median(timed(run_tv, torch.device("cpu"), args.windows, args.latency_iters, 1))
    res["ratio"] = res["ours_s"] / res["torchvision_s"]
    # The forward alone under identical flags: what is left is pre- and post-processing.
    x = torch.rand(1, 3, 300, 300)
    with torch.inference_mode():
        res["ours_forward_s"] = statistics.median(timed(lambda: ours.model(x), torch.device("cpu"), args.windows, args.latency_iters, 1))
        norm = (x - ours.model.mean) / ours.model.std
        res["torchvision_forward_s"] = statistics.median(
            timed(lambda: tv.head(list(tv.backbone(norm).values())), torch.device("cpu"), args.windows, args.latency_iters, 1)
        )
    res["ours_pre_post_s"] = res["ours_s"] - res["ours_forward_s"]
    res["torchvision_pre_post_s"] = res["torchvision_s"] - res["torchvision_forward_s"]
    res["pre_post_ratio"] = res["ours_pre_post_s"] / res["torchvision_pre_post_s"]
    return res


def bench_int8(args, device, flags) -> dict:
    import int8_cpu

    if device.type != "cpu":
        return {"skipped": "int8 inference is a CPU path: run this section with --device cpu"}
    return int8_cpu.run(args.windows, args.latency_iters, voc=VOCMINI)


SECTIONS = {"train": bench_train, "train_compiled": bench_train_compiled, "train_e2e": bench_train_e2e, "forward": bench_forward, "post": bench_post, "input": bench_input,
            "input_gpu": bench_input_gpu, "eval": bench_eval, "latency": bench_latency, "int8": bench_int8}  # fmt: skip


COUNTS = {"train_batch": (32, 4), "train_iters": (10, 1), "infer_batch": (64, 8), "infer_iters": (20, 1),
          "post_batch": (64, 64), "post_iters": (5, 1), "input_images": (300, 100), "loader_images": (6400, 400),
          "eval_images": (4952, 150), "e2e_batch": (64, 4), "e2e_iters": (160, 6), "e2e_log_every": (10, 1),
          "latency_iters": (10, 3)}  # fmt: skip
"""(on a GPU, on the CPU) of every count option."""


def main(argv=None) -> int:
    global VOCMINI
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default all)")
    p.add_argument("--out", help="write the JSON here")
    p.add_argument("--dtypes", nargs="*", default=None, help="fp32 and/or bf16 (default: both on GPU, fp32 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--profile", action="store_true", help="forward: GPU time by kernel kind (convolutions, the rest)")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None)
    for name, (gpu, cpu) in COUNTS.items():
        if not name.startswith("e2e_"):  # those have their own help below
            p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {gpu} on GPU, {cpu} on CPU")
    p.add_argument("--post-check-images", type=int, default=4, help="images checked against the slow reference")
    p.add_argument("--workers", type=int, nargs="*", default=None, help="loader workers to try (default: 2 on CPU, 16 on GPU)")
    p.add_argument("--eval-workers", type=int, default=None)
    p.add_argument("--eval-candidates", type=float, default=1400,
                   help="eval: class scores above 0.01 per image the model is biased to give (default 1400, a trained "
                   "SSD300's load, as the post section's)")
    p.add_argument("--eval-decode", nargs="*", default=["cpu"], choices=["cpu", "device"],
                   help="eval: decode in the loader workers (cpu) and/or on the device (default cpu)")
    p.add_argument("--train-compile", nargs="*", default=["default"], metavar="MODE",
                   help="train_compiled: torch.compile modes of the step, bf16 on GPU (default: default)")
    p.add_argument("--e2e-batch", type=int, default=None, help="train_e2e: batch size (default 64 on GPU, 4 on CPU)")
    p.add_argument("--e2e-iters", type=int, default=None, help="train_e2e: iterations (default 160 on GPU, 6 on CPU)")
    p.add_argument("--e2e-log-every", type=int, default=None, help="train_e2e: iterations per timed window")
    p.add_argument("--e2e-voc", type=Path, help="train_e2e: train on this VOC2007 folder's train split instead")
    p.add_argument("--e2e-batch-norm", action="store_true", help="train_e2e: SSD300 with BatchNorm (and clipping at 10)")
    p.add_argument("--e2e-optimizer", default="sgd", choices=["sgd", "adamw"], help="train_e2e: the optimiser")
    p.add_argument("--e2e-cpu-loader", action="store_true", help="train_e2e: decode and augment in the loader workers")
    p.add_argument("--voc", type=Path, default=None, help=f"VOCmini's VOC2007 folder (default {VOCMINI})")
    args = p.parse_args(argv)
    if args.voc is not None:
        VOCMINI = args.voc
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    gpu = device.type == "cuda"
    defaults = COUNTS
    for k, (g, c) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, g if gpu else c)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.dtypes = args.dtypes or (["fp32", "bf16"] if gpu else ["fp32"])
    args.workers = args.workers or ([16] if gpu else [2])
    args.eval_workers = args.eval_workers if args.eval_workers is not None else (12 if gpu else 0)
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    flags = {"channels_last": args.channels_last, "compile": args.compile, "cudnn_benchmark": gpu, "tf32": gpu,
             "dtypes": args.dtypes}  # fmt: skip
    import torchvision

    report = {
        "device": torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "flags": flags,
        "counts": {k: getattr(args, k) for k in defaults} | {"windows": args.windows, "warmup": args.warmup},
        "note": "CPU runs use small counts; figures are medians of the timed windows",
    }  # fmt: skip
    failed = []
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        try:
            report[name] = SECTIONS[name](args, device, flags)
        except Exception as e:  # one broken section must not cost the others' figures
            import traceback

            traceback.print_exc()
            report[name] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(name)
        report[name]["wall_s"] = round(time.perf_counter() - start, 1)
        if args.out:  # after every section, so a run stopped by a time limit keeps what it measured
            Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    from compare_table import table

    print(table(report, SECTIONS))
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
