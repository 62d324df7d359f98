"""``ssd detect`` end to end, the Python ``Detector`` on every input type, drawing, and messy inputs.

The model is the ``small`` preset with seeded random weights whose class head is scaled by 0.34, so that
some 30 detections per photo pass the default ``min_score`` of 0.2 (an untouched head scores every
class near 1/21; a larger scale saturates scores at 1.0, where ties would make orders arbitrary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import ssd.cli
from conftest import VOCMINI, need
from ssd.checkpoint import save_checkpoint
from ssd.detector import Detector, ImageDetections, load_image
from ssd.settings import DetectSettings
from ssd.errors import SSDError
from ssd.model import build_model
from ssd.visualize import PALETTE, class_color, draw_detections, style_for_size, text_color

REPO = Path(__file__).resolve().parents[1]
VOC_IDS = ("000050", "000077", "000109")
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on two shared, busy cores a second thread makes each forward pass ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("small")
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight.mul_(0.25)  # scores around the display threshold (0.2) for the small preset's layers
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def detector(checkpoint) -> Detector:
    return Detector.from_checkpoint(checkpoint, device="cpu")


def voc_image(i: int = 0) -> Path:
    return need(VOCMINI / "JPEGImages" / f"{VOC_IDS[i]}.jpg")


def save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[EXIF_ORIENTATION] = orientation
    im.save(path, exif=exif.tobytes(), quality=92)


def sixteen_bit_rgb_png(path: Path, pixels16: np.ndarray) -> None:
    """Pillow cannot write 16-bit RGB PNGs; write one by hand (IHDR bit depth 16, colour type 2)."""
    import struct
    import zlib

    h, w, _ = pixels16.shape
    raw = b"".join(b"\x00" + pixels16[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


BAD = ("broken.jpg", "empty.jpg", "notes.jpg")


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """VOCmini images under awkward names, odd formats, and three files that are not images."""
    root = tmp_path_factory.mktemp("messy") / "in put"
    (root / "sub dir").mkdir(parents=True)
    src = [voc_image(i) for i in range(3)]
    rgb = np.asarray(Image.open(src[0]).convert("RGB"))
    sizes: dict[str, tuple[int, int]] = {}

    def add(rel: str, hw: tuple[int, int]) -> None:
        sizes[rel] = hw

    shutil.copy(src[0], root / "street scene.jpg")
    add("street scene.jpg", rgb.shape[:2])
    shutil.copy(src[1], root / "café ünïcødé.jpg")
    add("café ünïcødé.jpg", np.asarray(Image.open(src[1])).shape[:2])
    shutil.copy(src[2], root / "sub dir" / "street scene.jpg")  # same name in a sub-folder
    add("sub dir/street scene.jpg", np.asarray(Image.open(src[2])).shape[:2])
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "tiny.png")
    add("tiny.png", (1, 1))
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=92)
    add("cmyk.jpg", rgb.shape[:2])
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(root / "grey16.png")
    add("grey16.png", rgb.shape[:2])
    sixteen_bit_rgb_png(root / "rgb16.png", rgb.astype(np.uint16) * 257)
    add("rgb16.png", rgb.shape[:2])
    Image.fromarray(rgb).convert("L").save(root / "grey.png")
    add("grey.png", rgb.shape[:2])
    Image.fromarray(rgb).convert("RGBA").save(root / "rgba.png")
    add("rgba.png", rgb.shape[:2])
    save_with_orientation(rgb, root / "rotated.jpg", 6)  # displayed turned by 90 degrees
    add("rotated.jpg", rgb.shape[1::-1])
    data = src[0].read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image\n")
    (root / "README.txt").write_text("ignored: not an image extension\n")
    (root / ".hidden.jpg").write_bytes(b"ignored: hidden")
    return root, sizes


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    have = tuple(ssd.cli.COMMAND_MODULES)
    monkeypatch.setattr(ssd.cli, "COMMAND_MODULES", have + tuple(m for m in ("detect", "export") if m not in have))
    try:
        code = ssd.cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# --- the command, end to end ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_end_to_end_messy_folder(checkpoint, detector, messy_folder, tmp_path):
    """A real process: annotated copies for the good files, JSON in original pixels, bad files named, exit 1."""
    root, sizes = messy_folder
    out, js = tmp_path / "annotated", tmp_path / "dets.json"
    driver = textwrap.dedent(
        """
        import sys, ssd.cli as c
        if "detect" not in c.COMMAND_MODULES:
            c.COMMAND_MODULES = tuple(c.COMMAND_MODULES) + ("detect",)
        sys.exit(c.main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", driver, "detect", str(checkpoint), str(root), "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for bad, reason in (("broken.jpg", "truncated"), ("empty.jpg", "empty file"), ("notes.jpg", "not an image")):
        line = next(l for l in proc.stderr.splitlines() if f"skipped {root / bad}" in l)
        assert reason in line, line
    assert f"3 of {len(sizes) + 3} input(s) could not be processed" in proc.stderr
    assert f"{len(sizes)} image(s)" in proc.stdout

    # Annotated copies: every good file, same relative name and format, the upright size.
    written = sorted(str(p.relative_to(out)).replace(os.sep, "/") for p in out.rglob("*") if p.is_file())
    assert written == sorted(sizes)
    for rel, (h, w) in sizes.items():
        with Image.open(out / rel) as im:
            assert im.size == (w, h), rel
            assert im.format == ("JPEG" if rel.endswith(".jpg") else "PNG")

    # JSON: valid, every detection in original pixels, equal to the Python detector's output.
    payload = json.loads(js.read_text(encoding="utf-8"))
    assert {Path(f["file"]).name for f in payload["failed"]} == set(BAD)
    by_file = {str(Path(r["file"]).relative_to(root)).replace(os.sep, "/"): r for r in payload["images"]}
    assert sorted(by_file) == sorted(sizes)
    n_boxes = 0
    for rel, rec in by_file.items():
        h, w = sizes[rel]
        assert (rec["height"], rec["width"]) == (h, w)
        assert rec["output"] == str(out / rel)
        for d in rec["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h, (rel, d)
            assert d["class_name"] == detector.class_names[d["label"] - 1]
            assert DetectSettings().min_score < d["score"] <= 1
            n_boxes += 1
    assert n_boxes > 20  # the scaled head gives detections on the real photos
    for rel in ("street scene.jpg", "café ünïcødé.jpg", "rotated.jpg"):
        ref = detector(root / rel)
        rec = by_file[rel]
        assert len(rec["detections"]) == len(ref) > 0
        assert [d["class_name"] for d in rec["detections"]] == list(ref.class_names)
        np.testing.assert_allclose([d["box"] for d in rec["detections"]], ref.boxes, atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in rec["detections"]], ref.scores, atol=1e-6)
    # A box of a landscape photo reaches beyond the portrait height, so the frame really is the original's.
    big = by_file["street scene.jpg"]
    assert max(d["box"][2] for d in big["detections"]) > 192  # beyond the model's 192 x 192 input


def test_cli_name_clashes_and_single_file(checkpoint, tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(voc_image(0), a / "x.jpg")
    shutil.copy(voc_image(1), b / "x.jpg")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["detect", checkpoint, a / "x.jpg", b / "x.jpg", a / "x.jpg", "--out", out, "--json", tmp_path / "d.json"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg", "x_1.jpg"]  # the repeated file once
    recs = json.loads((tmp_path / "d.json").read_text())["images"]
    assert [(Path(r["file"]).parent.name, Path(r["output"]).name) for r in recs] == [("a", "x.jpg"), ("b", "x_1.jpg")]
    # One image: no progress bar.
    code, _, err = run_cli(["detect", checkpoint, a / "x.jpg", "--out", out], capsys, monkeypatch)
    assert code == 0 and "image/s" not in err and "%|" not in err
    # An output folder inside the input folder is not scanned: running twice gives the same files.
    for _ in range(2):
        code, _, err = run_cli(["detect", checkpoint, a, "--out", a / "detections"], capsys, monkeypatch)
        assert code == 0, err
    assert sorted(str(p.relative_to(a)) for p in a.rglob("*.jpg")) == ["detections/x.jpg", "x.jpg"]


def test_cli_progress_bar_and_settings(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSD_PROGRESS_INTERVAL", "0")  # a plain progress line at every image, however quick
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        shutil.copy(voc_image(i), folder / f"{i}.jpg")
    js = tmp_path / "d.json"
    code, _, err = run_cli(
        ["detect", checkpoint, folder, "--out", tmp_path / "o", "--json", js, "--min-score", "0.21",
         "--top-k", "3", "--batch-size", "2", "--suppress", "diningtable,car", "--suppress", "horse"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert err.count("3/3 image (100%)") == 1 and "\r" not in err  # plain lines: stderr is not a terminal here
    payload = json.loads(js.read_text())
    assert payload["settings"] == {"min_score": 0.21, "max_overlap": 0.45, "top_k": 3, "suppress": ["diningtable", "car", "horse"]}
    for rec in payload["images"]:
        assert len(rec["detections"]) <= 3
        assert not {d["class_name"] for d in rec["detections"]} & {"diningtable", "car", "horse"}
        assert all(d["score"] > 0.21 for d in rec["detections"])


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--min-score", "1.5"], "--min-score"),
        (["--min-score", "-0.1"], "--min-score"),
        (["--min-score", "nan"], "--min-score"),
        (["--max-overlap", "2"], "--max-overlap"),
        (["--top-k", "0"], "--top-k"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--batch-size", "two"], "--batch-size"),
        (["--suppress", "unicorn"], "--suppress"),
        (["--device", "tpu"], "--device"),
        (["--json", "."], "--json"),
    ],
)
def test_cli_bad_options_fail_before_work(checkpoint, tmp_path, capsys, monkeypatch, extra, option):
    shutil.copy(voc_image(0), tmp_path / "x.jpg")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["detect", checkpoint, "x.jpg", "--out", "out", *extra], capsys, monkeypatch)
    assert code == 2
    assert option in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) < 300
    assert not Path("out").exists()  # no work done, not even the output folder


@pytest.mark.parametrize("case", ["missing checkpoint", "missing input", "out is a file", "onnx with checkpoint", "no input"])
def test_cli_bad_paths(checkpoint, tmp_path, capsys, monkeypatch, case):
    shutil.copy(voc_image(0), tmp_path / "x.jpg")
    (tmp_path / "file").write_text("")
    argv, expect = {
        "missing checkpoint": (["detect", tmp_path / "nope.pt", tmp_path / "x.jpg"], "CHECKPOINT"),
        "missing input": (["detect", checkpoint, tmp_path / "x.jpg", tmp_path / "gone.jpg"], "INPUT"),
        "out is a file": (["detect", checkpoint, tmp_path / "x.jpg", "--out", tmp_path / "file"], "--out"),
        "onnx with checkpoint": (["detect", "--onnx", tmp_path / "file", checkpoint, tmp_path / "x.jpg"], "leave out the checkpoint"),
        "no input": (["detect", checkpoint], "INPUT"),
    }[case]
    if case != "out is a file":
        argv = [*argv, "--out", tmp_path / "out"]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and expect in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    shutil.copy(voc_image(0), tmp_path / "x.jpg")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["detect", tmp_path / "bad.pt", tmp_path / "x.jpg", "--out", tmp_path / "o"], capsys, monkeypatch)
    assert code == 2 and "bad.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_parser_defaults_match_detector(monkeypatch):
    """The options come from DetectSettings' fields: the same defaults, help texts and one device help."""
    import argparse

    from ssd.cli import detect as detect_cli
    from ssd.device import DEVICE_HELP
    from ssd.settings import help_with_default

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    detect_cli.register(sub)
    args = parser.parse_args(["detect", "c.pt", "x.jpg"])
    assert (args.min_score, args.max_overlap, args.top_k, args.batch_size) == (0.2, 0.45, 200, 8)
    assert (args.device, args.out, args.json, args.suppress, args.onnx) == ("auto", "detections", None, [], None)
    d = DetectSettings()
    assert (args.min_score, args.max_overlap, args.top_k, args.batch_size) == (d.min_score, d.max_overlap, d.top_k, d.batch_size)
    helps = {a.dest: a.help for a in sub.choices["detect"]._actions}
    assert helps["device"] == DEVICE_HELP
    for name in ("min_score", "max_overlap", "top_k", "batch_size"):
        assert helps[name] == help_with_default(name, d) and f"(default {getattr(d, name):g})" in helps[name]
    assert Detector.from_checkpoint.__defaults__ == ("auto", None)  # device, settings: no copied setting defaults


def run_help(command: str) -> str:
    """What `ssd COMMAND --help` prints."""
    from ssd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_detect_settings_are_validated_on_construction():
    d = DetectSettings()
    assert (d.min_score, d.max_overlap, d.top_k, d.suppress, d.batch_size) == (0.2, 0.45, 200, (), 8)
    paper = DetectSettings.for_evaluation()
    assert (paper.min_score, paper.max_overlap, paper.top_k, paper.batch_size) == (0.01, 0.45, 200, 32)
    # only the score threshold differs, and every command's --help says why
    from ssd.settings import defaults_explained

    assert "NMS (IoU 0.45) and at most 200" in defaults_explained() and "above 0.2" in defaults_explained()
    for command in ("detect", "serve", "eval"):
        assert "precision-recall curve" in " ".join(run_help(command).split())
    assert d.replace(top_k=3, suppress="car") == DetectSettings(top_k=3, suppress=("car",))
    assert d.replace(suppress=["a", "b"]).suppress == ("a", "b") and d.replace() is d
    for bad, name in [(dict(min_score=1.5), "min_score"), (dict(min_score=float("inf")), "min_score"),
                      (dict(max_overlap=float("nan")), "max_overlap"), (dict(max_overlap=-0.1), "max_overlap"),
                      (dict(top_k=0), "top_k"), (dict(top_k=2.0), "top_k"), (dict(top_k=True), "top_k"),
                      (dict(batch_size=0), "batch_size"), (dict(suppress=[3]), "suppress"),
                      (dict(min_score="0.2"), "min_score")]:  # fmt: skip
        with pytest.raises(SSDError, match=f"^{name} must be") as e:
            DetectSettings(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="unknown setting 'min_scor'"):
        d.replace(min_scor=0.1)
    with pytest.raises(SSDError, match="^suppress: unknown class 'unicorn'"):
        DetectSettings(suppress=("unicorn",)).check_model(("cat", "dog"))
    with pytest.raises(SSDError, match="^--top-k must be at most the model's 100 priors"):
        DetectSettings(top_k=101).check_model(("cat",), 100, prefix="--")
    assert DetectSettings(top_k=100).check_model(("cat",), 100).top_k == 100


# --- the Python detector -------------------------------------------------------------------------


def same(a: ImageDetections, b: ImageDetections) -> None:
    assert a.image_size == b.image_size
    assert a.class_names == b.class_names
    np.testing.assert_array_equal(a.labels, b.labels)
    # The same pixels reach the network; only the batch it runs in differs, and convolution kernels
    # chosen per batch size round differently in the last float32 bits.
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)


def test_every_input_type_gives_the_same_detections(detector):
    path = voc_image(0)
    ref = detector(path)
    assert isinstance(ref, ImageDetections) and len(ref) > 0
    assert ref.source == str(path)
    h, w = ref.image_size
    assert (h, w) == (375, 500)
    assert ref.boxes.shape == (len(ref), 4) and ref.boxes.dtype == np.float32
    assert ref.labels.dtype == np.int64 and ref.scores.dtype == np.float32
    assert np.all(np.diff(ref.scores) <= 0)
    assert np.all((ref.boxes >= 0) & (ref.boxes <= [w, h, w, h]))
    assert list(ref.class_names) == [detector.class_names[l - 1] for l in ref.labels]

    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    t8 = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    tf = t8.float() / 255
    for item in (str(path), Path(path), pil, arr, arr.astype(np.float32) / 255, t8, tf, load_image(path)):
        same(detector(item), ref)
    batch = detector([path, pil, arr, t8, tf], batch_size=2)
    assert isinstance(batch, list) and len(batch) == 5
    for d in batch:
        same(d, ref)
    assert [d.source for d in batch] == [str(path), "<PIL image>", "<array>", "<tensor>", "<tensor>"]
    stacked = detector(torch.stack([tf, tf]))  # N x 3 x H x W is a batch
    assert isinstance(stacked, list) and len(stacked) == 2
    same(stacked[1], ref)


def test_grey_inputs_and_batches_of_mixed_sizes(detector, tmp_path):
    grey = np.asarray(Image.open(voc_image(1)).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g.png")
    ref = detector(tmp_path / "g.png")
    same(detector(grey), ref)
    same(detector(torch.from_numpy(grey.copy())), ref)
    same(detector(Image.fromarray(grey)), ref)
    # A batch mixing sizes equals one image at a time.
    paths = [voc_image(i) for i in range(3)]
    alone = [detector(p) for p in paths]
    for d, a in zip(detector(paths, batch_size=3), alone):
        same(d, a)


def test_overrides_suppress_and_to_dict(detector):
    path = voc_image(0)
    ref = detector(path)
    assert 0 < len(detector(path, min_score=0.25)) < len(ref) < DetectSettings().top_k
    top = ref.class_names[0]
    sup = detector(path, suppress=[top])
    assert top not in sup.class_names
    keep = np.array([n != top for n in ref.class_names])
    np.testing.assert_array_equal(sup.boxes, ref.boxes[keep])  # NMS is per class: the others are unchanged
    np.testing.assert_array_equal(sup.scores, ref.scores[keep])
    assert len(detector(path, top_k=2)) == 2
    assert len(detector(path, max_overlap=0.1)) < len(ref)
    d = ref.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["source"] == str(path) and (d["height"], d["width"]) == ref.image_size
    assert d["detections"][0]["class_name"] == top and len(d["detections"][0]["box"]) == 4
    assert "ImageDetections" in repr(ref) and "Detector(" in repr(detector)
    with pytest.raises(SSDError, match="unknown class 'unicorn'"):
        detector(path, suppress=["unicorn"])
    with pytest.raises(SSDError, match="min_score"):
        detector(path, min_score=2)
    with pytest.raises(SSDError, match="top_k"):
        detector(path, top_k=0)
    with pytest.raises(TypeError, match="min_scor"):
        detector(path, min_scor=0.1)


def test_detector_on_a_model_and_bad_inputs(checkpoint, tmp_path):
    from ssd.checkpoint import load_model

    from ssd.placement import is_channels_last

    model = load_model(checkpoint).train()
    model.extras.eval()  # a mixed mode survives too
    det = Detector(model, min_score=0.3)
    assert model.training and not model.extras.training  # left as it was
    assert det.device == torch.device("cpu") and not det.owns_model
    ref = Detector.from_checkpoint(checkpoint, device="cpu")(voc_image(0), min_score=0.3)
    same(det(voc_image(0)), ref)
    # The detector runs the model in eval mode, channels-last on the CPU, and puts it back as it was.
    assert model.training and not model.extras.training
    assert not is_channels_last(model) and next(model.parameters()).device == torch.device("cpu")
    same(det(voc_image(0)), ref)
    assert model.training
    for bad, match in [
        (tmp_path / "missing.jpg", "file not found"),
        (tmp_path, "is a folder"),
        (np.zeros((4, 4, 5), np.uint8), "H x W x 3"),
        (np.full((4, 4, 3), 2.0, np.float32), r"in \[0, 1\]"),
        (torch.full((3, 4, 4), 255.0), r"in \[0, 1\]"),
        (torch.zeros(5, 4, 4, dtype=torch.uint8), "3 x H x W"),
        (np.zeros((0, 4, 3), np.uint8), "empty image"),
        (np.zeros((0, 4, 3), np.float32), "empty image"),  # float images: checked before their range
        (torch.rand(3, 0, 10), "empty image"),
        (42, "cannot detect in a int"),
    ]:
        with pytest.raises(SSDError, match=match):
            det(bad)
    assert det([]) == []  # an empty batch is an empty answer
    with pytest.raises(SSDError, match="not found"):
        Detector.from_checkpoint(tmp_path / "nope.pt", device="cpu")
    with pytest.raises(SSDError, match="not a device"):
        Detector.from_checkpoint(checkpoint, device="tpu")
    with pytest.raises(SSDError, match="max_overlap"):
        Detector.from_checkpoint(checkpoint, device="cpu", max_overlap=-1)
    with pytest.raises(SSDError, match="top_k must be at most"):
        det(voc_image(0), top_k=model.config.num_priors + 1)
    owned = Detector.from_checkpoint(checkpoint, "cpu", DetectSettings(min_score=0.3))
    assert owned.owns_model and is_channels_last(owned.model) and not owned.model.training  # placed once, for good
    same(owned(voc_image(0)), ref)


def test_public_steps_are_what_a_call_runs(detector):
    """prepare -> run_batch -> finish, with settings per image (as the service batches requests): each image's
    detections are those of a call with its settings."""
    paths = [voc_image(i) for i in range(3)]
    prepared = [detector.prepare(p, source=f"img{i}") for i, p in enumerate(paths)]
    assert prepared[0].pixels.shape == (3, detector.image_size, detector.image_size)
    assert prepared[0].image_size == (375, 500) and prepared[1].source == "img1"
    settings = [detector.resolve(), detector.resolve(min_score=0.25, top_k=5, suppress=["person"]), detector.resolve()]
    got = detector.finish(detector.run_batch(prepared), prepared, settings)
    assert [g.source for g in got] == ["img0", "img1", "img2"]
    for p, s, g in zip(paths, settings, got):
        same(g, detector(p, min_score=s.min_score, top_k=s.top_k, suppress=s.suppress))
    with pytest.raises(TypeError, match="unknown setting"):
        detector.resolve(batch=3)


# --- images that are not plain RGB JPEGs ---------------------------------------------------------


def test_load_image_formats(messy_folder):
    root, sizes = messy_folder
    rgb = torch.from_numpy(np.asarray(Image.open(voc_image(0)).convert("RGB")).copy()).permute(2, 0, 1)
    for rel, (h, w) in sizes.items():
        img = load_image(root / rel)
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, h, w), rel
    assert torch.equal(load_image(root / "rgb16.png"), rgb)  # 16-bit: v * 257 -> v
    assert torch.equal(load_image(root / "grey16.png"), rgb[:1].expand(3, -1, -1))
    assert torch.equal(load_image(root / "rgba.png"), rgb)
    grey = load_image(root / "grey.png")
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    cmyk = load_image(root / "cmyk.jpg")  # lossy, but the colours must survive (not inverted)
    assert (cmyk.float() - rgb.float()).abs().mean() < 12
    assert load_image(root / "tiny.png").flatten().tolist() == [200, 30, 30]
    for bad, reason in (("broken.jpg", "truncated"), ("empty.jpg", "empty file"), ("notes.jpg", "not an image")):
        with pytest.raises(SSDError, match=reason) as e:
            load_image(root / bad)
        assert str(root / bad) in str(e.value)


def test_load_image_refuses_decompression_bombs(messy_folder, monkeypatch):
    root, _ = messy_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # street scene.jpg has 187,500 pixels
    with pytest.raises(SSDError, match="too large"):
        load_image(root / "street scene.jpg")
    assert load_image(root / "tiny.png").shape == (3, 1, 1)


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_rotation_equals_the_physically_rotated_image(detector, tmp_path, orientation, turn):
    """EXIF orientation 3/6/8 = rotate 180 / 90 clockwise / 90 counter-clockwise to display."""
    pixels = np.asarray(Image.open(voc_image(1)).convert("RGB"))
    path = tmp_path / f"o{orientation}.jpg"
    save_with_orientation(pixels, path, orientation)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the decoded pixels as stored, EXIF not applied
        upright_pil = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(stored, k=turn))
    np.testing.assert_array_equal(upright, upright_pil)  # our reading of the tag agrees with Pillow's
    got, ref = detector(path), detector(upright)
    assert got.image_size == upright.shape[:2]
    assert len(ref) > 0
    same(got, ref)
    # The same through a PNG that carries the tag (torchvision applies EXIF for PNG as well).
    Image.fromarray(stored).save(tmp_path / "o.png", exif=Image.open(path).getexif().tobytes())
    same(detector(tmp_path / "o.png"), ref)


# --- drawing -------------------------------------------------------------------------------------


def test_draw_detections_styles_colours_and_tags(detector):
    assert class_color(1) == PALETTE[0] and class_color(25) == class_color(25)
    assert len({class_color(i) for i in range(1, 92)}) == 91  # distinct for COCO's 91 labels
    assert text_color((255, 255, 0)) == (0, 0, 0) and text_color((0, 0, 128)) == (255, 255, 255)
    small, large = style_for_size(100, 100), style_for_size(1500, 2000)
    assert small[0] == 1 and 9 <= small[1] <= 14
    assert large[0] >= 5 and large[1] >= 40

    photo = Image.open(voc_image(0)).convert("RGB")
    for size in [(100, 75), (2000, 1500)]:
        im = photo.resize(size)
        dets = detector(im)
        assert len(dets) > 0
        drawn = draw_detections(im, dets)
        assert drawn.size == im.size and drawn.mode == "RGB" and drawn is not im
        assert not np.array_equal(np.asarray(im), np.asarray(drawn))
        assert np.array_equal(np.asarray(photo.resize(size)), np.asarray(im))  # input untouched

    # A box at the top-left corner: its tag goes inside the box. A narrow box at the right edge: its
    # (wider) tag goes above it, moved left so that it ends at the image's edge.
    class Dets:
        boxes = np.array([[0.0, 0.0, 60.0, 40.0], [190.0, 80.0, 199.9, 99.9]])
        labels = np.array([3, 1])
        scores = np.array([0.9, 0.5])

    names = ["a long class name", "b", "bird"]
    blank = Image.new("RGB", (200, 100), (255, 255, 255))
    drawn = np.asarray(draw_detections(blank, Dets(), names))
    assert (drawn[1, 1] == class_color(3)).all()  # the tag's fill, inside the box's corner
    above = drawn[50:80, 120:200]  # above the right box, reaching left of it
    assert (above == class_color(1)).all(axis=2).mean() > 0.25
    assert (drawn[50:80, 199] == class_color(1)).all(axis=1).any()
    assert (drawn[80:100, 120:185] == 255).all()  # nothing below the tag but the box
    rgba = draw_detections(blank.convert("RGBA"), Dets(), names)
    assert rgba.mode == "RGBA"
    assert draw_detections(Image.new("I;16", (50, 40)), Dets(), None).mode == "RGB"
    tiny = draw_detections(Image.new("RGB", (1, 1)), Dets(), None)  # nothing fits, nothing breaks
    assert tiny.size == (1, 1)


def test_tags_never_cover_each_other_in_a_crowded_image():
    """Forty boxes piled into a 320 x 240 image: no two tags overlap, each lies inside the image, the best box's
    tag sits above it, and the tags left out are counted in a corner and in ``info["hidden_labels"]``."""
    from ssd.visualize import place_tags

    rng = np.random.default_rng(0)
    xy = rng.uniform(20, 200, size=(40, 2))
    wh = rng.uniform(15, 90, size=(40, 2))

    class Crowd:
        boxes = np.concatenate([xy, np.minimum(xy + wh, [319.0, 239.0])], axis=1)
        labels = rng.integers(1, 21, size=40)
        scores = rng.uniform(0.2, 1.0, size=40)

    blank = Image.new("RGB", (320, 240), (255, 255, 255))
    drawn = draw_detections(blank, Crowd(), [f"class{i}" for i in range(1, 21)])
    hidden = drawn.info["hidden_labels"]
    assert 0 < hidden < 40  # crowded enough to leave some out, not so much that none fit

    order = np.argsort(-Crowd.scores, kind="stable")
    boxes = [tuple(int(v) for v in (math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]) - 1, math.ceil(b[3]) - 1))
             for b in Crowd.boxes[order]]  # fmt: skip
    spots = place_tags(boxes, [(70, 14)] * 40, (320, 240))
    placed = [s for s in spots if s is not None]
    assert 0 < len(placed) < 40
    for k, a in enumerate(placed):
        assert 0 <= a[0] <= a[2] < 320 and 0 <= a[1] <= a[3] < 240
        for b in placed[k + 1 :]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
    best = boxes[0]
    assert spots[0] == (min(best[0], 320 - 70), max(0, best[1] - 14), min(best[0], 320 - 70) + 69, max(0, best[1] - 14) + 13)
    # one box alone keeps its tag; a second box at the same place puts its tag inside its top edge
    two = place_tags([(50, 50, 150, 150), (50, 50, 150, 150)], [(40, 10), (40, 10)], (320, 240))
    assert two == [(50, 40, 89, 49), (50, 50, 89, 59)]
