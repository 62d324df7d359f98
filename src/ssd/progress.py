"""Progress display for long work, right for where it goes: a live tqdm bar on a terminal, one plain line every
``interval`` seconds (and one at the end of work that lasted that long) when the output is a file or a pipe, so a
log never fills with carriage-return updates.

    bar = progress(total=1200, desc="train", unit="it")
    bar.update(1); bar.set_postfix(loss="3.21"); bar.close()

Both kinds take the calls of a tqdm bar that the package uses: ``update``, ``set_postfix``, ``close`` and use as a
context manager. ``SSD_PROGRESS_INTERVAL`` (seconds, default 10) sets the plain lines' spacing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0, file: TextIO | None = None,
             leave: bool = True, enabled: bool = True, unit_scale: bool = False) -> Any:  # fmt: skip
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainProgress`; a bar that shows
    nothing when not ``enabled``."""
    file = file if file is not None else sys.stderr
    if not enabled:
        return PlainProgress(total, desc, unit, initial, file, silent=True)
    if _is_terminal(file):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=leave,
                    unit_scale=unit_scale)  # fmt: skip
    return PlainProgress(total, desc, unit, initial, file)


def iterate(items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """``items``, with a :func:`progress` display advancing by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit, enabled=enabled, leave=False) as bar:
        for item in items:
            yield item
            bar.update(1)


def message(bar: Any, text: str, file: TextIO | None = None) -> None:
    """Print a line for the user without breaking a live bar (tqdm's ``write`` where ``bar`` is one)."""
    file = file if file is not None else sys.stderr
    write = getattr(type(bar), "write", None)
    if write is not None and not isinstance(bar, PlainProgress):
        write(text, file=file)
    else:
        print(text, file=file, flush=True)


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class PlainProgress:
    """``desc: 120/1200 it (10%), 66.0 it/s, about 16 s left, loss=3.21``, one line every ``interval`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, file: TextIO,
                 interval: float | None = None, silent: bool = False) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.file, self.silent = total, desc, unit, file, silent
        self.n = self.start_n = initial
        self.interval = interval if interval is not None else float(os.environ.get("SSD_PROGRESS_INTERVAL", "10"))
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False
        self.written = False
        self.written_state: tuple[int, str] | None = None  # count and postfix on the last line written

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._write()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        """The last line, for work that lasted at least one interval (quick work stays quiet in a log)."""
        if not self.closed:
            self.closed = True
            long_work = self.written or time.monotonic() - self.start >= self.interval
            if long_work and self.written_state != (self.n, self.postfix):  # never the same line twice
                self._write()

    def _write(self) -> None:
        if self.silent:
            return
        self.written, self.written_state = True, (self.n, self.postfix)
        now = time.monotonic()
        self.last = now
        elapsed = now - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"about {(self.total - self.n) / rate:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: {', '.join(parts)}", file=self.file, flush=True)
