"""Progress display: a live bar on a terminal, plain lines every few seconds in a file or pipe."""

from __future__ import annotations

import io

from ssd.progress import PlainProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_plain_lines_and_no_carriage_returns():
    out = io.StringIO()
    bar = progress(total=100, desc="train", file=out)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.0  # a line at every update
    for _ in range(3):
        bar.update(10)
    bar.set_postfix(loss="3.21")
    bar.close()
    bar.close()  # closing twice writes once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[0].startswith("train: 10/100 it (10%), ") and "s left" in lines[0]
    assert lines[-1].startswith("train: 30/100 it (30%)") and lines[-1].endswith("loss=3.21")


def test_lines_are_spaced_by_the_interval():
    out = io.StringIO()
    bar = PlainProgress(1000, "eval", "img", 0, out, interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    assert out.getvalue().count("\n") == 1 and "1000/1000 img (100%)" in out.getvalue()


def test_a_terminal_gets_tqdm():
    from tqdm import tqdm

    bar = progress(total=5, desc="x", file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()
