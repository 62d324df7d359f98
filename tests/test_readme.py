"""The README as a user reads it: every ``ssd`` command in it parses, every Python snippet runs.

Commands are parsed by the real parser (running them all would take hours: the VOC recipe, downloads); the Python
snippets run as they are written, in a fresh interpreter inside a folder holding the files they name (a small
checkpoint, two VOCmini photos, dataset indexes of VOCmini), with only the settings that make a run long replaced
by small ones: each replacement names the exact README text, so an edit of the snippet makes this test fail rather
than run something else.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import VOCMINI, need

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.S | re.M)


def ssd_commands() -> list[list[str]]:
    """The arguments of every ``ssd ...`` command in the README's bash blocks (continuations joined, comments and
    ``&&`` chains split)."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and Path(words[0]).name == "ssd":
                    commands.append(words[1:])
                elif words[:1] == ["torchrun"] and "ssd.cli" in words:
                    commands.append(words[words.index("ssd.cli") + 1 :])
    return commands


def test_every_ssd_command_in_the_readme_parses():
    from ssd.cli import build_parser

    commands = ssd_commands()
    assert len(commands) >= 15 and ["demo", "--out", "ssd-demo"] in commands
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:  # argparse's way of refusing
            pytest.fail(f"README command does not parse: ssd {shlex.join(argv)} (exit {e.code})")


@pytest.fixture(scope="module")
def snippet_dir(tmp_path_factory) -> Path:
    """A folder holding what the snippets name: ssd-demo/run/model.ckpt, street.jpg, dog.png, data/voc/*.json."""
    import torch

    from ssd import VOC_CLASSES, build_model, save_checkpoint
    from ssd.data.index import build_voc_index

    folder = tmp_path_factory.mktemp("readme")
    voc = need(VOCMINI)
    photos = sorted((voc / "JPEGImages").glob("*.jpg"))
    shutil.copy(photos[0], folder / "street.jpg")
    from PIL import Image

    Image.open(photos[1]).save(folder / "dog.png")
    torch.manual_seed(0)
    (folder / "ssd-demo" / "run").mkdir(parents=True)
    save_checkpoint(build_model("small", class_names=["circle", "square"]), folder / "ssd-demo" / "run" / "model.ckpt")
    (folder / "data" / "voc").mkdir(parents=True)
    for name, split in (("train", "trainval"), ("test", "test")):
        index = build_voc_index(name, [(voc, split)], VOC_CLASSES)
        index.images = index.images[:16]  # a few images: the snippet's own code runs, not a long job
        index.save(folder / "data" / "voc" / f"{name}.json")
    return folder


def run_snippet(code: str, folder: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, f"README snippet failed:\n{code}\n--- stderr:\n{out.stderr[-3000:]}"
    return out.stdout


def snippet(starting: str) -> str:
    matches = [block for block in code_blocks("python") if block.startswith(starting)]
    assert len(matches) == 1, f"README: no single python block starting {starting!r}"
    return matches[0]


def with_small_settings(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"README snippet changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    return code


@pytest.mark.slow  # a fresh interpreter
def test_the_detector_snippet(snippet_dir):
    out = run_snippet(snippet('from ssd import Detector\ndetector = Detector.from_checkpoint("ssd-demo/run/model.ckpt")\nfor det'),
                      snippet_dir)  # fmt: skip
    assert all(line.split()[0] in ("street.jpg", "dog.png") for line in out.splitlines())


@pytest.mark.slow  # a fresh interpreter
def test_the_video_snippet(snippet_dir):
    av = pytest.importorskip("av")
    container = av.open(str(snippet_dir / "clip.mp4"), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    for i in range(6):
        pixels = np.full((64, 96, 3), 40 * i, np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    code = snippet('from ssd import Detector\ndetector = Detector.from_checkpoint("ssd-demo/run/model.ckpt")\nfor result')
    lines = run_snippet(code, snippet_dir).splitlines()
    assert [line.split()[:2] for line in lines] == [["0", "0.00s"], ["2", "0.20s"], ["4", "0.40s"]]


@pytest.mark.slow  # a fresh interpreter
def test_the_python_api_snippet(snippet_dir):
    code = snippet("import torch, ssd") + "\nprint(loc_offsets.shape, cls_logits.shape, len(detections))\n"
    assert run_snippet(code, snippet_dir).split() == ["torch.Size([2,", "8732,", "4])", "torch.Size([2,", "8732,",
                                                      "21])", "2"]  # fmt: skip


@pytest.mark.slow
def test_the_training_snippet(snippet_dir):
    code = with_small_settings(
        snippet("import ssd\nfrom ssd.data.index import DatasetIndex"),
        {'preset="ssd300", out_dir="runs/x"': 'preset="small", out_dir="runs/x", iterations=2, batch_size=4, '
                                              'reference_batch=4, milestones=(), warmup=0, progress=False'},
    )  # fmt: skip
    m_ap, ap = run_snippet(code, snippet_dir).splitlines()[-1].split(" ", 1)  # after the training log
    assert 0.0 <= float(m_ap) <= 1.0 and "'aeroplane'" in ap
    assert (snippet_dir / "runs" / "x" / "model.ckpt").is_file()
