"""Every command that loads a checkpoint refuses one crafted to run code, and says what is wrong with
a truncated or mismatched one; invalid options fail before any work, naming the option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ssd
from ssd.cli import main
from conftest import VOCMINI, need

ALL_LOADERS = ["info", "detect", "eval", "resume", "init-from"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    marker = root / "pwned"
    evil = root / "evil.ckpt"
    torch.save({"format": "ssd-checkpoint", "model": _Payload(marker)}, evil)  # a real torch.save pickle
    good = ssd.save_checkpoint(ssd.build_model("small", ssd.VOC_CLASSES), root / "good.ckpt")
    data = good.read_bytes()
    (root / "cut.ckpt").write_bytes(data[: len(data) // 3])
    other = ssd.save_checkpoint(ssd.build_model("small", ["cat", "dog"]), root / "other.ckpt")
    image = root / "img.jpg"
    image.write_bytes(min((need(VOCMINI) / "JPEGImages").glob("*.jpg")).read_bytes())  # skips without VOCmini
    from ssd.data.index import build_voc_index

    index = build_voc_index("test", [(VOCMINI, "test")], ssd.VOC_CLASSES)
    index.images = index.images[:4]
    index_path = index.save(root / "test.json")
    return {"root": root, "marker": marker, "evil": evil, "cut": root / "cut.ckpt", "other": other,
            "good": good, "image": image, "index": index_path}  # fmt: skip


def _run(kind: str, ckpt: Path, f: dict, tmp_path: Path) -> list[str]:
    if kind == "info":
        return ["info", str(ckpt)]
    if kind == "detect":
        return ["detect", str(ckpt), str(f["image"]), "--out", str(tmp_path / "det")]
    if kind == "eval":
        return ["eval", str(ckpt), "--data", str(f["index"]), "--no-plot"]
    if kind == "resume":
        return ["train", "--resume", str(ckpt)]
    return ["train", "--data", str(f["index"]), "--init-from", str(ckpt), "--preset", "small",
            "--out", str(tmp_path / "run"), "--iterations", "1", "--batch-size", "2", "--reference-batch", "2"]  # fmt: skip


@pytest.mark.parametrize("kind", ALL_LOADERS)
def test_crafted_checkpoint_is_refused_and_never_runs(kind, files, tmp_path, capsys):
    assert main(_run(kind, files["evil"], files, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not files["marker"].exists()


@pytest.mark.parametrize("kind", ALL_LOADERS)
def test_truncated_checkpoint_is_named(kind, files, tmp_path, capsys):
    assert main(_run(kind, files["cut"], files, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_mismatched_checkpoints_say_which(files, tmp_path, capsys):
    # Evaluating a 2-class model on VOC data: the classes do not fit.
    assert main(["eval", str(files["other"]), "--data", str(files["index"]), "--no-plot"]) == 2
    assert "class" in capsys.readouterr().err
    # Resuming from weights without training state.
    assert main(["train", "--resume", str(files["good"])]) == 2
    assert "no training state" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, option",
    [
        (["--preset", "nope"], "--preset"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--workers", "-1"], "--workers"),
        (["--iterations", "0"], "--iterations"),
    ],
)
def test_invalid_training_options_fail_before_work(args, option, files, tmp_path, capsys):
    code = main(["train", "--data", str(files["index"]), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_data_and_unwritable_output(files, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.json"), "--preset", "small"]) == 2
    assert "--data: file not found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--data", str(files["index"]), "--preset", "small", "--out", str(blocker / "run"),
                 "--iterations", "1", "--batch-size", "2", "--reference-batch", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "cannot write" in err
