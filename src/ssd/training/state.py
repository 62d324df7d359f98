"""A run's resumable state: its clock, its random generators, the skipped-step guard, and ``last.ckpt``.

``last.ckpt`` holds the model, the optimiser, the schedule, the fp16 scaler, the step, the training time spent and
the RNG states, written atomically, and only from a state worth resuming: no more skipped steps than allowed and
finite weights (:class:`RunState`). A resumed run restores all of it and continues bit for bit on the CPU
(``tests/test_engine.py``; GPU kernels are not bit-reproducible). With ``--val``,
``best.ckpt`` holds the weights of the best evaluation so far (its mAP, step and split under ``eval``); the best
figure travels in ``last.ckpt`` so that a resumed run only replaces best.ckpt with a better one.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ssd.checkpoint import CheckpointError, atomic_torch_save, make_checkpoint, save_checkpoint
from ssd.errors import SSDError, TrainingDiverged, os_error_message
from ssd.training.config import Schedule, TrainConfig
from ssd.training.step import StepHealth, TrainStep, all_finite


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(state["python"]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainClock:
    """Training time of the run: what earlier starts spent (from the checkpoint) plus this start's. Under torchrun
    with a time budget, the processes agree on it (their maximum) at every tick, so all stop at the same step with
    the same learning rate."""

    def __init__(self, budget: float | None, agree_on: torch.device | None = None) -> None:
        self.budget = budget
        self.before = self.spent = 0.0
        self._agree_on = agree_on if agree_on is not None and budget is not None else None
        self._start = time.perf_counter()

    def start(self, before: float) -> None:
        self.before = self.spent = before
        self._start = time.perf_counter()

    def tick(self) -> float:
        spent = self.before + time.perf_counter() - self._start
        if self._agree_on is not None:
            t = torch.tensor(spent, dtype=torch.float64, device=self._agree_on)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            spent = float(t.item())
        self.spent = spent
        return spent

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.spent >= self.budget


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, cfg: TrainConfig, clock: TrainClock):
    """The learning-rate schedule; a cosine with a time budget follows whichever ends first, the iterations or the
    clock."""

    def factor(step: int) -> float:
        progress = None
        if cfg.max_seconds is not None and cfg.lr_decay == "cosine":
            spent = clock.spent / cfg.max_seconds if cfg.max_seconds > 0 else 1.0
            progress = max(step / schedule.iterations, spent)
        return schedule.lr_factor(step, progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteGuard:
    """Skipped steps, counted on the device (:class:`~ssd.training.step.StepHealth`) and read when the loop logs
    or saves: past ``max_nonfinite`` the run stops; below it, each new skip is reported once."""

    def __init__(self, device: torch.device, max_nonfinite: int, last_path: Path, note: Callable[[str], None]) -> None:
        self.health = StepHealth(device)
        self.max_nonfinite, self.last_path, self.note = max_nonfinite, last_path, note
        self.reported = 0

    def record(self, skipped: torch.Tensor, step: int) -> None:
        self.health.record(skipped, step)

    def check(self, at_step: int) -> None:
        count, first = self.health.read()
        if count > self.max_nonfinite:
            raise TrainingDiverged(
                f"the loss or gradient became non-finite at step {first}; stopped at step {at_step}. The last good "
                f"checkpoint is {self.last_path if self.last_path.exists() else 'not written yet'} "
                f"(try a lower --lr, --grad-clip, or --amp none)"
            )
        if count > self.reported:
            self.note(f"by step {at_step}: {count} step(s) with a non-finite loss or gradient skipped "
                      f"({count}/{self.max_nonfinite} allowed), the first at step {first}")  # fmt: skip
            self.reported = count


class RunState:
    """Saves and restores everything a run needs to continue: see the module docstring."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, step: TrainStep, scheduler, clock: TrainClock,
                 guard: NonFiniteGuard, is_main: bool) -> None:  # fmt: skip
        self.cfg, self.model, self.step_fn, self.scheduler = cfg, model, step, scheduler
        self.clock, self.guard, self.is_main = clock, guard, is_main
        self.best_eval: dict[str, Any] | None = None  # {"mAP", "step", "split"} of best.ckpt, kept across resumes

    def restore(self, ckpt: dict[str, Any]) -> int:
        """Load the training state of ``ckpt`` (the model is loaded already); returns the step it was saved at."""
        try:
            self.step_fn.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt:
                self.step_fn.scaler.load_state_dict(ckpt["scaler"])
            step = int(ckpt["step"])
            self.clock.start(float(ckpt.get("train_seconds", 0.0)))
            set_rng_state(ckpt["rng"])
            self.best_eval = ckpt.get("best_eval")
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"--resume {self.cfg.resume}: the training state is incomplete or does not fit: {err}") from err
        return step

    def save(self, at_step: int) -> None:
        """Write last.ckpt atomically, from a state worth resuming only (else :class:`TrainingDiverged`)."""
        self.guard.check(at_step)
        if not self.is_main:
            return
        if not all_finite(self.model.parameters()):
            raise TrainingDiverged(
                f"the weights became non-finite by step {at_step}; stopped. The last good checkpoint is "
                f"{self.guard.last_path if self.guard.last_path.exists() else 'not written yet'} "
                "(try a lower --lr or --grad-clip)"
            )
        extra = {
            "optimizer": self.step_fn.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": at_step,
            "train_seconds": self.clock.spent,
            "train_config": self.cfg.to_dict(),
            "rng": rng_state(),
        }
        if self.step_fn.scaler.is_enabled():
            extra["scaler"] = self.step_fn.scaler.state_dict()
        if self.best_eval is not None:
            extra["best_eval"] = self.best_eval
        path = self.guard.last_path
        try:
            atomic_torch_save(make_checkpoint(self.model, **extra), path)
        except OSError as err:  # a full disk, a folder made read-only: the file on disk is the previous one, whole
            kept = f"{path} is the previous one, intact" if path.exists() else "no checkpoint was written yet"
            raise SSDError(f"cannot save step {at_step}: {os_error_message(err, path)}; {kept}") from err

    def keep_if_best(self, m_ap: float, step: int, split: str) -> bool:
        """Write best.ckpt (the weights, with ``eval``: mAP, step and split) when ``m_ap`` beats every earlier
        evaluation of the run; returns whether it did. Rank 0 only."""
        if not self.is_main or (self.best_eval is not None and m_ap <= self.best_eval["mAP"]):
            return False
        best, path = {"mAP": float(m_ap), "step": int(step), "split": split}, self.guard.last_path.with_name("best.ckpt")
        try:
            save_checkpoint(self.model, path, eval=best)
        except OSError as err:
            raise SSDError(f"cannot save the best weights at step {step}: {os_error_message(err, path)}") from err
        self.best_eval = best
        return True
