"""``ssd train``'s options: one flag per TrainConfig field, built from the field's declaration, and back."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssd.errors import SSDError
from ssd.training.config import RESUME_OVERRIDABLE, TrainConfig, flag_of

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    from ssd.cli.train import register

    root = argparse.ArgumentParser()
    register(root.add_subparsers())
    return root._subparsers._group_actions[0].choices["train"]  # the `train` sub-parser


def test_every_field_has_exactly_one_flag_and_every_flag_a_field():
    from ssd.cli.train import SET_OPTIONS

    actions = [a for a in _parser()._actions if a.dest != "help"]
    dests = [a.dest for a in actions]
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(d for d in dests if d not in SET_OPTIONS) == sorted(fields)
    assert len(dests) == len(set(dests))
    for a in actions:
        if a.dest in fields:
            assert flag_of(a.dest) in a.option_strings


def test_flags_follow_the_declared_types_choices_and_defaults():
    p = _parser()
    by_dest = {a.dest: a for a in p._actions}
    assert by_dest["amp"].choices == ("auto", "bf16", "fp16", "none")  # from the Literal
    assert by_dest["compile_mode"].choices == ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
    assert "--no-difficult" in by_dest["keep_difficult"].option_strings  # booleans get --x and --no-x
    assert "(default 0.001)" in by_dest["lr"].help and "(default: on)" in by_dest["progress"].help
    args = p.parse_args(["--data", "d.json", "--no-difficult", "--milestones", "10,20", "--compile-mode",
                         "reduce-overhead", "--lr", "0.01"])  # fmt: skip
    given = {k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in dataclasses.fields(TrainConfig)}}
    cfg = TrainConfig.from_dict(given)
    assert (cfg.train_data, cfg.keep_difficult, cfg.milestones, cfg.compile_mode, cfg.lr) == ("d.json", False, (10, 20),
                                                                                             "reduce-overhead", 0.01)  # fmt: skip
    assert vars(p.parse_args([]))["lr"] is None  # unset: a recipe, config file or resumed run decides


def test_choices_are_validated_from_the_declared_types():
    with pytest.raises(SSDError, match="--compile-mode must be default, reduce-overhead or max-autotune-no-cudagraphs"):
        TrainConfig(train_data="x.json", compile_mode="fastest").validate()
    with pytest.raises(SSDError, match="--optimizer must be sgd or adamw, not 'adam'"):
        TrainConfig(train_data="x.json", optimizer="adam").validate()
    with pytest.raises(SSDError, match="--data: file not found: missing.json"):  # the flag, not the field's name
        TrainConfig(train_data="missing.json").validate()
    with pytest.raises(SSDError, match="--batch-size must be at least 1, got 0"):
        TrainConfig(train_data="x.json", batch_size=0).validate()


def test_resume_may_change_only_how_to_run():
    assert RESUME_OVERRIDABLE == {"iterations", "workers", "progress", "device", "log_every", "checkpoint_every",
                                  "eval_every", "val_data", "tensorboard", "max_nonfinite", "max_seconds", "out_dir"}  # fmt: skip


def test_help_and_argument_errors_never_import_torch():
    """`ssd --help`, every `ssd CMD --help` and an argument error answer at once: torch is not imported."""
    from ssd.cli import COMMAND_MODULES

    commands = [[]] + [[c] for c in ("demo", "data", "train", "eval", "detect", "serve", "export", "convert", "info")]
    argvs = [c + ["--help"] for c in commands] + [["train", "--lr", "abc"], ["detect", "--top-k", "x"]]
    code = ("import sys, json; from ssd.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, cwd=REPO,
                         check=True)  # fmt: skip
    assert out.stderr.strip().splitlines()[-1] == "False"
    assert out.stdout.count("usage: ssd") >= len(commands) == len(COMMAND_MODULES) + 2  # + ssd itself and info


def test_a_schedule_that_cannot_be_meant_is_refused_or_warned_about():
    """The README's old VOCmini line: 400 iterations at the reference batch 32 are 1600 at batch 8, and the scratch
    recipe's 500 warm-up iterations 2000: the rate never reached --lr, and the milestones lay past the end."""
    from ssd.training.config import RECIPES, resolve_schedule

    cfg = TrainConfig(train_data="x", batch_size=8, iterations=400, **RECIPES["scratch"])
    with pytest.raises(SSDError, match="--warmup 500 resolves to 2000 iterations at batch 8, not shorter than the run "
                                       r"\(1600\).*--reference-batch 8"):  # fmt: skip
        resolve_schedule(cfg)
    ok = resolve_schedule(dataclasses.replace(cfg, reference_batch=8, warmup=40))
    assert (ok.iterations, ok.warmup) == (400, 40)
    assert "milestones 80000, 100000 lie at or past the run's end (400 iterations" in ok.warnings()[0]
    assert resolve_schedule(dataclasses.replace(cfg, reference_batch=8, warmup=40, milestones=(320,))).warnings() == []


def test_the_tutorial_recipe_trains_on_the_tutorials_loss(tutorial_golden, monkeypatch, tmp_path):
    """``ssd train --recipe tutorial`` resolves to the tutorial's choices (L1 mean over 4 x positives, its matching:
    the last object keeps a shared best prior, a batch of 8), and the loss training builds from that configuration
    equals the golden computed by the tutorial's own code."""
    import ssd.training.loop
    from ssd.cli import main
    from ssd.loss import pad_targets
    from ssd.training.step import make_loss

    seen = {}

    def capture(cfg, **kwargs):
        seen["cfg"] = cfg
        raise SSDError("captured")

    monkeypatch.setattr(ssd.training.loop, "train", capture)
    assert main(["train", "--recipe", "tutorial", "--data", str(tmp_path / "train.json"), "--out", str(tmp_path / "run")]) == 2
    cfg = seen["cfg"]
    assert (cfg.loc_loss, cfg.matching, cfg.batch_size) == ("l1_mean", "tutorial", 8)
    g = tutorial_golden
    gt_boxes, gt_labels = pad_targets([g["gt_boxes_xyxy_rel_0"], g["gt_boxes_xyxy_rel_1"]], [g["gt_labels_0"], g["gt_labels_1"]])
    out = make_loss(g["priors_cxcy"], cfg.loc_loss, cfg.matching, compiled=False)(g["loc_offsets"], g["cls_logits"], gt_boxes, gt_labels)
    torch.testing.assert_close(out.loc, g["loss_loc_l1_mean"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.cls, g["loss_conf"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.total, g["loss_total"], rtol=1e-6, atol=0)
