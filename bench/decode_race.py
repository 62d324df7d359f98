"""Does decoding JPEGs on the GPU overwrite memory that queued work still reads? (pytorch/vision#9606)

    PYTHONPATH=src python bench/decode_race.py --voc ../shared/data/VOCmini/VOCdevkit/VOC2007 --out race.json

Each round queues tens of milliseconds of matrix products on the current stream, then a sum over each of several
uint8 tensors the size of the images about to be decoded, frees those tensors while the sums are still queued,
and decodes a batch of VOC JPEGs. When the decoder is handed one of the freed blocks and writes it before the
queued sums have read it, a sum comes out wrong. Counted for torchvision's ``decode_jpeg`` called as is and for
``ssd.data.gpu_pipeline.decode_on_device`` (outputs from a stream of their own, see ``_isolated_decode``). CUDA only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def race(decode, datas: list[torch.Tensor], sizes: list[tuple[int, int]], rounds: int, device: torch.device) -> int:
    """Rounds (of ``rounds``) in which a queued sum over a freed tensor came out wrong."""
    corrupted = 0
    work = torch.randn(4096, 4096, device=device)
    for r in range(rounds):
        x = work
        for _ in range(8):  # queued work that keeps the stream busy while the decode runs
            x = (x @ work).tanh_()
        blocks = [torch.full((3, h, w), (r + k) % 251 + 1, dtype=torch.uint8, device=device) for k, (h, w) in enumerate(sizes)]
        expected = [((r + k) % 251 + 1) * b.numel() for k, b in enumerate(blocks)]
        sums = [(b.to(torch.int64) + (x[0, 0] * 0).to(torch.int64)).sum() for b in blocks]  # ordered after the work
        del blocks  # freed while the sums are still queued
        images = decode(datas)
        got = [int(s) for s in sums]
        corrupted += got != expected
        del images
    return corrupted


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, required=True, help="a VOC2007 folder (its first JPEGs are decoded)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from torchvision.io import ImageReadMode, decode_jpeg

    from ssd.data.gpu_pipeline import decode_on_device, read_encoded

    device = torch.device("cuda")
    files = sorted((args.voc / "JPEGImages").glob("*.jpg"))[: args.images]
    read = [read_encoded(str(f)) for f in files]
    datas = [d for d, _, _ in read]
    sizes = [hw for _, _, hw in read]

    def raw(ds):
        return decode_jpeg(ds, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)

    def ours(ds):
        return decode_on_device(ds, [True] * len(ds), sizes, [str(f) for f in files], device)

    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "rounds": args.rounds,
              "images_per_decode": len(datas)}  # fmt: skip
    for name, fn in (("torchvision_decode_jpeg", raw), ("ssd_decode_on_device", ours)):
        race(fn, datas, sizes, 2, device)  # warm-up
        report[f"{name}_corrupted_rounds"] = race(fn, datas, sizes, args.rounds, device)
    print(json.dumps(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 1 if report["ssd_decode_on_device_corrupted_rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
