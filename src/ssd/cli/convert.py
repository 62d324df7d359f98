"""``ssd convert``: bring in the weights people already have (the tutorial's, torchvision's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd.paths import refuse_to_overwrite_inputs


def _cmd_tutorial(args: argparse.Namespace) -> int:
    from ssd.config import VOC_CLASSES
    from ssd.convert import convert_tutorial

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else list(VOC_CLASSES)
    refuse_to_overwrite_inputs([("OUT", Path(args.out))], [Path(args.src)])
    out = convert_tutorial(args.src, args.out, class_names=classes)
    print(f"wrote {out} (preset ssd300, {len(classes)} classes); inspect it with `ssd info {out}`")
    return 0


def _cmd_torchvision(args: argparse.Namespace) -> int:
    from ssd.convert import convert_torchvision

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.weights != "coco":
        refuse_to_overwrite_inputs([("OUT", Path(args.out))], [Path(args.weights)])
    out = convert_torchvision(args.out, weights=args.weights, class_names=classes)
    print(f"wrote {out} (preset ssd300-torchvision); inspect it with `ssd info {out}`")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="import the tutorial's or torchvision's SSD300 weights")
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    t = kinds.add_parser(
        "tutorial",
        help="the tutorial's checkpoint_ssd300.pth.tar (or a state dict saved from its model)",
        description="Read the tutorial's pickled checkpoint without its code and without running anything "
        "the pickle names (a restricted unpickler), and write an ssd checkpoint of preset ssd300.",
    )
    t.add_argument("src", help="the tutorial's checkpoint file")
    t.add_argument("out", help="the ssd checkpoint to write")
    t.add_argument("--classes", help="comma-separated foreground classes (default: the 20 VOC classes)")
    t.set_defaults(func=_cmd_tutorial)
    v = kinds.add_parser(
        "torchvision",
        help="torchvision's ssd300_vgg16 (COCO weights downloaded, or a local state dict)",
        description="Map torchvision's ssd300_vgg16 into the ssd300-torchvision preset; COCO class names "
        "come from the weights' metadata (label ids stay equal to COCO category ids).",
    )
    v.add_argument("out", help="the ssd checkpoint to write")
    v.add_argument("--weights", default="coco", help="coco (download, default) or a path to a state dict")
    v.add_argument("--classes", help="comma-separated foreground classes for a non-COCO state dict")
    v.set_defaults(func=_cmd_torchvision)
