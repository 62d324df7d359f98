"""The training loop: :func:`train` resolves the run, builds what it needs (:mod:`ssd.training.setup`), and steps.

A run folder holds::

    config.json        the resolved training and model configuration, versions, seed, git revision
    log.jsonl          one JSON record per logged step (loss parts, learning rate, images/s)
    last.ckpt          the full training state (model, optimiser, schedule, step, RNG), atomically
    model.ckpt         the final weights alone, for `ssd eval` / `ssd detect` (last.ckpt works there too)
    best.ckpt          with --val: the weights of the best evaluation so far, its mAP and step (`ssd info`)
    tb/                TensorBoard logs (when the tensorboard package is installed)

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel: ``batch_size`` is the
global batch, split over the processes; the positive count that normalises the loss is summed over all of them,
so the gradients equal a single process's on the same global batch.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ssd.checkpoint import save_checkpoint
from ssd.errors import TrainingStopped
from ssd.training.config import Schedule, TrainConfig, resolve_schedule
from ssd.training.log import RunLog, git_revision, versions
from ssd.training.setup import (
    DataStream,
    Runtime,
    build_model,
    load_train_index,
    make_runtime,
    make_train_step,
    prepare_run_dir,
    resolve_run,
    seed_everything,
)
from ssd.training.state import NonFiniteGuard, RunState, TrainClock, make_scheduler


@dataclass
class TrainResult:
    """Where a run's results are and how it ended."""

    run_dir: Path
    step: int
    checkpoint: Path
    model_path: Path | None
    device: str = ""  # the device it trained on, e.g. "cuda:0"
    schedule: Schedule | None = None  # the schedule resolved for the batch size, as the log's first lines say it
    last_loss: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    skipped_images: int = 0
    stopped: bool = False  # by the time budget
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, log: Callable[[str], None] = print, resume_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns where the results are.

    With ``cfg.resume`` the saved run's configuration is used, updated by ``resume_overrides`` (only the options
    in :data:`~ssd.training.config.RESUME_OVERRIDABLE`, e.g. more iterations or other workers).

    Raises :class:`~ssd.errors.TrainingStopped` after saving on Ctrl-C, :class:`~ssd.errors.TrainingDiverged`
    on a non-finite loss or gradient (after ``max_nonfinite`` skipped steps) or non-finite weights, and
    :class:`~ssd.errors.SSDError` on bad input.
    """
    cfg, resume_ckpt = resolve_run(cfg, resume_overrides)
    run_dir = prepare_run_dir(cfg, resumed=resume_ckpt is not None)
    runtime = make_runtime(cfg)
    schedule = resolve_schedule(cfg)
    seed_everything(cfg.seed)
    index = load_train_index(cfg)
    built = build_model(cfg, tuple(index.classes), resume_ckpt, runtime)
    step_fn = make_train_step(built.model, cfg, schedule.lr, runtime)
    clock = TrainClock(cfg.max_seconds, runtime.device if runtime.dist.enabled else None)
    scheduler = make_scheduler(step_fn.optimizer, schedule, cfg, clock)
    guard = NonFiniteGuard(runtime.device, cfg.max_nonfinite, run_dir / "last.ckpt", log if runtime.dist.is_main else _quiet)
    state = RunState(cfg, built.model, step_fn, scheduler, clock, guard, runtime.dist.is_main)
    start_step = state.restore(resume_ckpt) if resume_ckpt is not None else 0
    data = DataStream(cfg, index, built.config, runtime)
    from ssd.data.index import DatasetIndex

    val_index = DatasetIndex.load(cfg.val_data) if cfg.val_data else None
    result = TrainResult(run_dir, start_step, run_dir / "last.ckpt", None, device=str(runtime.device), schedule=schedule)
    with RunLog(run_dir, runtime.dist.is_main, log, append=resume_ckpt is not None, total=schedule.iterations,
                initial=start_step, progress=cfg.progress, tensorboard=cfg.tensorboard) as run_log:  # fmt: skip
        run_log.write_config({
            "train_config": cfg.to_dict(), "model_config": built.config.to_dict(), "schedule": dataclasses.asdict(schedule),
            "versions": versions(), "git_revision": git_revision(), "world_size": runtime.dist.world_size,
            "amp": runtime.amp, "channels_last": runtime.channels_last, "command": sys.argv,
            "cpu_threads": torch.get_num_threads(),
        })  # fmt: skip
        for note in built.notes:
            run_log.note(note)
        run_log.note(schedule.describe(cfg.batch_size * cfg.accumulate))
        for warning in schedule.warnings():
            run_log.note("warning: " + warning)
        run_log.note(f"training {built.config.preset} on {len(index)} images, {built.config.num_classes - 1} classes, "
                     f"device {runtime.device}{f' x {runtime.dist.world_size}' if runtime.dist.enabled else ''}"
                     f"{_thread_note(runtime.device)}, "
                     f"amp {runtime.amp}; run folder {run_dir}")  # fmt: skip
        result.step = _run_steps(cfg, schedule, runtime, state, data, run_log, val_index, result, start_step)
    state.save(result.step)
    if runtime.dist.is_main:
        result.model_path = save_checkpoint(built.model, run_dir / "model.ckpt")
        if result.skipped_images:
            log(f"{result.skipped_images} unreadable images were replaced during training (see warnings)")
    return result


def _thread_note(device: torch.device) -> str:
    """On the CPU, the thread count for the log, and why it is below the CPUs this process may use."""
    if device.type != "cpu":
        return ""
    from ssd.device import available_cpus

    n, cpus = torch.get_num_threads(), available_cpus()
    why = f" of {cpus} CPUs: the others were busy at the start; OMP_NUM_THREADS=N sets it" if n < cpus else ""
    return f" ({n} thread{'s' if n > 1 else ''}{why})"


def _quiet(_: str) -> None:
    pass


def _run_steps(cfg, schedule, runtime: Runtime, state: RunState, data: DataStream, run_log: RunLog, val_index,
               result: TrainResult, step: int) -> int:  # fmt: skip
    """Step from ``step`` to the schedule's end (or the time budget); returns the last step. Ctrl-C stops at the
    next step boundary, saved (:class:`~ssd.errors.TrainingStopped`); a second Ctrl-C stops at once, unsaved."""
    stream = data.batches(step)
    window, first_step = _Window(), step  # the first step is logged too: the loss shows from the start
    estimate_pending = True  # the remaining time, said once from the first window after the first step
    state.clock.start(state.clock.before)
    try:
        with _StopRequest() as stop:
            while step < schedule.iterations:
                if _agreed(stop.requested, runtime):
                    raise _StopAtBoundary
                micro = [_next_batch(stream, stop, result) for _ in range(cfg.accumulate)]
                window.images += sum(b.images.shape[0] for b in micro) * runtime.dist.world_size
                out = state.step_fn(micro)
                state.guard.record(out.skipped, step + 1)
                state.clock.tick()  # saved in last.ckpt: a resumed run continues the count
                state.scheduler.step()
                step += 1
                run_log.advance()
                if step % cfg.log_every == 0 or step == schedule.iterations or step == first_step + 1:
                    state.guard.check(step)
                    values = dict(zip(out.loss._fields, torch.stack(list(out.loss)).tolist()))
                    speed = window.rate()
                    result.last_loss, result.images_per_second = values, speed
                    run_log.record_step(step, values, state.step_fn.optimizer.param_groups[0]["lr"], speed, float(out.grad_norm))
                    if estimate_pending and step - first_step > 1 and step < schedule.iterations:
                        run_log.note(remaining_time_note(schedule.iterations - step, cfg, speed, state.clock))
                        estimate_pending = False
                if step % schedule.checkpoint_every == 0 and step < schedule.iterations:
                    state.save(step)
                if val_index is not None and schedule.eval_every and step % schedule.eval_every == 0:
                    result.evaluations.append(_evaluate(state, val_index, step, run_log, runtime))
                if state.clock.exhausted:
                    run_log.note(f"time budget of {cfg.max_seconds:g} s reached at step {step}")
                    result.stopped = True
                    break
    except _StopAtBoundary:
        # Between steps: the model, optimiser and step counter agree, so the state can be saved.
        run_log.close()
        try:
            state.save(step)
        except KeyboardInterrupt:  # a second Ctrl-C while saving: the write is abandoned whole (atomic)
            raise TrainingStopped(
                f"interrupted again while saving step {step}: not saved; the last checkpoint is "
                f"{result.checkpoint if result.checkpoint.exists() else 'not written yet'}, intact"
            ) from None
        raise TrainingStopped(
            f"interrupted at step {step}; state saved to {result.checkpoint}. Continue with: ssd train --resume {result.checkpoint}"
        ) from None
    except KeyboardInterrupt:
        # A second Ctrl-C, possibly in the middle of a step: the last checkpoint on disk is left as it is.
        raise TrainingStopped(
            f"interrupted at step {step} without saving (second Ctrl-C); the last checkpoint is "
            f"{result.checkpoint if result.checkpoint.exists() else 'not written yet'}"
        ) from None
    finally:
        stream.close()  # ends the loader iterator and its worker processes
    return step


def remaining_time_note(steps_left: int, cfg: TrainConfig, images_per_second: float, clock: TrainClock) -> str:
    """How long the rest of the run takes at the measured speed (or what is left of its time budget): said once,
    from the first log window after the first step, so the start-up's slower first step is not in it."""
    at_speed = steps_left * cfg.batch_size * cfg.accumulate / images_per_second if images_per_second > 0 else float("inf")
    left = max(0.0, cfg.max_seconds - clock.spent) if cfg.max_seconds is not None else float("inf")
    if left < at_speed:
        steps = int(steps_left * left / at_speed)
        return (f"at {images_per_second:.1f} images/s the time budget ends the run in about {format_duration(left)}, "
                f"after about {steps} of the remaining {steps_left} iterations")
    return (f"at {images_per_second:.1f} images/s the remaining {steps_left} iterations take about "
            f"{format_duration(at_speed)}, not counting evaluations and checkpoint writes")


def format_duration(seconds: float) -> str:
    """``seconds`` as a person reads it: '45 s', '7 min 30 s', '2 h 05 min'."""
    if seconds != seconds or seconds == float("inf"):
        return "an unknown time"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Window:
    """Images seen since the last log record, and the rate over that time."""

    def __init__(self) -> None:
        self.images, self.start = 0, time.perf_counter()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        speed = self.images / elapsed if elapsed > 0 else 0.0
        self.images, self.start = 0, time.perf_counter()
        return speed


def _next_batch(stream, stop: "_StopRequest", result: TrainResult):
    try:
        batch = next(stream)
    except RuntimeError:
        if stop.requested:  # a worker died of the same Ctrl-C
            raise _StopAtBoundary from None
        raise
    result.skipped_images += len(batch.failed)
    return batch


def _agreed(flag: bool, runtime: Runtime) -> bool:
    """True on every rank when it is true on any (so all ranks leave the loop at the same step)."""
    if not runtime.dist.enabled:
        return flag
    t = torch.tensor(float(flag), device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _evaluate(state: RunState, index, step: int, run_log: RunLog, runtime: Runtime) -> dict[str, Any]:
    """Evaluate on rank 0 while the others wait, keeping best.ckpt; the model goes back to training mode."""
    from ssd.evaluate import evaluate

    if not runtime.dist.is_main:
        dist.barrier()  # wait for rank 0's evaluation before the next step's collectives
        return {}
    m_ap = evaluate(state.model, index).voc.mAP
    state.model.train()
    best = state.keep_if_best(m_ap, step, index.name)
    run_log.record_evaluation(step, index.name, m_ap, best)
    if runtime.dist.enabled:
        dist.barrier()
    return {"step": step, "eval_mAP": m_ap, "best": best}


class _StopRequest:
    """SIGINT sets a flag; the loop saves at the next step boundary and stops. A second SIGINT stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequest":
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _StopAtBoundary(Exception):
    """Raised at a step boundary after Ctrl-C: the state there is consistent and is saved."""
