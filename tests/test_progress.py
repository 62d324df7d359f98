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
    assert out.getvalue() == ""  # work shorter than one interval stays quiet
    bar = PlainProgress(10, "eval", "img", 0, out, interval=0.0)
    bar.update(10)
    bar.close()
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("eval: 10/10 img (100%)")  # not repeated


def test_a_terminal_gets_tqdm():
    from tqdm import tqdm

    bar = progress(total=5, desc="x", file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_iterate_and_messages_in_a_log():
    from ssd.progress import iterate, message

    out = io.StringIO()
    bar = progress(total=3, desc="data", file=out)
    message(bar, "skipped a.jpg: truncated", file=out)
    assert out.getvalue() == "skipped a.jpg: truncated\n"
    assert list(iterate([1, 2, 3], "index", enabled=False)) == [1, 2, 3]


def test_a_disabled_bar_prints_nothing():
    out = io.StringIO()
    with progress(total=10, desc="x", file=out, enabled=False) as bar:
        bar.update(10)
    assert out.getvalue() == ""
