"""Videos and streams: ``ssd detect`` on videos (annotated MP4, JSON Lines), ``Detector.stream``, the frame
choices (--every, --start, --duration, --max-frames), streams over HTTP, Ctrl-C, and every kind of bad input.

Videos are written here with PyAV; frame counts, indices and times are checked against what was written. The
ground-truth test (a trained model on a synthetic video against the same frames as PNG files) is in
tests/test_video_accuracy.py.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd.checkpoint import save_checkpoint
from ssd.cli import main
from ssd.detector import Detector
from ssd.errors import SSDError
from ssd.model import build_model

av = pytest.importorskip("av")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("small")
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight.mul_(0.34)  # a random model that still reports boxes above 0.2
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def detector(checkpoint) -> Detector:
    return Detector.from_checkpoint(checkpoint, device="cpu")


def moving_frames(n: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """A red block moving right over grey, one step per frame: every frame differs."""
    frames = []
    for i in range(n):
        a = np.full((height, width, 3), 90, np.uint8)
        x = 4 + 3 * i
        a[30:80, x : x + 40] = (230, 40, 40)
        frames.append(a)
    return frames


def write_video(path: Path, frames: list[np.ndarray], rate: int = 10, fmt: str | None = None, codec: str = "libx264") -> Path:
    container = av.open(str(path), "w", format=fmt)
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for a in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    return path


def decoded(path: Path) -> tuple[int, tuple[int, int], list[float]]:
    """(frame count, (height, width), presentation times) of a video, by decoding it."""
    with av.open(str(path)) as c:
        times, size = [], None
        for f in c.decode(video=0):
            times.append(float(f.time))
            size = (f.height, f.width)
    return len(times), size, times


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_frames(30))


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


# --- ssd detect on videos ------------------------------------------------------------------------


def test_every_frame_annotated_and_recorded(checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(clip), "--out", str(out), "--json", str(out / "all.json"),
                 "--batch-size", "4"]) == 0  # fmt: skip
    n, size, times = decoded(out / "clip.mp4")
    assert (n, size) == (30, (120, 160))
    assert times == pytest.approx([i / 10 for i in range(30)])
    recs = records(out / "clip.jsonl")
    assert [r["frame"] for r in recs] == list(range(30))
    assert [r["time"] for r in recs] == pytest.approx([i / 10 for i in range(30)])
    assert list(recs[0])[:2] == ["frame", "time"] and (recs[0]["height"], recs[0]["width"]) == (120, 160)
    summary = json.loads((out / "all.json").read_text())
    (video,) = summary["videos"]
    assert (video["frames"], video["processed_frames"], video["frames_jsonl"]) == (30, 30, str(out / "clip.jsonl"))
    assert video["detections"] == sum(len(r["detections"]) for r in recs) > 0
    assert "1 video(s) (30 frames)" in capsys.readouterr().out


def test_the_same_detections_as_the_frames_given_as_images(detector, clip):
    """The video path and the image path agree on the decoded frames: one inference path."""
    results = list(detector.stream(clip, with_frames=True, batch_size=3))
    assert [r.frame for r in results] == list(range(30))
    for r in results[::7]:
        alone = detector(r.image)
        np.testing.assert_allclose(r.detections.boxes, alone.boxes, atol=1e-4)
        np.testing.assert_allclose(r.detections.scores, alone.scores, atol=1e-6)
        assert r.detections.class_names == alone.class_names


def test_every_start_duration_and_max_frames(checkpoint, clip, tmp_path):
    out = tmp_path / "out"
    args = ["detect", str(checkpoint), str(clip), "--out", str(out), "--json", str(out / "d.json")]
    assert main(args + ["--every", "3", "--start", "0.5", "--duration", "2"]) == 0
    recs = records(out / "clip.jsonl")
    assert [r["frame"] for r in recs] == [5, 8, 11, 14, 17, 20, 23]  # frames 5..24, one in three
    assert [r["time"] for r in recs] == pytest.approx([0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.3])
    assert decoded(out / "clip.mp4")[0] == 20  # the frames between are copied, with the last boxes
    assert main(args + ["--max-frames", "4", "--every", "2"]) == 0
    assert [r["frame"] for r in records(out / "clip.jsonl")] == [0, 2, 4, 6]
    assert decoded(out / "clip.mp4")[0] == 7


def test_recognised_by_content_and_mixed_with_images(checkpoint, clip, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "clip.dat").write_bytes(clip.read_bytes())  # a video under an unknown extension, named explicitly
    frames = [Image.fromarray(a) for a in moving_frames(4)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "still.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "movie.MKV").write_bytes(write_video(tmp_path / "m.mkv", moving_frames(5), fmt="matroska").read_bytes())
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(folder), str(folder / "clip.dat"), "--out", str(out),
                 "--json", str(tmp_path / "d.json")]) == 0  # fmt: skip
    assert leftovers(out) == ["anim.jsonl", "anim.mp4", "clip.jsonl", "clip.mp4", "movie.jsonl", "movie.mp4",
                              "still.png", "sub"]  # fmt: skip
    assert decoded(out / "anim.mp4")[0] == 4 and decoded(out / "sub" / "movie.mp4")[0] == 5
    summary = json.loads((tmp_path / "d.json").read_text())
    assert [r["file"] for r in summary["images"]] == [str(folder / "still.png")]
    assert sorted(Path(v["file"]).name for v in summary["videos"]) == ["anim.gif", "clip.dat", "movie.MKV"]


def test_odd_frame_size_keeps_its_size(checkpoint, tmp_path):
    clip = write_video(tmp_path / "odd.mkv", [a[:119, :157] for a in moving_frames(3)], fmt="matroska", codec="ffv1")
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(clip), "--out", str(out)]) == 0
    assert decoded(out / "odd.mp4")[:2] == (3, (119, 157))


# --- streams -------------------------------------------------------------------------------------


@pytest.fixture()
def http_folder(tmp_path):
    """A local HTTP server over ``tmp_path / 'www'``: the stream source (MPEG-TS, which needs no seeking)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_stream_is_a_source(checkpoint, http_folder, tmp_path):
    root, url = http_folder
    write_video(root / "live.ts", moving_frames(12), fmt="mpegts")
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), f"{url}/live.ts?session=1", "--out", str(out), "--json",
                 str(out / "d.json"), "--max-frames", "8"]) == 0  # fmt: skip
    recs = records(out / "live.jsonl")
    assert [r["frame"] for r in recs] == list(range(8))
    # MPEG-TS starts its clock at 1.4 s: times are counted from the stream's start
    assert [r["time"] for r in recs] == pytest.approx([i / 10 for i in range(8)])
    assert decoded(out / "live.mp4")[0] == 8


def test_stream_api_is_lazy_and_stops_its_thread(detector, clip):
    stream = detector.stream(clip, batch_size=2)
    first = next(stream)
    assert (first.frame, first.time, first.image) == (0, 0.0, None)
    assert any(t.name.startswith("ssd-decode") for t in threading.enumerate())
    stream.close()
    assert not any(t.name.startswith("ssd-decode") for t in threading.enumerate()) and stream.video.closed
    with detector.stream(clip) as unread:  # opened, never read, closed: the source is released
        assert not unread.video.closed
    assert unread.video.closed
    with pytest.raises(StopIteration):
        next(unread)


def test_a_password_in_a_url_is_never_shown(checkpoint, tmp_path, capsys):
    port = _free_port()
    out = tmp_path / "out"
    url = f"rtsp://alice:s3cret@127.0.0.1:{port}"
    assert main(["detect", str(checkpoint), url, "--out", str(out), "--json", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err and f"rtsp://***@127.0.0.1:{port}" in err
    summary = (tmp_path / "d.json").read_text()
    assert "s3cret" not in summary and "alice" not in summary


def test_ctrl_c_before_the_first_frame_is_an_interrupt(checkpoint, clip, tmp_path, monkeypatch):
    def interrupted(self, images):
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "run_batch", interrupted)
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(clip), "--out", str(out), "--json", str(out / "d.json")]) == 130
    assert leftovers(out) == ["d.json"]  # no video, no records, no temporary files; the summary says so
    summary = json.loads((out / "d.json").read_text())
    assert summary["videos"] == [] and summary["failed"] == []


# --- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_leaves_a_playable_video_and_complete_records(checkpoint, clip, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    run_batch = Detector.run_batch

    def interrupted(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return run_batch(self, images)

    monkeypatch.setattr(Detector, "run_batch", interrupted)
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(clip), str(clip.parent), "--out", str(out), "--json",
                 str(out / "d.json"), "--batch-size", "4"]) == 130  # fmt: skip
    assert "interrupted" in capsys.readouterr().err
    assert decoded(out / "clip.mp4")[0] == 8  # two batches of four, then Ctrl-C
    assert [r["frame"] for r in records(out / "clip.jsonl")] == list(range(8))
    assert json.loads((out / "d.json").read_text())["videos"][0]["interrupted"] is True
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


# --- bad inputs ----------------------------------------------------------------------------------


def _silent_server():
    """A TCP server that accepts and never answers: a stalled stream."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _zero_frames(path: Path) -> Path:
    container = av.open(str(path), "w", format="matroska")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height = 64, 48
    container.start_encoding()
    container.close()
    return path


def _audio_only(path: Path) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=16000)
    for _ in range(10):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return path


BAD_INPUTS = {
    "not a video": (lambda d, clip: (d / "notes.mp4").write_text("hello " * 100) and d / "notes.mp4",
                    "cannot open as a video"),
    "truncated": (lambda d, clip: (d / "cut.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2]) and d / "cut.mp4",
                  "cannot open as a video"),
    "zero frames": (lambda d, clip: _zero_frames(d / "empty.mkv"), "cannot open as a video"),
    "audio only": (lambda d, clip: _audio_only(d / "sound.m4a"), "no video stream (the file holds: audio)"),
    "unreachable": (lambda d, clip: f"rtsp://127.0.0.1:{_free_port()}/live", "Connection refused"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_video_inputs(case, checkpoint, clip, tmp_path, capsys):
    make, reason = BAD_INPUTS[case]
    source = make(tmp_path, clip)
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(source), "--out", str(out), "--json", str(tmp_path / "d.json"),
                 "--timeout", "2"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"skipped {source}" in err and reason in err, err
    assert leftovers(out) == []  # nothing that looks complete, no temporary files
    assert json.loads((tmp_path / "d.json").read_text())["failed"][0]["file"] == str(source)


def test_a_stalled_stream_fails_after_the_timeout(detector, tmp_path):
    import time

    server = _silent_server()
    try:
        t0 = time.perf_counter()
        with pytest.raises(SSDError, match=r"no data within 1 s \(--timeout\)"):
            detector.stream(f"http://127.0.0.1:{server.getsockname()[1]}/live.ts", timeout=1.0)
        assert time.perf_counter() - t0 < 10
    finally:
        server.close()


def test_output_folder_that_is_a_file(checkpoint, clip, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["detect", str(checkpoint), str(clip), "--out", str(tmp_path / "taken")]) == 2
    assert "--out" in capsys.readouterr().err


def test_video_options_are_checked(checkpoint, clip, tmp_path, capsys):
    for bad in (["--every", "0"], ["--start", "-1"], ["--duration", "0"], ["--timeout", "nan"], ["--max-frames", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(["detect", str(checkpoint), str(clip), "--out", str(tmp_path / "o")] + bad)
        assert exit_.value.code == 2
        assert bad[0] in capsys.readouterr().err
    with pytest.raises(SSDError, match="every: must be a whole number >= 1"):
        Detector.from_checkpoint(checkpoint, device="cpu").stream(clip, every=0)
    assert not (tmp_path / "o").exists()


def test_a_missing_file_is_not_taken_for_a_stream(detector, tmp_path):
    with pytest.raises(SSDError, match="no such file"):
        detector.stream(tmp_path / "nothing.mp4")


def test_the_json_summary_cannot_be_a_videos_record_file(checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(clip), "--out", str(out), "--json", str(out / "clip.jsonl")]) == 2
    assert "--json" in capsys.readouterr().err and not out.exists()
