"""Memory is bounded by what the limits say, whatever the input: small hostile files are refused before they
cost memory. Each attack runs in a fresh interpreter that measures the growth of its resident memory over the
work alone: after the imports (torch alone is several hundred MiB, more while it loads), Linux's peak counter
is reset (``/proc/self/clear_refs``) and the work's peak (``VmHWM``) is compared with the memory held before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from ssd import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint

measures_memory = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak counter")

IMPORTS = """
import sys, ssd, ssd.checkpoint, ssd.model, ssd.data.index
def _kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
"""
RESET = """
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size restarts from the current one
_START = _kib("VmRSS")
"""
REPORT = "\nprint('GROWTH_MIB', (_kib('VmHWM') - _START) / 1024)\n"
MIB = 1024 * 1024
pytestmark = pytest.mark.slow  # each attack runs in a fresh interpreter


def _growth_mib(code: str, setup: str = "") -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter after the imports and ``setup``; how many MiB its resident memory grew
    at its peak over what it held before ``code``, and its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    program = IMPORTS + textwrap.dedent(setup) + RESET + textwrap.dedent(code) + REPORT
    out = subprocess.run([sys.executable, "-c", program],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    growth = float(out.stdout.rsplit("GROWTH_MIB", 1)[1])
    print(f"memory growth {growth:.0f} MiB")
    return growth, out.stdout


def _expect_refusal(call: str, match: str) -> str:
    """Code that runs ``call``, expects ssd's error naming ``match``, and prints it."""
    return f"""
        try:
            {call}
        except ssd.SSDError as e:
            assert {match!r} in str(e), str(e)
            print("REFUSED", e)
        else:
            sys.exit("not refused")
    """


def _bomb(path: Path, gib: int) -> Path:
    """A torch zip file of a few MiB holding one ``gib`` GiB tensor of zeros, deflated: the pickle declares the
    full size (as a real tensor's would), so torch would allocate and inflate all of it."""
    n = 77  # a size whose pickle opcode (BININT1 77, "KM") is easy to find and widen
    torch.save({"format": "ssd-checkpoint", "x": torch.zeros(n, dtype=torch.uint8)}, path)
    with zipfile.ZipFile(path) as zin:
        entries = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    big = b"J" + (gib << 30).to_bytes(4, "little")  # BININT
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for name, data in entries:
            if name.endswith("/data/0"):
                with zout.open(name, "w", force_zip64=True) as f:
                    for _ in range(gib * 64):
                        f.write(bytes(16 * MIB))
            else:
                zout.writestr(name, data.replace(b"KMtq", big + b"tq").replace(b"KM\x85", big + b"\x85"))
    return path


@measures_memory
def test_a_compressed_checkpoint_that_inflates_is_refused_unread(tmp_path):
    bomb = _bomb(tmp_path / "bomb.ckpt", gib=1)
    assert bomb.stat().st_size < 8 * MIB
    growth, out = _growth_mib(_expect_refusal(f"ssd.load_checkpoint({str(bomb)!r})", "declare"))
    assert "REFUSED" in out and growth < 128, growth


@measures_memory
def test_a_configuration_larger_than_its_weights_is_refused_before_building(tmp_path):
    ckpt = torch.load(save_checkpoint(build_model("small", 2), tmp_path / "small.ckpt"), weights_only=True)
    ckpt["config"].update(image_size=2048, fc_channels=16384)  # in bounds, but tens of GiB of weights
    torch.save(ckpt, tmp_path / "huge.ckpt")
    growth, out = _growth_mib(_expect_refusal(f"ssd.load_model({str(tmp_path / 'huge.ckpt')!r})", "do not fit"))
    assert "REFUSED" in out and growth < 128, growth


@pytest.mark.parametrize(
    "change, match",
    [
        ({"image_size": 10**6}, "image_size must be an integer from 32 to 4096"),
        ({"class_names": [f"c{i}" for i in range(20_000)]}, "number of classes"),
        ({"fc_channels": 10**9}, "fc_channels"),
        ({"std": [0.2, 0.0, 0.2]}, "std must hold finite positive numbers"),
        ({"mean": [float("nan"), 0.0, 0.0]}, "mean must hold finite numbers"),
        ({"extras": [{"mid_channels": 8, "out_channels": 8, "kernel_size": 99}] * 4}, "kernel_size"),
    ],
)
def test_configurations_out_of_bounds_are_refused_in_one_line(tmp_path, change, match):
    ckpt = torch.load(save_checkpoint(build_model("small", 2), tmp_path / "small.ckpt"), weights_only=True)
    ckpt["config"].update(change)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=match) as err:
        load_model(tmp_path / "bad.ckpt")
    assert "\n" not in str(err.value)


def test_legacy_torch_files_are_refused(tmp_path):
    """The legacy format allocates each storage at the size its pickle declares, before reading it."""
    ckpt = torch.load(save_checkpoint(build_model("small", 2), tmp_path / "small.ckpt"), weights_only=True)
    torch.save(ckpt, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused to load: not a checkpoint in torch's zip format"):
        load_checkpoint(tmp_path / "legacy.ckpt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_zip_checkpoint_asking_for_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "ssd-checkpoint", "payload": _Evil(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def _coco_with_crowd(tmp_path: Path, objects: int) -> tuple[Path, Path]:
    """A COCO file: one ordinary image, and one whose annotation list holds ``objects`` boxes."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48)).save(images / name)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20]}]
    anns += [{"id": k + 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in range(objects)]
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}  # fmt: skip
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return path, images


@measures_memory
def test_an_image_with_an_absurd_object_count_is_skipped_within_a_multiple_of_the_file(tmp_path):
    path, images = _coco_with_crowd(tmp_path, objects=200_000)
    file_mib = path.stat().st_size / MIB
    growth, out = _growth_mib(f"""
        index = ssd.data.index.build_coco_index("t", {str(path)!r}, {str(images)!r})
        print("KEPT", [r.id for r in index.images], [str(i) for i in index.issues])
    """)
    assert "KEPT ['1']" in out and "200000 objects, over the limit of 1000 (--max-objects)" in out
    assert growth < 8 * file_mib + 32, (growth, file_mib)  # the parsed JSON, nothing per object


SERVE_SETUP = """
import io, socket, threading, time
from concurrent.futures import ThreadPoolExecutor
import httpx
from PIL import Image
from ssd.detector import Detector
from ssd.serve import ServeLimits, create_app, server_config
import uvicorn
buf = io.BytesIO()
Image.new("RGB", (4000, 4000), (90, 30, 200)).save(buf, format="PNG")  # 16 Mpixels, 48 MiB decoded, 50 kB sent
DATA = buf.getvalue()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
limits = ServeLimits(max_pixels=16_000_000, max_pixels_in_flight=IN_FLIGHT, batch_window_ms=0, request_timeout_s=120)
server = uvicorn.Server(server_config(create_app(Detector(ssd.build_model("small", 2)), limits), limits,
                                     port=PORT, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
def send(k):
    return httpx.post(f"http://127.0.0.1:{PORT}/detect", files={"image": (f"{k}.png", DATA)}, timeout=300).status_code
assert send(0) == 200  # warm: thread pools, the model's first pass
"""


@measures_memory
@pytest.mark.slow
def test_concurrent_uploads_hold_the_decoded_pixels_the_limit_allows():
    """Eight 16-Mpixel uploads at once: with room for one decoded image (48 MiB, and its copies while it is
    prepared) the service's memory grows by a few hundred MiB at most; with room for all eight, by several times
    that (the uploads themselves are 50 kB each)."""
    sends = """
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, range(8)))
        print("CODES", codes)
        server.should_exit = True
    """
    one, out_one = _growth_mib(sends, SERVE_SETUP.replace("IN_FLIGHT", "16_000_000"))
    eight, out_eight = _growth_mib(sends, SERVE_SETUP.replace("IN_FLIGHT", "128_000_000"))
    assert all("CODES [200, 200, 200, 200, 200, 200, 200, 200]" in out for out in (out_one, out_eight))
    assert one < 400 and eight > 3 * one, (one, eight)
