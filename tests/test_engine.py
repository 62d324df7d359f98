"""The training loop: schedule, optimiser groups, bit-exact resume, Ctrl-C, divergence, crashes, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssd import SSDError, load_checkpoint
from ssd.data.index import DatasetIndex, build_voc_index
from ssd.data.synthetic import SyntheticConfig, generate_synthetic
from ssd.errors import TrainingDiverged
from ssd.training.config import TrainConfig, resolve_schedule
from ssd.training.loop import train
from ssd.training.setup import make_optimizer
from ssd.model import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """16 synthetic training images, indexed."""
    root = tmp_path_factory.mktemp("tiny")
    summary = generate_synthetic(root / "VOC", SyntheticConfig(num_trainval=16, num_test=4, seed=3))
    index = build_voc_index("train", [(summary.voc_root, "trainval")], summary.classes)
    return index.save(root / "train.json")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        train_data=str(data), out_dir=str(out), preset="small", image_size=96, batch_size=4, reference_batch=4,
        iterations=8, milestones=(), lr=1e-3, workers=0, progress=False, tensorboard=False,
        log_every=1, checkpoint_every=10_000, seed=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_schedule_scales_with_batch_size():
    s = resolve_schedule(TrainConfig(train_data="x", batch_size=8))
    assert (s.iterations, s.milestones, s.lr) == (480_000, (320_000, 400_000), 1e-3)
    s = resolve_schedule(TrainConfig(train_data="x", batch_size=64, scale_lr=True))
    assert (s.iterations, s.milestones, s.lr) == (60_000, (40_000, 50_000), 2e-3)
    s = resolve_schedule(TrainConfig(train_data="x", batch_size=16, accumulate=2, warmup=100))
    assert s.iterations == 120_000 and s.warmup == 100
    assert s.lr_factor(0) == pytest.approx(0.01) and s.lr_factor(99) == 1.0
    assert s.lr_factor(80_000) == pytest.approx(0.1) and s.lr_factor(100_000) == pytest.approx(0.01)
    assert "divided by 10 at 80000, 100000" in s.describe(32)


def test_cosine_decay_matches_torchs_cosine_annealing():
    s = resolve_schedule(TrainConfig(train_data="x", batch_size=32, iterations=50, lr_decay="cosine", lr=0.1))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    oracle = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.0)
    for step in range(51):
        assert s.lr * s.lr_factor(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), step
        opt.step()
        oracle.step()
    assert s.lr_factor(10, progress=1.0) == pytest.approx(0.0) and s.lr_factor(10, progress=0.5) == pytest.approx(0.5)
    warm = resolve_schedule(TrainConfig(train_data="x", iterations=100, lr_decay="cosine", warmup=10))
    assert warm.lr_factor(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.0)))
    assert "cosine decay to 0" in warm.describe(32)
    with pytest.raises(SSDError, match="lr-decay"):
        TrainConfig(train_data=__file__, lr_decay="linear").validate()


def test_biases_get_twice_the_rate_and_no_decay():
    model = build_model("small", 2)
    opt = make_optimizer(model, TrainConfig(train_data="x"), 1e-3)
    weights, biases = opt.param_groups
    assert (weights["lr"], weights["weight_decay"]) == (1e-3, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (2e-3, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".bias") for p in biases["params"])
    assert len(weights["params"]) + len(biases["params"]) == len(list(model.parameters()))


def test_training_writes_a_run_folder_and_learns(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path / "run", iterations=24, augment="none", batch_norm=True, lr=1e-2, warmup=4, grad_clip=10.0), log=lambda m: None)
    run = tmp_path / "run"
    assert {"config.json", "log.jsonl", "last.ckpt", "model.ckpt"} <= {p.name for p in run.iterdir()}
    import json

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == result.step == 24
    first, last = (sum(r["total"] for r in part) / 6 for part in (records[:6], records[-6:]))
    assert last < 0.8 * first
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["image_size"] == 96 and config["versions"]["torch"] == torch.__version__
    assert load_checkpoint(run / "last.ckpt")["step"] == 24


def test_resume_is_bit_exact_with_workers(tiny_data, tmp_path):
    full = train(_cfg(tiny_data, tmp_path / "full", workers=2), log=lambda m: None)
    half = _cfg(tiny_data, tmp_path / "half", workers=2, iterations=4)
    train(half, log=lambda m: None)
    resumed = train(TrainConfig(resume=str(tmp_path / "half" / "last.ckpt")), log=lambda m: None,
                    resume_overrides={"iterations": 8, "workers": 2, "progress": False, "tensorboard": False})  # fmt: skip
    assert full.step == resumed.step == 8
    # the training time is counted with or without a budget, and a resume continues the count
    assert load_checkpoint(tmp_path / "half" / "last.ckpt")["train_seconds"] > 0
    a, b = _weights(tmp_path / "full" / "last.ckpt"), _weights(tmp_path / "half" / "last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = load_checkpoint(tmp_path / "full" / "last.ckpt")["optimizer"]["state"]
    ob = load_checkpoint(tmp_path / "half" / "last.ckpt")["optimizer"]["state"]
    assert all(torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]) for k in oa)


def test_device_augment_trains_exactly_as_the_cpu_loader_on_the_cpu(tiny_data, tmp_path):
    """--device-augment moves decoding and the pixel work to the training device; on the CPU the same decoder
    and the same draws give the same batches, so the same weights (the full SSD augmentation, 2 workers)."""
    regular = train(_cfg(tiny_data, tmp_path / "regular", workers=2, augment="ssd"), log=lambda m: None)
    on_device = train(_cfg(tiny_data, tmp_path / "device", workers=2, augment="ssd", device_augment=True),
                      log=lambda m: None)  # fmt: skip
    assert regular.step == on_device.step == 8
    a, b = _weights(tmp_path / "regular" / "last.ckpt"), _weights(tmp_path / "device" / "last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SSDError, match="--device-augment needs an augmentation"):
        _cfg(tiny_data, tmp_path / "x", augment="none", device_augment=True).validate()


def test_resume_refuses_changes_to_the_run(tiny_data, tmp_path):
    from ssd import SSDError

    train(_cfg(tiny_data, tmp_path / "r", iterations=1), log=lambda m: None)
    with pytest.raises(SSDError, match="cannot change: lr"):
        train(TrainConfig(resume=str(tmp_path / "r" / "last.ckpt")), log=lambda m: None, resume_overrides={"lr": 1.0})


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    from ssd import loss as loss_module

    real = loss_module.MultiBoxLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        if calls["n"] == 4:
            return type(out)(out.total * float("nan"), out.loc, out.cls)
        return out

    monkeypatch.setattr(loss_module.MultiBoxLoss, "forward", poisoned)
    cfg = _cfg(tiny_data, tmp_path / "nan", checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match="non-finite at step 4.*last.ckpt"):
        train(cfg, log=lambda m: None)
    assert load_checkpoint(tmp_path / "nan" / "last.ckpt")["step"] == 2
    # With a budget of skipped steps it goes on.
    calls["n"] = 0
    result = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "skip"), max_nonfinite=1), log=lambda m: None)
    assert result.step == 8


def test_a_checkpoint_is_never_written_from_non_finite_weights(tiny_data, tmp_path):
    """An absurd rate overflows the weights in the first step, whose loss and gradient were finite: the save
    refuses them, so no last.ckpt holds infinite weights."""
    cfg = _cfg(tiny_data, tmp_path / "inf", lr=1e38, checkpoint_every=1, iterations=3, max_nonfinite=5)
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 1"):
        train(cfg, log=lambda m: None)
    assert not (tmp_path / "inf" / "last.ckpt").exists()


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    # Ctrl-C as at a terminal: a suite started in the background (bash `&`) passes SIGINT down ignored, and Python
    # then keeps it ignored wherever the training loop does not catch it (the second Ctrl-C during a save).
    return subprocess.Popen([sys.executable, "-m", "ssd.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_sigint_as_at_a_terminal)  # fmt: skip


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train_args(data: Path, out: Path, iterations: int, every: int = 10_000) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--preset", "small", "--image-size", "96",
            "--batch-size", "4", "--reference-batch", "4", "--iterations", str(iterations), "--milestones", "", "--workers", "0",
            "--log-every", "1", "--checkpoint-every", str(every), "--seed", "1"]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = _cli(*_train_args(tiny_data, run, 10_000))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and (run / "log.jsonl").stat().st_size == 0:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "state saved" in err and "Traceback" not in err
    step = load_checkpoint(run / "last.ckpt")["step"]
    assert step >= 1
    resumed = _cli("train", "--resume", str(run / "last.ckpt"), "--iterations", str(step + 2))
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert load_checkpoint(run / "last.ckpt")["step"] == step + 2


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_the_previous_one(tiny_data, tmp_path):
    run = tmp_path / "run"
    first = _cli(*_train_args(tiny_data, run, 2))
    assert first.wait(timeout=180) == 0, first.stderr.read()
    # Resume with the writer pausing after the temporary file is complete, then kill it there.
    proc = _cli("train", "--resume", str(run / "last.ckpt"), "--iterations", "4", "--checkpoint-every", "1",
                env_extra={"SSD_FAULT_PAUSE_CHECKPOINT_WRITE": "60"})  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob(".last.ckpt.*.tmp")):
        time.sleep(0.1)
    assert list(run.glob(".last.ckpt.*.tmp")), "the writer never reached the pause"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint(run / "last.ckpt")["step"] == 2
    again = _cli("train", "--resume", str(run / "last.ckpt"), "--iterations", "4")
    assert again.wait(timeout=180) == 0, again.stderr.read()
    assert load_checkpoint(run / "last.ckpt")["step"] == 4


def _ddp_worker(rank: int, world: int, init_file: str, cfg_dict: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        train(TrainConfig.from_dict(cfg_dict), log=lambda m: None)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_gloo_equals_one_process_with_the_global_batch(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path / "ddp", batch_size=8, reference_batch=8, iterations=3, augment="flip", lr=1e-3)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), cfg.to_dict()), nprocs=2, join=True)
    single = dataclasses.replace(cfg, out_dir=str(tmp_path / "single"))
    train(single, log=lambda m: None)
    a, b = _weights(tmp_path / "ddp" / "last.ckpt"), _weights(tmp_path / "single" / "last.ckpt")
    assert load_checkpoint(tmp_path / "ddp" / "last.ckpt")["step"] == 3
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building: these are the step-0 weights
    start = build_model("small", len(DatasetIndex.load(tiny_data).classes), image_size=96).state_dict()
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 1e-5  # the weights did change
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_eval_every_logs_map_during_training(tiny_data, tmp_path):
    import json

    result = train(_cfg(tiny_data, tmp_path / "ev", iterations=4, val_data=str(tiny_data), eval_every=2), log=lambda m: None)
    assert [e["step"] for e in result.evaluations] == [2, 4]
    assert all(0.0 <= e["eval_mAP"] <= 1.0 for e in result.evaluations)
    logged = [json.loads(line) for line in (tmp_path / "ev" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval_mAP" in r] == [2, 4]


def _first_best(evaluations: list[dict]) -> dict:
    return max(evaluations, key=lambda e: (e["eval_mAP"], -e["step"]))  # ties: the earlier step


def test_val_keeps_the_best_checkpoint_across_a_resume(tiny_data, tmp_path, capsys):
    """best.ckpt holds the weights of the best evaluation (its mAP, step and split, shown by `ssd info`); a resumed
    run knows the best figure from last.ckpt and replaces best.ckpt only with a better one."""
    from ssd.checkpoint import load_model
    from ssd.cli import main

    cfg = _cfg(tiny_data, tmp_path / "b", iterations=4, lr=3e-3, val_data=str(tiny_data), eval_every=2)
    first = train(cfg, log=lambda m: None)
    resumed = train(TrainConfig(resume=str(tmp_path / "b" / "last.ckpt")), log=lambda m: None,
                    resume_overrides={"iterations": 8})  # fmt: skip
    evaluations = first.evaluations + resumed.evaluations
    assert [e["step"] for e in evaluations] == [2, 4, 6, 8]
    best = _first_best(evaluations)
    ckpt = load_checkpoint(tmp_path / "b" / "best.ckpt")
    assert ckpt["eval"] == {"mAP": best["eval_mAP"], "step": best["step"], "split": DatasetIndex.load(tiny_data).name}
    flags, running = [], -1.0
    for e in evaluations:
        flags.append(e["eval_mAP"] > running)
        running = max(running, e["eval_mAP"])
    assert [e["best"] for e in evaluations] == flags  # written exactly when better than every earlier one
    assert load_model(tmp_path / "b" / "best.ckpt").config.preset == "small"  # usable wherever model.ckpt is
    assert main(["info", str(tmp_path / "b" / "best.ckpt"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["evaluation"] == ckpt["eval"]


def test_max_seconds_stops_early_and_saves(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path / "t", iterations=10_000, max_seconds=0.0), log=lambda m: None)
    assert result.step == 1 and load_checkpoint(tmp_path / "t" / "last.ckpt")["step"] == 1


def _lrs(run: Path) -> list[float]:
    import json

    return [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines() if '"lr"' in line]


def test_cosine_over_a_time_budget_ends_at_zero_and_resumes_where_it_was(tiny_data, tmp_path):
    """The rate follows the clock down to 0 at the budget; the time is saved, so a resumed run continues the
    decay (and the count) instead of starting a new budget at the full rate."""
    run = tmp_path / "t"
    first = train(_cfg(tiny_data, run, iterations=10**6, lr_decay="cosine", max_seconds=1.5), log=lambda m: None)
    lrs = _lrs(run)
    assert first.stopped and len(lrs) >= 3
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 0.0
    spent = load_checkpoint(run / "last.ckpt")["train_seconds"]
    assert 1.5 <= spent < 10
    second = train(TrainConfig(resume=str(run / "last.ckpt")), log=lambda m: None,
                   resume_overrides={"max_seconds": 3.0, "progress": False, "tensorboard": False})  # fmt: skip
    resumed = _lrs(run)[len(lrs):]
    assert second.step > first.step and resumed
    assert resumed[0] <= 1e-3 * 0.5 * (1 + math.cos(math.pi * spent / 3.0)) + 1e-12  # not back to 1e-3
    assert load_checkpoint(run / "last.ckpt")["train_seconds"] >= 3.0


def test_the_remaining_time_is_said_once_from_the_first_window_after_the_first_step(tiny_data, tmp_path):
    from ssd.training.loop import format_duration

    messages: list[str] = []
    train(_cfg(tiny_data, tmp_path / "run", iterations=8, log_every=3), log=messages.append)
    said = [m for m in messages if "iterations take about" in m]
    assert len(said) == 1 and said[0].startswith("at ") and "the remaining 5 iterations take about" in said[0]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 6, 8]  # said at step 3: the window of steps 2-3
    assert f"{records[1]['images_per_s']:.1f} images/s" in said[0]
    from types import SimpleNamespace

    from ssd.training.loop import remaining_time_note

    cfg = _cfg(tiny_data, tmp_path / "x", batch_size=4, max_seconds=100.0)
    note = remaining_time_note(1000, cfg, 8.0, SimpleNamespace(spent=40.0))  # 500 s at speed, 60 s of budget left
    assert note == "at 8.0 images/s the time budget ends the run in about 1 min 00 s, after about 120 of the remaining 1000 iterations"
    note = remaining_time_note(10, cfg, 8.0, SimpleNamespace(spent=40.0))  # 5 s at speed: the budget is not reached
    assert note.startswith("at 8.0 images/s the remaining 10 iterations take about 5 s, not counting")
    assert "an unknown time" in remaining_time_note(10, dataclasses.replace(cfg, max_seconds=None), 0.0, SimpleNamespace(spent=0.0))
    assert [format_duration(s) for s in (0.4, 59.6, 61, 450, 3600, 7500)] == [
        "0 s", "1 min 00 s", "1 min 01 s", "7 min 30 s", "1 h 00 min", "2 h 05 min"]  # fmt: skip
    assert format_duration(float("inf")) == "an unknown time"
