"""``ssd eval``: score a checkpoint on a dataset split (or devkit results files without a model).

::

    ssd eval CHECKPOINT --data test.json                     # an index made by `ssd data`
    ssd eval CHECKPOINT --voc-root VOCdevkit/VOC2007 --split test
    ssd eval CHECKPOINT --coco-json instances_val.json --images val2017/ --coco
    ssd eval --detections results/ --voc-root VOCdevkit/VOC2007 --split test   # no model

Prints a per-class AP table and the mAP; ``--out DIR`` writes ``metrics.json`` and ``pr_curves.png``,
``--save-detections DIR`` the devkit results files, ``--coco-results FILE`` the COCO results JSON.
Every option is checked before any work starts. Exit status: 0, 2 for an error (one line, no traceback),
1 when some images could not be read (the others are evaluated, the outputs written).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ssd.cli.checks import add_setting_options, create_dirs, settings_from_args, writable_dir, writable_file
from ssd.errors import SSDError
from ssd.paths import refuse_to_overwrite_inputs

EXIT_SOME_FAILED = 1
_TEST_SETTINGS = ("min_score", "max_overlap", "top_k")
"""The test-time DetectSettings fields ``ssd eval`` has options for (defaults: DetectSettings.for_evaluation())."""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ssd.device import DEVICE_HELP
    from ssd.settings import DetectSettings, defaults_explained

    paper = DetectSettings.for_evaluation()
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset split: VOC mAP (devkit rules), COCO-style AP, PR curves",
        description="Evaluate a checkpoint on a dataset split, or score devkit results files (--detections) "
        "without a model. VOC AP follows the official devkit (VOCevaldet); see docs/evaluation.md. "
        + defaults_explained(),
    )
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="an ssd checkpoint (not with --detections)")
    src = p.add_argument_group("dataset (one of)")
    src.add_argument("--data", metavar="INDEX.json", help="a dataset index made by `ssd data`")
    src.add_argument("--voc-root", metavar="DIR", help="a VOC year folder (Annotations, JPEGImages, ImageSets/Main)")
    src.add_argument("--split", default="test", help="image set of --voc-root (default: test)")
    src.add_argument("--coco-json", metavar="FILE", help="COCO-format annotations (with --images)")
    src.add_argument("--images", metavar="DIR", help="the image folder of --coco-json")
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="evaluate this exported (or int8) model with onnxruntime instead of a checkpoint")  # fmt: skip
    p.add_argument("--detections", metavar="DIR",
                   help="score devkit results files comp4_det_test_<class>.txt in DIR instead of running a model")  # fmt: skip
    test = p.add_argument_group("test-time settings (the paper's defaults)")
    add_setting_options(test, paper, _TEST_SETTINGS)
    test.add_argument("--method", choices=("voc07", "voc12"), default="voc07",
                      help="VOC AP: voc07 11-point (default, the paper's) or voc12 area")  # fmt: skip
    run = p.add_argument_group("running")
    add_setting_options(run, paper, ("batch_size",))
    run.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    run.add_argument("--decode-on-device", action=argparse.BooleanOptionalAction, default=None,
                     help="decode JPEGs (nvJPEG on CUDA) and resize on the evaluation device, the workers only reading "
                     "the files (default: on for CUDA, where it is faster; off elsewhere)")  # fmt: skip
    run.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    run.add_argument("--amp", choices=("on", "off"), default="off",
                     help="bf16 autocast on CUDA (default off: float32, whose mAP is the reference)")  # fmt: skip
    out = p.add_argument_group("outputs")
    out.add_argument("--out", metavar="DIR", help="write metrics.json and pr_curves.png here")
    out.add_argument("--no-plot", action="store_true", help="with --out: skip pr_curves.png")
    out.add_argument("--save-detections", metavar="DIR", help="write devkit results files here")
    out.add_argument("--coco-results", metavar="FILE", help="write the detections as a COCO results JSON")
    out.add_argument("--coco", action="store_true", help="also compute COCO-style AP (needs pycocotools)")
    p.set_defaults(func=run_eval)
    return p


# ------------------------------------------------------------------------------------------- validation


def _existing_file(path: str, option: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise SSDError(f"{option} {path}: is a folder, not a file")
    if not p.is_file():
        raise SSDError(f"{option} {path}: file not found")
    return p


def _existing_dir(path: str, option: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise SSDError(f"{option} {path}: folder not found")
    return p


def _voc_root(path: str) -> Path:
    p = _existing_dir(path, "--voc-root")
    if not (p / "Annotations").is_dir():
        years = sorted(q for q in p.glob("VOC20*") if (q / "Annotations").is_dir())
        if len(years) == 1:
            return years[0]
        raise SSDError(f"--voc-root {path}: no Annotations folder (give a year folder such as VOCdevkit/VOC2007)")
    return p


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    """Check every option before any work; returns resolved paths and settings."""
    v: dict[str, Any] = {}
    sources = [o for o, val in (("--data", args.data), ("--voc-root", args.voc_root), ("--coco-json", args.coco_json)) if val]
    if len(sources) != 1:
        raise SSDError(
            "give the dataset with exactly one of --data INDEX.json, --voc-root DIR or --coco-json FILE --images DIR"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    if args.images and not args.coco_json:
        raise SSDError("--images goes with --coco-json")
    models = [o for o, val in (("CHECKPOINT", args.checkpoint), ("--onnx", args.onnx), ("--detections", args.detections)) if val]
    if len(models) != 1:
        raise SSDError("give one of CHECKPOINT, --onnx MODEL.onnx or --detections DIR (results files to score)"
                       + (f", not {' and '.join(models)}" if models else ""))  # fmt: skip
    if args.detections is not None:
        v["detections"] = _existing_dir(args.detections, "--detections")
    elif args.onnx is not None:
        v["onnx"] = _existing_file(args.onnx, "--onnx")
    else:
        v["checkpoint"] = _existing_file(args.checkpoint, "CHECKPOINT")
    if args.data:
        v["data"] = _existing_file(args.data, "--data")
    elif args.voc_root:
        v["voc_root"] = _voc_root(args.voc_root)
        split_file = v["voc_root"] / "ImageSets" / "Main" / f"{args.split}.txt"
        if not split_file.is_file():
            raise SSDError(f"--split {args.split}: {split_file} not found")
    else:
        v["coco_json"] = _existing_file(args.coco_json, "--coco-json")
        if not args.images:
            raise SSDError("--coco-json needs --images DIR (the folder of its images)")
        v["images"] = _existing_dir(args.images, "--images")

    from ssd.settings import DetectSettings

    v["settings"] = settings_from_args(args, DetectSettings.for_evaluation(), (*_TEST_SETTINGS, "batch_size"))
    if args.workers < 0:
        raise SSDError(f"--workers {args.workers}: must be 0 or more")
    if "onnx" in v:  # onnxruntime picks its own provider: auto, cpu or cuda[:N], as ssd detect --onnx
        if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
            raise SSDError(f"--device {args.device}: with --onnx use auto, cpu or cuda[:N]")
        ignored = [o for o, used in (("--amp on", args.amp == "on"), ("--workers", args.workers),
                                     ("--decode-on-device", args.decode_on_device)) if used]  # fmt: skip
        if ignored:
            raise SSDError(f"{ignored[0]} applies to a checkpoint; --onnx runs the file with onnxruntime")
        v["device"] = args.device
    elif args.detections is None:
        from ssd.device import resolve_device

        v["device"] = resolve_device(args.device, "--device")

    if args.out:
        v["out"] = writable_dir(args.out, "--out")
        if not args.no_plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError as err:
                raise SSDError(
                    "--out writes pr_curves.png, which needs matplotlib: pip install matplotlib "
                    "(or add --no-plot)"
                ) from err
    if args.save_detections:
        v["save_detections"] = writable_dir(args.save_detections, "--save-detections")
    if args.coco_results:
        v["coco_results"] = writable_file(args.coco_results, "--coco-results")
    if args.coco:
        from ssd.coco import import_pycocotools

        try:
            import_pycocotools()
        except SSDError as err:
            raise SSDError(f"--coco: {err}") from err
    return v


def _create_output_dirs(v: dict[str, Any]) -> None:
    """Once the options, the model and the data have all passed: a refused command leaves nothing behind."""
    create_dirs(
        [(v[key], option) for key, option in (("out", "--out"), ("save_detections", "--save-detections")) if key in v]
        + ([(v["coco_results"].parent, "--coco-results")] if "coco_results" in v else [])
    )


def _refuse_to_overwrite_inputs(v: dict[str, Any], index) -> None:
    """Every file the command writes against every file it reads (the model, the dataset's index, annotations and
    images, the results files it scores)."""
    from ssd.metrics import DEFAULT_RESULTS_PATTERN

    writes = []
    if "out" in v:
        writes += [("--out", v["out"] / "metrics.json"), ("--out", v["out"] / "pr_curves.png")]
    if "save_detections" in v:
        writes += [("--save-detections", v["save_detections"] / DEFAULT_RESULTS_PATTERN.format(cls=name))
                   for name in index.classes]  # fmt: skip
    if "coco_results" in v:
        writes.append(("--coco-results", v["coco_results"]))
    reads = [v[key] for key in ("checkpoint", "onnx", "data", "coco_json") if key in v]
    reads += [Path(record.file) for record in index.images]
    if "detections" in v:
        reads += sorted(v["detections"].glob("*.txt"))
    refuse_to_overwrite_inputs(writes, reads)


# ---------------------------------------------------------------------------------------------- running


def _warn(message: str) -> None:
    print(f"ssd: warning: {message}", file=sys.stderr)


def _voc_classes_without_model(root: Path, split: str) -> tuple[str, ...]:
    from ssd.config import VOC_CLASSES
    from ssd.data.index import voc_classes_of

    names = voc_classes_of([root], [split])
    if not (root / "classes.txt").is_file() and set(names) <= set(VOC_CLASSES):
        return VOC_CLASSES  # the standard label order, also when the split lacks a class
    return names


def _load_index(args: argparse.Namespace, v: dict[str, Any], model_classes):
    from ssd.data.index import DatasetIndex, build_coco_index, build_voc_index

    progress = True  # a bar on a terminal, a plain line every few seconds in a log (ssd.progress)
    if "data" in v:
        index = DatasetIndex.load(v["data"])
    elif "voc_root" in v:
        classes = model_classes if model_classes is not None else _voc_classes_without_model(v["voc_root"], args.split)
        index = build_voc_index(args.split, [(v["voc_root"], args.split)], classes, progress=progress)
    else:
        index = build_coco_index(v["coco_json"].stem, v["coco_json"], v["images"], progress=progress)
    if index.issues:
        _warn(f"{len(index.issues)} problem(s) in the data, left out of the evaluation:")
        for issue in index.issues[:20]:
            print(f"  {issue}", file=sys.stderr)
        if len(index.issues) > 20:
            print(f"  ... and {len(index.issues) - 20} more", file=sys.stderr)
    if len(index.images) == 0:
        raise SSDError(f"the dataset {index.name!r} has no images to evaluate")
    return index


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _print_table(evaluation, coco: dict | None) -> None:
    voc = evaluation.voc
    width = max([len(c) for c in voc.ap] + [5])
    print(f"{'class':<{width}}  {'AP':>6}")
    for name, ap in voc.ap.items():
        print(f"{name:<{width}}  {_fmt(ap):>6}" + ("  (no non-difficult objects)" if ap is None else ""))
    print("-" * (width + 8))
    rate = evaluation.images_per_second
    print(
        f"{'mAP':<{width}}  {_fmt(voc.mAP):>6}  ({voc.method}, {evaluation.num_images} images, "
        f"{evaluation.num_detections} detections, {evaluation.seconds:.1f} s"
        + (f", {rate:.1f} images/s)" if math.isfinite(rate) else ")")
    )
    if coco is not None:
        print("COCO-style: " + "  ".join(f"{k} {_fmt(coco[k], 3)}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))


def _load_model(v: dict[str, Any]):
    """The checkpoint's SSD, or a Detector running the ONNX file (``None`` when scoring results files); the test
    settings checked against it."""
    if "checkpoint" in v:
        from ssd.checkpoint import load_model

        model = load_model(v["checkpoint"], device=v["device"])
        v["settings"].check_model(model.class_names, model.config.num_priors, prefix="--")
        return model
    if "onnx" in v:
        from ssd.detector import Detector

        detector = Detector.from_onnx(v["onnx"], device=v["device"])
        v["settings"] = detector.checked(v["settings"], prefix="--")
        return detector
    return None


def run_eval(args: argparse.Namespace) -> int:
    v = _validate(args)

    from ssd.evaluate import (
        coco_metrics,
        coco_results,
        evaluate,
        evaluate_detector,
        score_detections_dir,
        write_detections_dir,
    )

    model = _load_model(v)
    index = _load_index(args, v, model.class_names if model is not None else None)
    _refuse_to_overwrite_inputs(v, index)
    _create_output_dirs(v)

    if "onnx" in v:
        evaluation = evaluate_detector(model, index, settings=v["settings"], method=args.method, progress=True)
    elif model is not None:
        amp = args.amp == "on"
        evaluation = evaluate(
            model, index, settings=v["settings"], device=v["device"], amp=amp, workers=args.workers,
            method=args.method, progress=True, decode_on_device=args.decode_on_device,
        )  # fmt: skip
    else:
        evaluation = score_detections_dir(v["detections"], index, args.method)

    category_ids = None
    if "coco_json" in v:
        try:
            cats = json.loads(v["coco_json"].read_text()).get("categories", [])
            category_ids = {c["name"]: int(c["id"]) for c in cats}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            category_ids = None  # build_coco_index read it already; fall back to label numbers
    coco = None
    if args.coco:
        coco = coco_metrics(evaluation, index, annotation_file=v.get("coco_json"))

    _print_table(evaluation, coco)
    for message in evaluation.failed:
        _warn(message)

    written = []
    if "save_detections" in v:
        write_detections_dir(evaluation, v["save_detections"])
        written.append(f"{v['save_detections']}/ (devkit results files)")
    if "coco_results" in v:
        results = coco_results(evaluation, index, category_ids=category_ids)
        try:
            v["coco_results"].write_text(json.dumps(results, separators=(",", ":")))
        except OSError as err:
            raise SSDError(f"--coco-results {v['coco_results']}: cannot write ({err.strerror or err})") from err
        written.append(str(v["coco_results"]))
    if "out" in v:
        metrics = evaluation.to_dict()
        metrics["dataset"] = {"name": index.name, "source": str(v.get("data") or v.get("voc_root") or v.get("coco_json"))}
        metrics["checkpoint"] = str(v.get("checkpoint") or v.get("onnx") or "") or None
        if coco is not None:
            metrics["coco"] = coco
        path = v["out"] / "metrics.json"
        try:
            path.write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as err:
            raise SSDError(f"--out {v['out']}: cannot write metrics.json ({err.strerror or err})") from err
        written.append(str(path))
        if not args.no_plot:
            from ssd.plots import plot_pr_curves

            written.append(str(plot_pr_curves(evaluation.voc, v["out"] / "pr_curves.png")))
    for w in written:
        print(f"wrote {w}")
    if evaluation.failed:
        _warn(f"{len(evaluation.failed)} image(s) could not be read; their objects count as missed")
        return EXIT_SOME_FAILED
    return 0
