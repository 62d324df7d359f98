"""I/O failures are messages: a disk that fills up during a save, a folder that refuses a write, a second Ctrl-C
while the state is being saved. Each ends in one line on stderr, a non-zero exit, no traceback, no temporary file
left behind, and the last checkpoint on disk intact (byte for byte)."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import ssd
from ssd.cli import main
from test_engine import REPO, _cli, _train_args, tiny_data  # noqa: F401  (a fixture)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_run(data: Path, run: Path) -> str:
    first = _cli(*_train_args(data, run, 2))
    assert first.wait(timeout=180) == 0, first.stderr.read()
    return _digest(run / "last.ckpt")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("ssd:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.slow  # trains a small model in a subprocess
def test_a_disk_that_fills_up_during_a_save_keeps_the_last_checkpoint(tiny_data, tmp_path):  # noqa: F811
    """The file-size limit (RLIMIT_FSIZE) makes every write past half a checkpoint fail, as a full disk would."""
    run = tmp_path / "run"
    before = _first_run(tiny_data, run)
    limit = (run / "last.ckpt").stat().st_size // 2

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["train", "--resume", str(run / "last.ckpt"), "--iterations", "4", "--checkpoint-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "ssd.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=small_disk)  # fmt: skip
    _, err = proc.communicate(timeout=180)
    line = _one_error_line(err)
    assert proc.returncode == 2
    assert line.startswith("ssd: error: cannot save step 3: ") and "File too large" in line
    assert line.endswith(f"{run / 'last.ckpt'} is the previous one, intact")
    assert _digest(run / "last.ckpt") == before and not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_save_leaves_the_last_checkpoint(tiny_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    before = _first_run(tiny_data, run)
    proc = _cli("train", "--resume", str(run / "last.ckpt"), "--iterations", "10000",
                env_extra={"SSD_FAULT_PAUSE_CHECKPOINT_WRITE": "60"})  # fmt: skip
    lines_before = (run / "log.jsonl").read_text().count("\n")
    deadline = time.time() + 120
    while time.time() < deadline and (run / "log.jsonl").read_text().count("\n") <= lines_before:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # stop at the next step boundary, and save
    while time.time() < deadline and not list(run.glob(".last.ckpt.*.tmp")):
        time.sleep(0.1)
    assert list(run.glob(".last.ckpt.*.tmp")), "the save never started"
    # The file written whole, the save paused before its rename: the fault injection marks its pause. (Sent while
    # torch.save was still writing, the signal did not stop the save in two CI rehearsals: it completed, after the
    # whole pause.)
    while time.time() < deadline and not (run / "last.ckpt.paused").exists():
        time.sleep(0.1)
    assert (run / "last.ckpt.paused").exists(), "the save never paused"
    proc.send_signal(signal.SIGINT)  # again, in the middle of the paused save
    _, err = proc.communicate(timeout=60)
    line = _one_error_line(err)
    assert proc.returncode == 130
    assert "interrupted again while saving step" in line and line.endswith(f"{run / 'last.ckpt'}, intact")
    assert _digest(run / "last.ckpt") == before and not list(run.glob(".*.tmp")) and not list(run.glob("*.paused"))


def test_a_folder_that_refuses_writes_is_a_message(tmp_path, monkeypatch, capsys):
    """A read-only folder (simulated: this suite may run as root, whom permissions do not stop). ``ssd data``
    stops with ``ssd: error: <folder>: Permission denied`` (exit 2); ``ssd detect`` reports each file it could not
    write and goes on with the others (exit 1)."""
    import json

    import ssd.paths

    checkpoint = ssd.save_checkpoint(ssd.build_model("small", 2), tmp_path / "m.ckpt")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48), "gray").save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "out"

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(ssd.paths.tempfile, "mkstemp", refuse)
    rc = main(["data", "coco", "--json", str(tmp_path / "ann.json"), "--images", str(tmp_path / "images"),
               "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and _one_error_line(err) == f"ssd: error: {out}: Permission denied"
    rc = main(["detect", str(checkpoint), str(tmp_path / "images"), "--out", str(out / "det"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"skipped {tmp_path / 'images' / 'a.png'}: cannot write {out / 'det' / 'a.png'}: Permission denied" in err


@pytest.mark.slow  # a fresh interpreter
def test_a_checkpoint_write_that_runs_out_of_room_is_an_oserror_at_any_point(tmp_path):
    """torch.save reports a failed write as a RuntimeError naming no cause; the writer gives back the OSError behind
    it (here EFBIG from the file-size limit, ENOSPC on a full disk) wherever the write stops, and leaves no file."""
    size = ssd.save_checkpoint(ssd.build_model("small", 2), tmp_path / "probe.ckpt").stat().st_size
    code = f"""
import resource, signal, sys, errno
from pathlib import Path
import ssd
from ssd.checkpoint import atomic_torch_save, make_checkpoint
model = ssd.build_model("small", 2)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
for fraction in (0.9, 0.5, 0.33, 0.1, 0.01):
    limit = int({size} * fraction)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        atomic_torch_save(make_checkpoint(model), Path({str(tmp_path)!r}) / f"m{{fraction}}.ckpt")
        print("WROTE", fraction)
    except OSError as err:
        print("OSERROR", fraction, errno.errorcode.get(err.errno))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:5] == [f"OSERROR {f} EFBIG" for f in (0.9, 0.5, 0.33, 0.1, 0.01)], out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.ckpt"]
