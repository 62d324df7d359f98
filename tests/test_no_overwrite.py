"""No command destroys its own inputs: every output path is checked against every input, under any name (the same
path, a symbolic link, a hard link), before any work; a resumed run writes beside the checkpoint it resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import ssd
from conftest import VOCMINI, need
from ssd.cli import main
from ssd.data.index import build_voc_index
from ssd.data.synthetic import SyntheticConfig, generate_synthetic
from ssd.errors import SSDError
from ssd.paths import refuse_to_overwrite_inputs
from ssd.training.config import TrainConfig
from ssd.training.loop import train


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    ckpt = ssd.save_checkpoint(ssd.build_model("small", ssd.VOC_CLASSES), root / "model.ckpt")
    photos = root / "photos"
    photos.mkdir()
    for src in sorted((need(VOCMINI) / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(src, photos / src.name)
    index = build_voc_index("test", [(VOCMINI, "test")], ssd.VOC_CLASSES)
    index.images = index.images[:2]
    return {"root": root, "ckpt": ckpt, "photos": photos, "index": index.save(root / "test.json")}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _refused(argv: list, capsys, option: str) -> None:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "would overwrite" in err and err.count("\n") == 0 and "Traceback" not in err, err
    assert f"{option} " in err, err


def test_the_rule_sees_links_and_spellings(tmp_path):
    real = tmp_path / "a.ckpt"
    real.write_bytes(b"x")
    (tmp_path / "sym.ckpt").symlink_to(real)
    os.link(real, tmp_path / "hard.ckpt")
    (tmp_path / "sub").mkdir()
    for alias in (real, tmp_path / "sym.ckpt", tmp_path / "hard.ckpt", tmp_path / "sub" / ".." / "a.ckpt"):
        with pytest.raises(SSDError, match=r"^OUT .*: would overwrite .*a\.ckpt, an input of this command"):
            refuse_to_overwrite_inputs([("OUT", alias)], [real])
    refuse_to_overwrite_inputs([("OUT", tmp_path / "b.ckpt")], [real])  # a new file: fine
    refuse_to_overwrite_inputs([("OUT", tmp_path / "new" / "a.ckpt")], [real, tmp_path / "missing"])


def test_commands_refuse_outputs_that_are_their_inputs(files, tmp_path, capsys):
    before = _digest(files["root"])
    photo = sorted(files["photos"].iterdir())[0]
    # detect: the annotated copy of a photo written over the photo; the JSON over the checkpoint
    _refused(["detect", files["ckpt"], photo, "--out", files["photos"]], capsys, "--out")
    _refused(["detect", files["ckpt"], files["photos"], "--out", files["photos"]], capsys, "--out")
    _refused(["detect", files["ckpt"], photo, "--out", tmp_path / "det", "--json", files["ckpt"]], capsys, "--json")
    # eval: results over the dataset index or over an image of the dataset
    _refused(["eval", files["ckpt"], "--data", files["index"], "--coco-results", files["index"]], capsys, "--coco-results")
    image = Path(json.loads(files["index"].read_text())["images"][0]["file"])
    link = tmp_path / "results.json"
    link.symlink_to(image)
    _refused(["eval", files["ckpt"], "--data", files["index"], "--coco-results", link], capsys, "--coco-results")
    # export and convert: the target is the source, under another name
    os.link(files["ckpt"], tmp_path / "model.onnx")
    _refused(["export", files["ckpt"], tmp_path / "model.onnx"], capsys, "OUT.onnx")
    _refused(["convert", "tutorial", files["ckpt"], files["ckpt"]], capsys, "OUT")
    assert _digest(files["root"]) == before and not (tmp_path / "det").exists()


def test_scoring_results_files_never_rewrites_them(files, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["eval", str(files["ckpt"]), "--data", str(files["index"]), "--save-detections", str(results),
                 "--min-score", "0.5", "--top-k", "5"]) == 0  # fmt: skip
    capsys.readouterr()
    _refused(["eval", "--detections", results, "--data", files["index"], "--save-detections", results],
             capsys, "--save-detections")  # fmt: skip


def test_data_coco_refuses_to_replace_the_annotations(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    coco = tmp_path / "train.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    _refused(["data", "coco", "--json", coco, "--images", images, "--name", "train", "--out", tmp_path], capsys, "--out")
    assert json.loads(coco.read_text())["categories"] == [{"id": 1, "name": "cat"}]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    summary = generate_synthetic(root / "VOC", SyntheticConfig(num_trainval=8, num_test=2, seed=5))
    return build_voc_index("train", [(summary.voc_root, "trainval")], summary.classes).save(root / "train.json")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(train_data=str(data), out_dir=str(out), preset="small", image_size=96, batch_size=4,
                       reference_batch=4, iterations=2, milestones=(), workers=0, progress=False, tensorboard=False,
                       checkpoint_every=10_000, **kw)  # fmt: skip


def test_training_never_writes_over_what_it_reads(tiny_data, tmp_path):
    first = train(_cfg(tiny_data, tmp_path / "a"), log=lambda m: None)
    weights = first.model_path.read_bytes()
    with pytest.raises(SSDError, match=r"--out .*model\.ckpt: would overwrite"):
        train(_cfg(tiny_data, tmp_path / "a", init_from=str(first.model_path), overwrite=True), log=lambda m: None)
    assert first.model_path.read_bytes() == weights


def test_a_copied_run_resumes_in_the_copy_and_never_into_another_run(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "a"), log=lambda m: None)
    train(_cfg(tiny_data, tmp_path / "other"), log=lambda m: None)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    original = _digest(tmp_path / "a")
    more = {"iterations": 3, "progress": False, "tensorboard": False}
    resumed = train(TrainConfig(resume=str(tmp_path / "copy" / "last.ckpt")), log=lambda m: None, resume_overrides=more)
    assert resumed.step == 3 and resumed.run_dir.resolve() == (tmp_path / "copy").resolve()
    assert _digest(tmp_path / "a") == original  # the original run is untouched
    with pytest.raises(SSDError, match="holds another run"):
        train(TrainConfig(resume=str(tmp_path / "a" / "last.ckpt")), log=lambda m: None,
              resume_overrides={**more, "out_dir": str(tmp_path / "other")})  # fmt: skip
    elsewhere = train(TrainConfig(resume=str(tmp_path / "a" / "last.ckpt")), log=lambda m: None,
                      resume_overrides={**more, "out_dir": str(tmp_path / "new")})  # fmt: skip
    assert elsewhere.step == 3 and (tmp_path / "new" / "last.ckpt").is_file() and _digest(tmp_path / "a") == original
