"""The benchmark's correctness checks, on small inputs (speed goals live in bench/, not here)."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from conftest import GOLDENS, VOCMINI, need

BENCH = Path(__file__).resolve().parents[1] / "bench" / "compare.py"


def _load(script: str = "compare"):
    spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCH.parent / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_postprocessing_is_identical_to_the_exact_reference_and_torchvision():
    bench = _load()
    args = Namespace(post_batch=3, post_iters=1, windows=1, post_check_images=3)
    res = bench.bench_post(args, torch.device("cpu"), {"channels_last": False, "compile": False})
    assert res["identical_to_exact_reference"] and res["identical_to_torchvision"]
    assert 40 <= res["candidates_per_class_per_image"] <= 120  # the realistic load the figure claims
    assert res["detections_per_image"] == 200


def test_matrix_nms_postprocessing_is_identical_too(monkeypatch):
    """The GPU's default NMS method, run on the CPU, against the same oracle."""
    import functools

    import ssd.postprocess as pp

    monkeypatch.setattr(pp, "grouped_nms", functools.partial(pp.grouped_nms, method="matrix"))
    bench = _load()
    args = Namespace(post_batch=3, post_iters=1, windows=1, post_check_images=3)
    res = bench.bench_post(args, torch.device("cpu"), {"channels_last": False, "compile": False})
    assert res["identical_to_exact_reference"] and res["identical_to_torchvision"]


def test_synthetic_head_outputs_are_deterministic():
    bench = _load()
    a = bench.synthetic_head_outputs(2, 100, 21, torch.device("cpu"))
    b = bench.synthetic_head_outputs(2, 100, 21, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_demo_ablation_dry_run(tmp_path, capsys):
    """``bench/demo_ablation.py`` (the README's command for the demo's ablations), shortened: every change runs
    the demo with only that training setting changed (plus the ``--set`` ones), the unchanged run comes first
    whatever the order asked, and the record holds the drops against it."""
    import json

    module = _load("demo_ablation")
    out = tmp_path / "ablation"
    argv = ["--out", str(out), "--iterations", "2", "--train-images", "16", "--test-images", "4", "--device", "cpu",
            "--change", "no-box-mirroring", "--change", "none", "--change", "no-forced-match", "--set", "lr=0.002",
            "--min-drop", "2"]  # fmt: skip
    assert module.main(argv) == 1  # no drop reaches 2 (an mAP lies in [0, 1]): the check fails, as it should
    assert "dropped the mAP by less than 2.0" in capsys.readouterr().err
    record = json.loads((out / "ablation.json").read_text())
    runs = {r["change"]: r for r in record["runs"]}
    assert list(runs) == ["none", "no-box-mirroring", "no-forced-match"]
    assert record["data_changes"] == {"num_trainval": 16, "num_test": 4} and record["settings"] == {"lr": 0.002}
    for change, run in runs.items():
        assert run["drop"] == round(runs["none"]["mAP"] - run["mAP"], 4)
        assert list(run["ap"]) == ["circle", "square", "star", "ring", "bar"]
        config = json.loads((out / change / "run" / "config.json").read_text())["train_config"]
        assert (config["iterations"], config["lr"]) == (2, 0.002)
        assert (config["matching"] == "threshold") is (change == "no-forced-match")
        assert config["mirror_boxes"] is (change != "no-box-mirroring")

    # bad input: a clear message and exit code 2, before any data is written
    bad = tmp_path / "bad"
    assert module.main(["--out", str(bad), "--classes", "circle,blob", "--change", "none"]) == 2
    assert "unknown class 'blob'" in capsys.readouterr().err
    assert module.main(["--out", str(bad), "--set", "workers=2", "--change", "none"]) == 2  # set by the demo itself
    assert "cannot change the training setting workers" in capsys.readouterr().err
    assert module.main(["--out", str(bad), "--set", "no_such_setting=1", "--change", "none"]) == 2
    assert not (bad / "none").exists()
    with pytest.raises(SystemExit) as exc:
        module.main(["--out", str(bad), "--set", "lr"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_demo_halving_dry_run(tmp_path, capsys):
    """``bench/demo_halving.py``, shortened: the demo of before (its layers) and the demo now (with a ``--set``
    change) run on the same data, the preset is today's again afterwards, and the check fails when the demo is not
    cheap or good enough."""
    import json

    from ssd.config import get_preset

    module = _load("demo_halving")
    out = tmp_path / "halving"
    argv = ["--out", str(out), "--iterations", "2", "--train-images", "16", "--test-images", "4",
            "--set", "image_size=128", "--max-ratio", "0", "--min-map", "2"]  # fmt: skip
    assert module.main(argv) == 1
    err = capsys.readouterr().err
    assert "ratio" in err and "is over 0.0" in err and "mAP" in err and "is under 2.0" in err
    record = json.loads((out / "halving.json").read_text())
    assert [r["run"] for r in record["runs"]] == ["before", "demo"]
    assert record["train_time_ratio"] > 0 and "_train_seconds" not in record["runs"][0]
    before, demo = (json.loads((out / name / "run" / "config.json").read_text()) for name in ("before", "demo"))
    today = get_preset("small")
    for key, value in module.BEFORE["small_layers"].items():
        assert before["model_config"][key] == (list(value) if isinstance(value, tuple) else value)
    assert demo["model_config"]["vgg_depths"] == list(today.vgg_depths) != list(module.BEFORE["small_layers"]["vgg_depths"])
    assert before["model_config"]["image_size"] == 192 and demo["model_config"]["image_size"] == 128
    assert demo["train_config"]["iterations"] == before["train_config"]["iterations"] == 2
    assert today.vgg_widths != module.BEFORE["small_layers"]["vgg_widths"]  # the earlier layers were for one run

    bad = tmp_path / "bad"
    assert module.main(["--out", str(bad), "--set", "workers=2"]) == 2  # the demo sets it itself
    assert "cannot change the training setting workers" in capsys.readouterr().err and not bad.exists()


def test_tutorial_rules_against_the_devkit_goldens(capsys):
    """``bench/tutorial_vs_devkit_map.py``'s figures in docs/evaluation.md: its scorer with every switch set the
    devkit's way reproduces both goldens' devkit mAP, and the tutorial's rules give the documented numbers."""
    import json

    need(GOLDENS / "voc_devkit" / "edge_cases")
    need(VOCMINI)
    assert _load("tutorial_vs_devkit_map").main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for rows in report.values():
        expected = rows["expected (golden, devkit)"]
        assert rows["ssd.evaluate (devkit rules)"] == pytest.approx(expected, abs=1e-9)
        assert rows["bench, devkit rules"] == pytest.approx(expected, abs=1e-9)
    mini, edge = report["vocmini_test"], report["edge_cases"]
    assert mini["expected (golden, devkit)"] == pytest.approx(0.3380806534, abs=1e-10)
    assert mini["bench, tutorial rules"] == pytest.approx(0.3387802243, abs=1e-7)  # float32: a few ulps of slack
    assert mini["devkit but only: no +1 pixel"] == pytest.approx(0.3377730700, abs=1e-9)
    assert mini["devkit but only: float32 + arange thresholds"] == pytest.approx(0.3390246928, abs=1e-7)
    assert edge["expected (golden, devkit)"] == pytest.approx(0.8450, abs=5e-5)
    assert edge["bench, tutorial rules"] == pytest.approx(0.0768, abs=5e-5)
    assert edge["devkit but only: no +1 pixel"] == pytest.approx(0.5117, abs=5e-5)
    assert edge["devkit but only: AP 0 for no-positive classes"] == pytest.approx(0.1268, abs=5e-5)


@pytest.mark.slow
def test_video_bench_runs_and_counts_every_frame(tmp_path):
    """``bench/video.py`` (docs/performance.md's video figures), on a short small clip: every frame of the clip goes
    through ``annotate_video`` and both throughputs are measured."""
    import json

    pytest.importorskip("av")
    out = tmp_path / "video.json"
    args = ["--seconds", "0.5", "--width", "320", "--height", "240", "--rate", "20", "--batch-size", "4",
            "--windows", "1", "--iters", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert _load("video").main(args) == 0
    record = json.loads(out.read_text())
    assert record["frames"] == 10 and record["clip"] == "320x240, 20 fps, 10 frames"
    assert record["network_img_per_s"] > 0 and record["video_frames_per_s"] > 0
    assert record["ratio"] == pytest.approx(record["video_frames_per_s"] / record["network_img_per_s"], abs=0.01)
