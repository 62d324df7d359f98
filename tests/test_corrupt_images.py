"""Corrupt images are never decoded silently, and every path refuses one the same way: training's dataset,
``ssd data --verify``, the ``Detector`` (``ssd detect``) and ``ssd serve`` (a 422) all give the reason the one
decoder gives. A PNG with damaged compressed data once crashed the process (SIGSEGV in torchvision's libpng
binding): it is decoded in a child process first, so a regression fails this test instead of killing the suite."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssd
from ssd.cli import main
from ssd.data.dataset import DetectionDataset
from ssd.data.image import load_image
from ssd.data.index import DatasetIndex, ImageRecord
from ssd.data.voc import write_image_set
from ssd.detector import Detector
from ssd.errors import SSDError


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _damaged() -> dict[str, bytes]:
    jpeg, png = _encoded("JPEG"), _encoded("PNG")
    half_j, half_p = len(jpeg) // 2, len(png) // 2
    return {
        "cut.jpg": jpeg[:half_j],
        "cut.png": png[:half_p],
        "zeroed.png": png[:half_p] + bytes(100) + png[half_p + 100 :],  # the file that crashed torchvision's libpng
        "zeroed.jpg": jpeg[:200] + bytes(2000) + jpeg[2200:],
    }


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    out = {}
    for name, data in _damaged().items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def _reason(path: Path) -> str:
    """The decoder's reason for refusing ``path``, without the file name (each path names the file its way)."""
    with pytest.raises(SSDError) as err:
        load_image(path)
    return str(err.value).split(": ", 1)[1]


@pytest.mark.slow  # a fresh interpreter
def test_no_damaged_file_crashes_the_decoder(damaged):
    code = "import sys\nfrom ssd.data.image import load_image\nfor p in sys.argv[1:]:\n    try:\n        load_image(p)\n" \
           "    except Exception as e:\n        print(type(e).__name__)\n"  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code, *map(str, damaged.values())], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, f"the decoder died (exit {out.returncode}): {out.stderr[-500:]}"
    assert out.stdout.split() == ["SSDError"] * len(damaged)


@pytest.mark.parametrize("name", list(_damaged()))
def test_every_path_refuses_a_damaged_image_with_the_same_reason(damaged, name, tmp_path):
    from ssd.serve import HTTPProblem, decode_upload

    path, reason = damaged[name], _reason(damaged[name])
    with pytest.raises(SSDError, match="^" + _escaped(f"{path}: {reason}") + "$"):
        Detector(ssd.build_model("small", 2))(path)
    with pytest.raises(HTTPProblem) as problem:
        decode_upload(path.read_bytes(), name, 10**8)
    assert problem.value.status == 422 and problem.value.message == f"{name}: {reason}"
    good = tmp_path / "good.png"
    Image.new("RGB", (160, 120)).save(good)
    index = DatasetIndex("t", ("x",), [_record("bad", path), _record("good", good)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = DetectionDataset(index, lambda image, target, rng: (image, target))[0]
    assert sample.failed == (str(path),)  # training replaced it with the next readable image, and said why
    assert any(f"{path}: {reason}" in str(w.message) for w in caught)


def test_ssd_data_verify_gives_the_same_reasons(damaged, tmp_path, capsys):
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = []
    for name, path in damaged.items():
        image_id = name.replace(".", "_")
        (root / "JPEGImages" / name).write_bytes(path.read_bytes())
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>160</width><height>120</height></size>"
            "</annotation>"
        )
        ids.append(image_id)
    write_image_set(root, "trainval", ids)
    assert main(["data", "voc", "--root", str(root), "--split", "train=trainval", "--classes", "x",
                 "--out", str(tmp_path / "idx"), "--verify"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for name, path in damaged.items():
        assert f"{root / 'JPEGImages' / name}: {_reason(path)} (skipped image)" in out, out
    assert "train: 0 images" in out


def _record(image_id: str, path: Path) -> ImageRecord:
    return ImageRecord(image_id, str(path), 160, 120, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                       np.zeros(0, bool))  # fmt: skip


def _escaped(text: str) -> str:
    import re

    return re.escape(text)
