"""Where a training run reports: ``config.json``, ``log.jsonl``, TensorBoard, the progress bar and the user's messages.

:class:`RunLog` owns all of them. Only the main process writes (under torchrun the others only pass messages
on); as a context manager it closes the files, the TensorBoard writer and the bar on every exit path.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch


def versions() -> dict[str, str]:
    """The versions and the device a run's results depend on, for its records."""
    import torchvision

    from ssd.version import __version__

    return {
        "ssd": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "none",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def git_revision() -> str | None:
    """The commit of the source tree this package runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class RunLog:
    """The run's records and progress display.

    Args:
        run_dir: the run folder. main: whether this process writes (rank 0).
        echo: where messages for the user go (``ssd train`` prints them to stderr).
        append: continue ``log.jsonl`` (a resumed run) instead of starting it afresh.
        total, initial: the bar's length and starting step (``progress``: show it).
        tensorboard: write TensorBoard logs when the package is installed (a note says when it is not).
    """

    def __init__(self, run_dir: Path, main: bool, echo: Callable[[str], None], *, append: bool, total: int,
                 initial: int, progress: bool, tensorboard: bool) -> None:  # fmt: skip
        self.run_dir, self.main, self.echo = run_dir, main, echo
        self.pending: list[str] = []
        self.writer = self.bar = self.file = None
        if not main:
            return
        self.file = open(run_dir / "log.jsonl", "a" if append else "w")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                self.pending.append("TensorBoard logs off: `pip install tensorboard` to get them")
        if progress:
            from ssd.progress import progress as progress_bar

            self.bar = progress_bar(total=total, initial=initial, desc="train", unit="it")

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def note(self, message: str) -> None:
        """A message for the user (main process only)."""
        if self.main:
            self.echo(message)

    def write_config(self, record: dict[str, Any]) -> None:
        """``config.json``: what the run depends on; then the notes gathered while setting up."""
        if not self.main:
            return
        (self.run_dir / "config.json").write_text(json.dumps(record, indent=2))
        for message in self.pending:
            self.echo(message)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record_step(self, step: int, values: dict[str, float], lr: float, speed: float, grad_norm: float) -> None:
        """One log record: the loss parts, the rate, images/s over the window, the gradient norm."""
        if not self.main:
            return
        self._write({"step": step, **values, "lr": lr, "images_per_s": speed, "grad_norm": grad_norm})
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("lr", lr, step)
            self.writer.add_scalar("images_per_s", speed, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['total']:.3f}", loc=f"{values['loc']:.3f}", cls=f"{values['cls']:.3f}",
                                 lr=f"{lr:.2e}", img_s=f"{speed:.0f}")  # fmt: skip

    def record_evaluation(self, step: int, name: str, m_ap: float, best: bool = False) -> None:
        if not self.main:
            return
        self.echo(f"step {step}: {name} VOC07 mAP {m_ap:.4f}" + (" (best so far: best.ckpt)" if best else ""))
        self._write({"step": step, "eval_mAP": m_ap, "best": best})
        if self.writer is not None:
            self.writer.add_scalar("eval/mAP", m_ap, step)

    def _write(self, record: dict[str, Any]) -> None:
        assert self.file is not None
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
        self.bar = self.writer = self.file = None
