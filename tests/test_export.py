"""ONNX export: the graph (network + softmax + decoding, ssd.postprocess.DecodedSSD) against PyTorch, the NMS
post-step (ssd.postprocess.postprocess_decoded), and ``ssd detect --onnx``. Tests needing
onnx/onnxscript/onnxruntime skip cleanly without them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ssd
import ssd.cli
from conftest import VOCMINI, need
from ssd.checkpoint import save_checkpoint
from ssd.detector import Detector
from ssd.errors import SSDError
from ssd.model import build_model
from ssd.postprocess import DecodedSSD, postprocess, postprocess_decoded

VOC_IDS = ("000050", "000077", "000109")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on two shared, busy cores a second thread makes each forward pass ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(preset: str = "small") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(preset)
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight.mul_(0.34)  # a random model whose scores reach the display threshold (0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(small_model(), tmp_path_factory.mktemp("ckpt") / "small.pt")


def run_cli(argv, capsys, monkeypatch):
    have = tuple(ssd.cli.COMMAND_MODULES)
    monkeypatch.setattr(ssd.cli, "COMMAND_MODULES", have + tuple(m for m in ("detect", "export") if m not in have))
    try:
        code = ssd.cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory) -> Path:
    """``ssd export`` of the small preset with a dynamic batch (the CLI's default)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx") / "small model.onnx"
    mp = pytest.MonkeyPatch()
    have = tuple(ssd.cli.COMMAND_MODULES)
    mp.setattr(ssd.cli, "COMMAND_MODULES", have + tuple(m for m in ("detect", "export") if m not in have))
    try:
        code = ssd.cli.main(["export", str(checkpoint), str(out)])
    finally:
        mp.undo()
    assert code == 0 and out.is_file()
    return out


# --- the post-step (no onnx needed) --------------------------------------------------------------


@pytest.mark.parametrize("preset", ["small", "ssd300-torchvision-like"])
def test_postprocess_decoded_equals_postprocess(preset):
    """Decoding in the graph + the post-step == ssd.postprocess on the raw outputs, exactly."""
    model = small_model()
    if preset != "small":  # the torchvision decoding rules: size clamp, clipping, a candidate cap
        from ssd.config import DecodeConfig
        from ssd.model import SSD

        cfg = model.config.replace(decode=DecodeConfig(size_clamp=4.135, clip_boxes=True, candidates_per_class=50))
        state = model.state_dict()
        model = SSD(cfg).eval()
        model.load_state_dict(state)
    x = torch.rand(3, 3, 192, 192, generator=torch.Generator().manual_seed(3))
    sizes = [(375, 500), (500, 333), (100, 100)]
    with torch.no_grad():
        loc, logits = model(x)
        boxes, scores = DecodedSSD(model)(x)
    for kw in (dict(min_score=0.2, max_overlap=0.5, top_k=200), dict(min_score=0.05, max_overlap=0.3, top_k=7)):
        ref = postprocess(loc, logits, model.priors_cxcywh, model.config.decode, image_sizes=sizes, **kw)
        got = postprocess_decoded(
            boxes, scores, candidates_per_class=model.config.decode.candidates_per_class, image_sizes=sizes, **kw
        )
        assert sum(len(r.labels) for r in ref) > 0
        for r, g in zip(ref, got):
            assert torch.equal(r.labels, g.labels)
            assert torch.equal(r.boxes, g.boxes)
            assert torch.equal(r.scores, g.scores)
        # Suppressing a class drops it before NMS and top-k; the other classes stay as they were.
        label = int(ref[0].labels[0])
        sup = postprocess_decoded(
            boxes, scores, candidates_per_class=model.config.decode.candidates_per_class, image_sizes=sizes,
            suppress_labels=[label], **{**kw, "top_k": 10_000},
        )  # fmt: skip
        full = postprocess_decoded(
            boxes, scores, candidates_per_class=model.config.decode.candidates_per_class, image_sizes=sizes,
            **{**kw, "top_k": 10_000},
        )  # fmt: skip
        for s, f in zip(sup, full):
            keep = f.labels != label
            assert torch.equal(s.labels, f.labels[keep]) and torch.equal(s.boxes, f.boxes[keep])


def test_missing_packages_are_named(monkeypatch, tmp_path):
    from ssd import export

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    with pytest.raises(SSDError, match="pip install onnx onnxscript"):
        export.export_onnx(small_model(), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SSDError, match="pip install onnxruntime"):
        export.OnnxModel(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "extra, option", [(["--opset", "13"], "--opset"), (["--batch", "0"], "--batch"), (["--batch", "many"], "--batch")]
)
def test_export_bad_options(checkpoint, tmp_path, capsys, monkeypatch, extra, option):
    code, _, err = run_cli(["export", checkpoint, tmp_path / "m.onnx", *extra], capsys, monkeypatch)
    assert code == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_bad_paths(checkpoint, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["export", tmp_path / "nope.pt", tmp_path / "m.onnx"], capsys, monkeypatch)
    assert code == 2 and "CHECKPOINT" in err
    code, _, err = run_cli(["export", checkpoint, tmp_path / "m.txt"], capsys, monkeypatch)
    assert code == 2 and ".onnx" in err


# --- the ONNX file -------------------------------------------------------------------------------


def test_onnx_metadata_and_dynamic_batch(onnx_file):
    import onnx

    proto = onnx.load(str(onnx_file))
    meta = {p.key: p.value for p in proto.metadata_props}
    model = small_model()
    assert meta["ssd.format"] == "ssd-onnx"
    assert json.loads(meta["ssd.class_names"]) == list(model.config.class_names)
    assert meta["ssd.image_size"] == "192" and meta["ssd.candidates_per_class"] == ""
    assert meta["ssd.input_resize"] == "antialias" and "with antialiasing" in meta["ssd.input"]
    assert "postprocess_decoded" in meta["ssd.postprocess"]
    inp = proto.graph.input[0]
    assert inp.name == "images"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # a named, dynamic batch axis
    assert [d.dim_value for d in dims[1:]] == [3, 192, 192]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores"]
    assert not list(onnx_file.parent.glob("*.data"))  # one self-contained file


@pytest.mark.parametrize("n", [1, 3])
def test_onnx_matches_pytorch(onnx_file, n):
    from ssd.export import OnnxModel

    runner = OnnxModel(onnx_file, device="cpu")
    model = small_model()
    x = torch.rand(n, 3, 192, 192, generator=torch.Generator().manual_seed(n))
    boxes, scores = runner(x)
    with torch.no_grad():
        ref_boxes, ref_scores = DecodedSSD(model)(x)
    assert boxes.shape == (n, model.config.num_priors, 4) and scores.shape == (n, model.config.num_priors, 21)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-3, rtol=0)
    assert np.abs(boxes - ref_boxes.numpy()).max() < 1e-5  # in practice much closer than promised
    # After the same post-step: the same detections.
    kw = dict(min_score=0.2, max_overlap=0.5, top_k=200, image_sizes=[(192, 192)] * n)
    ours = postprocess_decoded(boxes, scores, **kw)
    ref = postprocess_decoded(ref_boxes, ref_scores, **kw)
    assert sum(len(r.labels) for r in ref) > 0
    for o, r in zip(ours, ref):
        assert torch.equal(o.labels, r.labels)
        torch.testing.assert_close(o.boxes, r.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(o.scores, r.scores, atol=1e-5, rtol=0)


def test_detector_from_onnx_matches_checkpoint(onnx_file, checkpoint):
    paths = [need(VOCMINI / "JPEGImages" / f"{i}.jpg") for i in VOC_IDS]
    torch_det = Detector.from_checkpoint(checkpoint, device="cpu")
    onnx_det = Detector.from_onnx(onnx_file, device="cpu", batch_size=2)
    assert onnx_det.class_names == torch_det.class_names and onnx_det.backend == "onnx"
    assert onnx_det.num_priors == torch_det.num_priors
    for a, b in zip(onnx_det(paths), torch_det(paths)):
        assert len(b) > 0
        assert a.class_names == b.class_names
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)  # pixels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)


def test_detect_cli_with_onnx(onnx_file, checkpoint, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in VOC_IDS[:2]:
        shutil.copy(need(VOCMINI / "JPEGImages" / f"{i}.jpg"), folder / f"{i}.jpg")
    results = {}
    for name, model_args in (("onnx", ["--onnx", onnx_file]), ("torch", [checkpoint])):
        js = tmp_path / f"{name}.json"
        code, out, err = run_cli(
            ["detect", *model_args, folder, "--out", tmp_path / name, "--json", js, "--device", "cpu"], capsys, monkeypatch
        )
        assert code == 0, err
        results[name] = json.loads(js.read_text())
    assert results["onnx"]["backend"] == "onnx" and results["onnx"]["model"] == str(onnx_file)
    for a, b in zip(results["onnx"]["images"], results["torch"]["images"]):
        assert a["file"] == b["file"] and len(a["detections"]) == len(b["detections"]) > 0
        for da, db in zip(a["detections"], b["detections"]):
            assert da["class_name"] == db["class_name"]
            np.testing.assert_allclose(da["box"], db["box"], atol=2e-3)  # rounded to 1e-3 in the JSON
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["000050.jpg", "000077.jpg"]


def test_fixed_batch_and_foreign_files(checkpoint, tmp_path, onnx_file):
    import onnx

    from ssd.export import OnnxModel, export_onnx

    info = export_onnx(checkpoint, tmp_path / "fixed.onnx", batch=2)
    assert info["batch"] == 2 and info["max_abs_diff"] < 1e-3
    runner = OnnxModel(tmp_path / "fixed.onnx", device="cpu")
    assert runner.fixed_batch == 2
    x = torch.rand(3, 3, 192, 192, generator=torch.Generator().manual_seed(5))
    b_fixed, s_fixed = runner(x)  # 3 images through a batch-2 file: chunked and padded
    b_dyn, s_dyn = OnnxModel(onnx_file, device="cpu")(x)
    np.testing.assert_allclose(b_fixed, b_dyn, atol=1e-5)
    np.testing.assert_allclose(s_fixed, s_dyn, atol=1e-5)
    # A file without our metadata, and a file that is not ONNX at all: one-line errors.
    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(SSDError, match="not written by `ssd export`"):
        OnnxModel(tmp_path / "foreign.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(SSDError, match="onnxruntime cannot load it"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(SSDError, match="opset"):
        export_onnx(checkpoint, tmp_path / "x.onnx", opset=17)


def test_onnx_files_carry_how_their_inputs_are_resized(tmp_path):
    """A file from the ssd300-torchvision preset tells the Detector to resize as torchvision does; a file written
    before the key existed reads as antialiased."""
    pytest.importorskip("onnxruntime")
    import onnx

    from ssd.detector import Detector
    from ssd.export import OnnxModel, export_onnx

    model = ssd.build_model("small", 2).eval()
    bilinear = model.__class__(dataclasses.replace(model.config, input_resize="bilinear")).eval()
    path = tmp_path / "b.onnx"
    export_onnx(bilinear, path)
    assert OnnxModel(path).input_resize == "bilinear" and Detector.from_onnx(path).input_resize == "bilinear"
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != "ssd.input_resize"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert OnnxModel(tmp_path / "old.onnx").input_resize == "antialias"
