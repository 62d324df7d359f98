"""``ssd data``: turn annotations into the dataset indexes that training and evaluation read."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ssd.cli.checks import positive
from ssd.paths import refuse_to_overwrite_inputs
from ssd.errors import SSDError


def _voc_year_root(folder: str, year: str) -> Path:
    """Accept a VOCdevkit folder or the year folder itself."""
    p = Path(folder)
    if (p / f"VOC{year}").is_dir():
        p = p / f"VOC{year}"
    if not (p / "Annotations").is_dir():
        raise SSDError(f"--voc{year} {folder}: no Annotations folder (give VOCdevkit or VOCdevkit/VOC{year})")
    return p


def _parse_splits(specs: list[str] | None, default: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for spec in specs or default:
        name, sep, sets = spec.partition("=")
        if not sep or not name or not sets:
            raise SSDError(f"--split {spec!r}: expected NAME=IMAGESET[+IMAGESET...], e.g. train=trainval")
        out.append((name, sets.split("+")))
    return out


def _classes(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    p = Path(arg)
    if p.is_file():
        names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in arg.split(",") if c.strip()]
    if not names:
        raise SSDError(f"--classes {arg!r}: no class names")
    return names


def _write(indexes, out: Path, reads: tuple[Path, ...] = (), log=print) -> None:
    """Each index to ``out/<name>.json``; none of them may be one of the files read (``reads``, the images)."""
    from ssd.data.index import summary_lines

    writes = [("--out", out / f"{index.name}.json") for index in indexes]
    refuse_to_overwrite_inputs(writes, [*reads, *(Path(r.file) for index in indexes for r in index.images)])
    for index in indexes:
        path = index.save(out / f"{index.name}.json")
        for line in summary_lines(index):
            log(line)
        log(f"  -> {path}")


def _say_verified(args: argparse.Namespace, indexes, seconds: float) -> None:
    if args.verify:
        n = sum(len(index.images) for index in indexes)
        print(f"verified: decoded {n} images whole in {seconds:.1f} s ({1000 * seconds / max(n, 1):.1f} ms an image, "
              "indexing included); files that failed are listed with the other problems")  # fmt: skip


def _cmd_voc(args: argparse.Namespace) -> int:
    from ssd.config import VOC_CLASSES
    from ssd.data.index import build_voc_index, voc_classes_of

    if args.download:
        from ssd.data.download import OFFICIAL_BASE, download_voc

        devkit = download_voc(args.download, args.mirror or OFFICIAL_BASE)
        args.voc2007 = args.voc2007 or str(devkit / "VOC2007")
        args.voc2012 = args.voc2012 or str(devkit / "VOC2012")
    roots = []
    if args.voc2007:
        roots.append(_voc_year_root(args.voc2007, "2007"))
    if args.voc2012:
        roots.append(_voc_year_root(args.voc2012, "2012"))
    for r in args.root or []:
        p = Path(r)
        if not (p / "Annotations").is_dir():
            raise SSDError(f"--root {r}: no Annotations folder (a VOC-layout folder holds Annotations, JPEGImages, ImageSets/Main)")
        roots.append(p)
    if not roots:
        raise SSDError("give at least one of --voc2007, --voc2012, --root or --download")
    splits = _parse_splits(args.split, ["train=trainval", "test=test"])
    classes = _classes(args.classes)
    if classes is None:
        only_voc = not args.root
        classes = list(VOC_CLASSES) if only_voc else list(voc_classes_of(roots, [s for _, sets in splits for s in sets]))
    out = Path(args.out)
    indexes, start = [], time.perf_counter()
    for name, sets in splits:
        sources = [(r, s) for r in roots for s in sets if (r / "ImageSets" / "Main" / f"{s}.txt").is_file()]
        if not sources:
            missing = f"split {name}: no folder has ImageSets/Main/{'.txt or '.join(sets)}.txt"
            if args.split is None and len(splits) > 1:  # a default split the data does not have: say so, go on
                print(f"ssd: note: {missing}; not written", file=sys.stderr)
                continue
            raise SSDError(missing)
        indexes.append(build_voc_index(name, sources, classes, policy=args.on_error, progress=True, verify=args.verify,
                                       max_objects=args.max_objects))  # fmt: skip
    if not indexes:
        raise SSDError("no folder has ImageSets/Main/trainval.txt or test.txt; choose image sets with --split")
    _say_verified(args, indexes, time.perf_counter() - start)
    _write(indexes, out)
    return 0


def _cmd_coco(args: argparse.Namespace) -> int:
    from ssd.data.index import build_coco_index

    refuse_to_overwrite_inputs([("--out", Path(args.out) / f"{args.name}.json")], [Path(args.json)])  # before the work
    start = time.perf_counter()
    index = build_coco_index(args.name, args.json, args.images, _classes(args.classes), policy=args.on_error,
                             progress=True, verify=args.verify, max_objects=args.max_objects)  # fmt: skip
    _say_verified(args, [index], time.perf_counter() - start)
    _write([index], Path(args.out), reads=(Path(args.json),))
    return 0


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from ssd.data.index import build_voc_index
    from ssd.data.synthetic import DEMO_CONFIG, SyntheticConfig, generate_synthetic

    base = DEMO_CONFIG if args.demo else SyntheticConfig()
    changes = {k: getattr(args, k) for k in ("num_trainval", "num_test", "seed") if getattr(args, k) is not None}
    if args.classes is not None:
        changes["classes"] = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    config = dataclasses.replace(base, **changes)
    out = Path(args.out)
    summary = generate_synthetic(out / "VOC", config, progress=True, overwrite=args.overwrite)
    for line in summary.lines():
        print(line)
    root = summary.voc_root
    indexes = [build_voc_index(name, [(root, split)], summary.classes) for name, split in (("train", "trainval"), ("test", "test"))]
    _write(indexes, out)
    return 0


def _add_max_objects(parser) -> None:
    from ssd.data.index import MAX_OBJECTS_PER_IMAGE

    parser.add_argument("--max-objects", type=positive(int), default=MAX_OBJECTS_PER_IMAGE, metavar="N",
                        help="skip (and report) an image with more objects: training's memory grows with one "
                        f"image's objects (default {MAX_OBJECTS_PER_IMAGE})")  # fmt: skip


_VERIFY_HELP = ("decode every image whole, as training reads it, so that truncated or corrupt files are reported "
                "and skipped now (a few ms an image; without it only the header is read)")


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets: VOC, COCO-format JSON, or a synthetic set")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    v = kinds.add_parser(
        "voc",
        help="index Pascal VOC (2007/2012) or any VOC-layout folder",
        description="Parse VOC XML annotations into split indexes. Default splits: train = trainval of every "
        "folder given (07+12), test = test (07). Boxes are stored as continuous pixels "
        "[xmin-1, ymin-1, xmax, ymax] of VOC's 1-based inclusive coordinates.",
    )
    v.add_argument("--voc2007", help="VOCdevkit or VOCdevkit/VOC2007 folder")
    v.add_argument("--voc2012", help="VOCdevkit or VOCdevkit/VOC2012 folder")
    v.add_argument("--root", action="append", help="any VOC-layout folder (custom classes); repeatable")
    v.add_argument("--split", action="append", metavar="NAME=IMAGESET[+IMAGESET]",
                   help="an output split from ImageSets/Main lists, e.g. train=trainval (repeatable; "
                   "default: train=trainval test=test)")  # fmt: skip
    v.add_argument("--classes", help="class names: a comma list or a file with one per line "
                   "(default: the 20 VOC classes, or for --root: classes.txt or the names found)")  # fmt: skip
    v.add_argument("--out", required=True, help="folder for the index files (<split>.json)")
    v.add_argument("--verify", action="store_true", help=_VERIFY_HELP)
    _add_max_objects(v)
    v.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="bad files or objects: skip and report them (default), or stop at the first")  # fmt: skip
    v.add_argument("--download", metavar="DIR",
                   help="first download the official VOC2007 trainval+test and VOC2012 trainval tars "
                   "(about 2.9 GB; resumable, checksummed) into DIR and extract them")  # fmt: skip
    v.add_argument("--mirror", metavar="URL", help="base URL to download from instead of the official server")
    v.set_defaults(func=_cmd_voc)

    c = kinds.add_parser("coco", help="index a COCO-format detection JSON and its image folder")
    c.add_argument("--json", required=True, help="COCO annotations (images, annotations, categories)")
    c.add_argument("--images", required=True, help="the folder the file names are relative to")
    c.add_argument("--name", default="train", help="split name, i.e. the index file's name (default train)")
    c.add_argument("--classes", help="class order (default: categories sorted by id)")
    c.add_argument("--out", required=True, help="folder for the index file")
    c.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    c.add_argument("--verify", action="store_true", help=_VERIFY_HELP)
    _add_max_objects(c)
    c.set_defaults(func=_cmd_coco)

    s = kinds.add_parser("synthetic", help="write a seeded synthetic shapes dataset (VOC layout) and index it")
    s.add_argument("--out", required=True, help="folder: images under OUT/VOC, indexes OUT/train.json, OUT/test.json")
    s.add_argument("--demo", action="store_true", help="the fixed setting `ssd demo` uses")
    s.add_argument("--num-trainval", type=int, help="training images (default 2000)")
    s.add_argument("--num-test", type=int, help="test images (default 200)")
    s.add_argument("--seed", type=int, help="random seed (default 0)")
    from ssd.data.synthetic import DEFAULT_CLASSES, SHAPES

    s.add_argument("--classes", metavar="A,B,...",
                   help=f"comma-separated shapes, in label order (default {','.join(DEFAULT_CLASSES)}; "
                        f"available: {', '.join(SHAPES)})")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset")
    s.set_defaults(func=_cmd_synthetic)
