"""``ssd serve``: a real server on 127.0.0.1 (uvicorn in a thread), its API, limits, batching and web page."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import VOCMINI, need

pytest.importorskip("fastapi", reason="ssd serve needs fastapi: pip install 'ssd-detector[serve]'")
pytest.importorskip("uvicorn", reason="ssd serve needs uvicorn: pip install 'ssd-detector[serve]'")
pytest.importorskip("multipart", reason="ssd serve needs python-multipart: pip install 'ssd-detector[serve]'")
httpx = pytest.importorskip("httpx", reason="the tests talk to the server with httpx")

import uvicorn  # noqa: E402

import ssd  # noqa: E402
from ssd.detector import Detector  # noqa: E402
from ssd.settings import DetectSettings  # noqa: E402
from ssd.serve import ServeLimits, create_app, server_config  # noqa: E402

torch.set_num_threads(1)

MIN_SCORE = 0.5  # random weights score high: this keeps a few dozen detections per image
TOP_K = 30
MAX_UPLOAD = 1_000_000
MAX_PIXELS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = server_config(app, app.state.limits, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ssd.build_model("small", ssd.VOC_CLASSES)
    path = tmp_path_factory.mktemp("serve") / "small.pt"
    ssd.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def detector(checkpoint) -> Detector:
    return Detector.from_checkpoint(checkpoint, device="cpu", min_score=MIN_SCORE, top_k=TOP_K)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    folder = need(VOCMINI / "JPEGImages")
    return sorted(folder.glob("*.jpg"))[:8]


@pytest.fixture(scope="module")
def expected(detector, images) -> dict[str, dict]:
    """The Python detector's answers, one image at a time."""
    return {p.name: detector(p).to_dict() for p in images}


@pytest.fixture(scope="module")
def server(detector):
    limits = ServeLimits(max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, batch_window_ms=20, max_batch=8,
                         queue_size=64, request_timeout_s=30)  # fmt: skip
    app = create_app(detector, limits=limits)
    with Server(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_same(got: dict, want: dict, score_tol: float = 2e-5, box_tol: float = 2e-3) -> None:
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    g, w = got["detections"], want["detections"]
    assert [d["class_name"] for d in g] == [d["class_name"] for d in w]
    assert [d["label"] for d in g] == [d["label"] for d in w]
    for a, b in zip(g, w):
        assert a["score"] == pytest.approx(b["score"], abs=score_tol)
        assert a["box"] == pytest.approx(b["box"], abs=box_tol)


def post_image(client, path: Path, **params):
    with open(path, "rb") as f:
        return client.post("/detect", params=params, files={"image": (path.name, f, "image/jpeg")})


# --- the API ----------------------------------------------------------------------------------------


def test_health_model_and_page(client, detector):
    assert client.get("/health").json()["status"] == "ok"
    m = client.get("/model").json()
    assert m["preset"] == "small" and m["input_size"] == detector.image_size
    assert m["classes"] == list(ssd.VOC_CLASSES) and len(m["class_colors"]) == 20
    assert m["checkpoint_format_version"] == 1
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_detections_equal_python_detector(client, images, expected):
    for p in images:
        r = post_image(client, p)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["source"] == p.name and got["detections"], "no detections: raise the model's scores"
        assert_same(got, expected[p.name], score_tol=1e-6, box_tol=1e-3)  # alone in its batch: the same computation


def test_raw_body_and_settings(client, detector, images):
    p = images[0]
    r = client.post("/detect", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"},
                    params={"min_score": 0.6, "max_overlap": 0.3, "top_k": 5, "suppress": "person, chair"})  # fmt: skip
    assert r.status_code == 200, r.text
    want = detector(p, min_score=0.6, max_overlap=0.3, top_k=5, suppress=["person", "chair"]).to_dict()
    assert_same(r.json(), want, score_tol=1e-6, box_tol=1e-3)
    assert r.json()["settings"]["suppress"] == ["person", "chair"]
    # form fields work like query parameters
    with open(p, "rb") as f:
        r2 = client.post("/detect", files={"image": (p.name, f)}, data={"min_score": "0.6", "max_overlap": "0.3", "top_k": "5", "suppress": "person,chair"})
    assert r2.status_code == 200 and r2.json()["detections"] == r.json()["detections"]


def test_annotated_image(client, images):
    from PIL import Image

    r = post_image(client, images[0], annotated="true", top_k=3)
    assert r.status_code == 200
    im = Image.open(io.BytesIO(base64.b64decode(r.json()["annotated_png"])))
    assert im.format == "PNG" and im.size == (r.json()["width"], r.json()["height"])


@pytest.mark.parametrize(
    "case",
    ["not_an_image", "truncated_jpeg", "too_large_upload", "too_many_pixels", "wrong_field", "no_body",
     "text_field", "bad_min_score", "unknown_class", "unknown_param", "empty_file", "top_k_over_priors",
     "infinite_overlap", "nan_score", "fractional_top_k"],
)  # fmt: skip
def test_bad_inputs_give_4xx_and_the_server_keeps_answering(client, images, case):
    from PIL import Image

    jpeg = images[0].read_bytes()
    big = io.BytesIO()
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(big, format="PNG")  # 2 Mpx in a few kB
    requests = {
        "not_an_image": dict(files={"image": ("a.jpg", b"this is not an image at all", "image/jpeg")}),
        "truncated_jpeg": dict(files={"image": ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}),
        "too_large_upload": dict(files={"image": ("big.jpg", jpeg + b"\0" * MAX_UPLOAD, "image/jpeg")}),
        "too_many_pixels": dict(files={"image": ("big.png", big.getvalue(), "image/png")}),
        "wrong_field": dict(files={"file": ("a.jpg", jpeg, "image/jpeg")}),
        "no_body": dict(content=b""),
        "text_field": dict(data={"image": "hello"}, files={"other": ("x", b"", "text/plain")}),
        "bad_min_score": dict(files={"image": ("a.jpg", jpeg)}, params={"min_score": "1.5"}),
        "unknown_class": dict(files={"image": ("a.jpg", jpeg)}, params={"suppress": "unicorn"}),
        "unknown_param": dict(files={"image": ("a.jpg", jpeg)}, params={"min_scor": "0.3"}),
        "empty_file": dict(files={"image": ("a.jpg", b"", "image/jpeg")}),
        "top_k_over_priors": dict(files={"image": ("a.jpg", jpeg)}, params={"top_k": str(10**12)}),
        "infinite_overlap": dict(files={"image": ("a.jpg", jpeg)}, params={"max_overlap": "inf"}),
        "nan_score": dict(files={"image": ("a.jpg", jpeg)}, params={"min_score": "nan"}),
        "fractional_top_k": dict(files={"image": ("a.jpg", jpeg)}, params={"top_k": "2.5"}),
    }
    want = {
        "not_an_image": 415, "truncated_jpeg": 422, "too_large_upload": 413, "too_many_pixels": 413,
        "wrong_field": 400, "no_body": 400, "text_field": 400, "bad_min_score": 422, "unknown_class": 422,
        "unknown_param": 422, "empty_file": 400, "top_k_over_priors": 422, "infinite_overlap": 422, "nan_score": 422,
        "fractional_top_k": 422,
    }  # fmt: skip
    r = client.post("/detect", **requests[case])
    assert r.status_code == want[case], r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in r.text
    # answered before the upload was read: the connection ends (the rest of the upload is dropped, not answered)
    assert (r.headers.get("connection") == "close") is (case == "too_large_upload")
    if case == "truncated_jpeg":
        assert "truncated" in body["detail"] and "cut.jpg" in body["detail"]
    if case == "top_k_over_priors":
        assert body["detail"].startswith("top_k must be at most the model's")
    ok = post_image(client, images[1])
    assert ok.status_code == 200 and ok.json()["detections"]


def test_request_settings_are_checked_completely_before_batching(detector):
    """parse_settings gives the checked DetectSettings a request runs with, or a 422 naming the setting."""
    from ssd.serve import HTTPProblem, parse_settings

    s, annotated = parse_settings({"min_score": "0.6", "top_k": "5", "suppress": "person, chair"}, detector)
    assert s == detector.settings.replace(min_score=0.6, top_k=5, suppress=("person", "chair")) and not annotated
    assert parse_settings({}, detector) == (detector.settings, False)
    for params, message in [({"top_k": str(detector.num_priors + 1)}, "top_k must be at most"),
                            ({"top_k": "0"}, "top_k must be a positive integer"),
                            ({"top_k": "many"}, "top_k: 'many' is not an integer"),
                            ({"max_overlap": "-inf"}, "max_overlap must be in"),
                            ({"min_score": "x"}, "min_score: 'x' is not a number"),
                            ({"suppress": "unicorn"}, "unknown class 'unicorn'"),
                            ({"batch_size": "4"}, "unknown parameter 'batch_size'")]:  # fmt: skip
        with pytest.raises(HTTPProblem) as e:
            parse_settings(params, detector)
        assert e.value.status == 422 and message in e.value.message


def test_serve_limits_are_validated():
    from ssd.errors import SSDError

    assert ServeLimits().max_batch == 16
    for bad in (dict(max_batch=0), dict(queue_size=1.5), dict(batch_window_ms=-1), dict(request_timeout_s=0),
                dict(request_timeout_s=float("nan")), dict(max_pixels=True)):  # fmt: skip
        with pytest.raises(SSDError, match=next(iter(bad))):
            ServeLimits(**bad)


# --- load and batching --------------------------------------------------------------------------------


def test_load_is_batched_and_correct(client, images, expected):
    before = client.get("/stats").json()
    datas = [(p.name, p.read_bytes()) for p in images]
    n_requests, n_clients = 160, 8

    def worker(k: int) -> list[tuple[str, int, dict]]:
        out = []
        with httpx.Client(base_url=client.base_url, timeout=30) as c:
            for i in range(k, n_requests, n_clients):
                name, data = datas[i % len(datas)]
                r = c.post("/detect", files={"image": (name, data, "image/jpeg")})
                out.append((name, r.status_code, r.json()))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(n_clients) as pool:
        results = [r for rs in pool.map(worker, range(n_clients)) for r in rs]
    elapsed = time.monotonic() - t0
    assert elapsed < 45, f"{n_requests} requests took {elapsed:.1f} s"
    assert len(results) == n_requests
    for name, status, body in results:
        assert status == 200, body
        assert_same(body, expected[name])  # batched: the same up to float rounding
    after = client.get("/stats").json()
    assert after["completed"] - before["completed"] == n_requests
    assert after["batched_images"] - before["batched_images"] == n_requests
    assert after["batches"] - before["batches"] < n_requests  # some requests shared a forward pass
    assert after["max_batch_seen"] > 1
    assert after["server_errors"] == 0


def slowed(detector: Detector, seconds: float) -> Detector:
    """``detector`` with every forward pass ``seconds`` longer (its model and settings shared)."""

    class Slow(Detector):
        def run_batch(self, images):
            time.sleep(seconds)
            return super().run_batch(images)

    slow = Detector.__new__(Slow)
    slow.__dict__.update(detector.__dict__)
    return slow


def test_full_queue_gives_503_and_slow_model_504(detector, images):
    """A model slowed down to 0.3 s a batch, a queue of 1 and a timeout of 1 s: 503s and 504s, then recovery."""
    slow = slowed(detector, 0.3)
    app = create_app(slow, ServeLimits(batch_window_ms=0, max_batch=1, queue_size=1, request_timeout_s=1.0))
    data = images[0].read_bytes()
    with Server(app) as s:
        def one(_):
            with httpx.Client(base_url=s.url, timeout=30) as c:
                r = c.post("/detect", files={"image": ("a.jpg", data)})
                return r.status_code, r.json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        codes = sorted(c for c, _ in results)
        assert set(codes) <= {200, 503, 504} and 503 in codes, codes
        assert all(isinstance(b["detail"], str) for c, b in results if c != 200)
        time.sleep(1.0)
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.post("/detect", files={"image": ("a.jpg", data)}).status_code == 200
            st = c.get("/stats").json()
        assert st["rejected_queue_full"] >= 1 and st["server_errors"] == 0


def test_shutdown_answers_queued_requests_with_503():
    """The batch in hand finishes; requests still queued, and any new one, get 503 at once, not a 504 later."""
    from ssd.serve_batcher import Batcher, Job
    from ssd.serve_limits import HTTPProblem

    started, release = threading.Event(), threading.Event()

    class Blocking(Batcher):
        def _detect(self, jobs):
            started.set()
            release.wait(10)
            return ["done"] * len(jobs)

    b = Blocking(None, window_s=0.0, max_batch=1, queue_size=8)

    def job():
        return Job(image=None, settings=DetectSettings())

    futures = [b.submit(job()) for _ in range(3)]
    assert started.wait(10)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    time.sleep(0.1)
    release.set()
    stopper.join(10)
    assert futures[0].result(timeout=5) == "done"
    for f in futures[1:]:
        with pytest.raises(HTTPProblem) as e:
            f.result(timeout=5)
        assert e.value.status == 503 and "shutting down" in str(e.value)
    with pytest.raises(HTTPProblem) as e:
        b.submit(job())
    assert e.value.status == 503


# --- the web page in headless Chromium ----------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install selenium)")
    return browser, driver


def _headless_chromium(*extra: str):
    """A selenium driver on Debian's headless Chromium (skips the test where there is none)."""
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900",
                *extra):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.mark.slow  # a browser
def test_camera_mode_in_headless_chromium(server):
    """The camera mode with Chromium's fake camera: frames are answered one at a time, boxes drawn over the live
    video as the last answer gives them, the frame rate shown, and the slider applies to the next frames."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv = _headless_chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    try:
        drv.get(server.url + "/")
        WebDriverWait(drv, 15).until(lambda d: "classes" in d.find_element(By.ID, "model-info").text)
        drv.execute_script("const s = document.getElementById('min-score'); s.value = 0.05; s.dispatchEvent(new Event('input'));")
        drv.find_element(By.ID, "camera").click()
        WebDriverWait(drv, 30).until(lambda d: d.execute_script("return window.cameraStats.answered") >= 3)
        stats = drv.execute_script("return window.cameraStats")
        assert stats["sent"] - stats["answered"] <= 1  # one request in flight, never a queue
        assert "frames/s" in drv.find_element(By.ID, "status").text and stats["fps"] > 0
        WebDriverWait(drv, 10).until(lambda d: d.execute_script(
            "return window.cameraStats.boxesDrawn === window.lastResult.detections.length && window.cameraStats.boxesDrawn > 0"))
        w, h = drv.execute_script("const v = document.getElementById('video'); return [v.videoWidth, v.videoHeight];")
        assert [w, h] == drv.execute_script("return [window.lastResult.width, window.lastResult.height]") and w > 0
        rows = drv.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
        assert len(rows) == drv.execute_script("return window.lastResult.detections.length")
        drv.execute_script("const s = document.getElementById('min-score'); s.value = 0.9; s.dispatchEvent(new Event('input'));")
        WebDriverWait(drv, 20).until(lambda d: d.execute_script("return window.lastResult.settings.min_score") == 0.9)
        drv.find_element(By.ID, "camera").click()  # stop: no more frames are sent
        sent = drv.execute_script("return window.cameraStats.sent")
        time.sleep(1.0)
        assert drv.execute_script("return window.cameraStats.sent") <= sent + 1
        assert drv.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    finally:
        drv.quit()


@pytest.mark.slow  # a browser, a subprocess or a quantization
def test_web_page_in_headless_chromium(server, client, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv = _headless_chromium()
    try:
        drv.get(server.url + "/")
        WebDriverWait(drv, 15).until(lambda d: "classes" in d.find_element(By.ID, "model-info").text)
        image = images[2]
        drv.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(drv, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert drv.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", drv.find_element(By.ID, "status").text
        min_score = float(drv.find_element(By.ID, "min-score").get_attribute("value"))
        api = post_image(client, image, min_score=min_score).json()
        rows = drv.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
        assert len(rows) == len(api["detections"]) > 0
        for row, d in zip(rows, api["detections"]):
            cells = [c.text.strip() for c in row.find_elements(By.TAG_NAME, "td")]
            assert cells[1] == d["class_name"]
            assert cells[2] == f"{d['score']:.3f}"
            assert cells[3:] == [f"{v:.1f}" for v in d["box"]]
        # the canvas holds the image at its own size, with boxes drawn on it
        w, h = drv.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
        assert (w, h) == (api["width"], api["height"])
        # moving the slider asks the server again with the new threshold
        drv.execute_script(
            "const s = document.getElementById('min-score'); s.value = 0.9; s.dispatchEvent(new Event('input'));"
        )
        WebDriverWait(drv, 20).until(
            lambda d: d.execute_script("return window.lastResult && window.lastResult.settings.min_score") == 0.9
        )
        api9 = post_image(client, image, min_score=0.9).json()
        WebDriverWait(drv, 5).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#detections tbody tr")) == len(api9["detections"]))
        drv.execute_script(
            "const s = document.getElementById('min-score'); s.value = 0.6; s.dispatchEvent(new Event('input'));"
        )
        WebDriverWait(drv, 20).until(
            lambda d: d.execute_script("return window.lastResult && window.lastResult.settings.min_score") == 0.6
        )
        time.sleep(0.2)
        shot = tmp_path / "ssd-serve-page.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        copy_to = os.environ.get("SSD_SERVE_SCREENSHOT")  # e.g. docs/images/serve-page.png for the README
        if copy_to:
            Path(copy_to).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, copy_to)
    finally:
        drv.quit()


# --- the command line -----------------------------------------------------------------------------------


@pytest.mark.slow  # a browser, a subprocess or a quantization
def test_cli_serve_runs_the_service(checkpoint, images):
    """`ssd serve` (through its register/run, as ssd.cli registers it) answers on the chosen loopback port."""
    import subprocess
    import sys

    port = _free_port()
    script = (
        "import argparse, sys, torch; torch.set_num_threads(1)\n"
        "from ssd.cli.serve import register\n"
        "p = argparse.ArgumentParser(prog='ssd'); register(p.add_subparsers(dest='command'))\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", script, "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--device", "cpu", "--max-upload-mb", "0.5", "--batch-window-ms", "2", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ssd serve did not start"
            time.sleep(0.1)
        r = httpx.post(url + "/detect", files={"image": ("a.jpg", images[0].read_bytes())}, timeout=30)
        from PIL import Image

        with Image.open(images[0]) as im:
            assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == im.size
        big = httpx.post(url + "/detect", files={"image": ("a.jpg", b"\0" * 600_000)}, timeout=30)
        assert big.status_code == 413  # --max-upload-mb 0.5
        assert httpx.get(url + "/stats").json()["batch_window_ms"] == 2
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_cli_errors_are_one_line(tmp_path):
    import argparse

    from ssd.cli.serve import register
    from ssd.errors import SSDError

    p = argparse.ArgumentParser(prog="ssd")
    register(p.add_subparsers(dest="command"))
    a = p.parse_args(["serve", "--checkpoint", str(tmp_path / "missing.pt")])
    assert (a.host, a.port, a.batch_window_ms) == ("127.0.0.1", 8000, 5.0)  # loopback by default
    with pytest.raises(SSDError, match="missing.pt"):
        a.func(a)
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "--checkpoint", "x.pt", "--max-upload-mb", "0"])
    # The request defaults are DetectSettings' options, checked as ssd detect checks them.
    a = p.parse_args(["serve", "--checkpoint", str(tmp_path / "missing.pt"), "--top-k", "0"])
    assert (a.min_score, a.max_overlap, a.suppress) == (0.2, 0.45, [])
    with pytest.raises(SSDError, match="^--top-k must be a positive integer"):
        a.func(a)


def test_missing_dependencies_say_what_to_install(monkeypatch):
    import sys

    from ssd.errors import SSDError
    from ssd.serve import require_serve_dependencies

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    with pytest.raises(SSDError, match=r"uvicorn.*pip install 'ssd-detector\[serve\]'"):
        require_serve_dependencies()


def test_start_after_a_stop_that_timed_out_keeps_serving(monkeypatch):
    """stop() gives up joining a thread stuck in a long batch; a start() right after must leave a thread that
    answers the next requests, not one that exits on stop()'s wake-up and strands them."""
    from ssd.serve_batcher import Batcher, Job

    release = threading.Event()

    class Slow(Batcher):
        def _detect(self, jobs):
            release.wait(10)
            return ["done"] * len(jobs)

    b = Slow(None, window_s=0.0, max_batch=1, queue_size=8)
    first = b.submit(Job(image=None, settings=DetectSettings()))
    time.sleep(0.2)
    real_join = threading.Thread.join
    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: real_join(self, 0.05))
    b.stop()  # the join times out: the thread is still in its batch
    monkeypatch.setattr(threading.Thread, "join", real_join)
    b.start()
    release.set()
    assert first.result(timeout=5) == "done"
    later = b.submit(Job(image=None, settings=DetectSettings()))
    assert later.result(timeout=5) == "done"
    b.stop()


# --- one request never harms another ------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_request_that_breaks_its_batch_fails_alone(detector, images, expected, caplog):
    """Whatever makes a forward pass fail (here: any batch holding an image of 77 x 55 pixels raises, as a bug or a
    hostile input the checks missed would), only the request that brought it fails: honest requests sent at the
    same time, sharing its batches, all get 200 and the answers they get alone; the 500 keeps the connection
    open; the error is logged once with its traceback, however often it is sent."""
    import http.client
    import json
    import logging

    class Fragile(Detector):
        def run_batch(self, images):
            if any(im.image_size == (55, 77) for im in images):
                raise RuntimeError("poisoned batch")
            return super().run_batch(images)

    fragile = Detector.__new__(Fragile)
    fragile.__dict__.update(detector.__dict__)
    app = create_app(fragile, ServeLimits(batch_window_ms=200, max_batch=16, queue_size=64, request_timeout_s=30))
    poison = _png(77, 55)
    datas = [(p.name, p.read_bytes()) for p in images]
    with Server(app) as s, caplog.at_level(logging.ERROR, logger="ssd.serve"):
        def send(k: int) -> tuple[str, int, dict]:
            name, data = ("poison.png", poison) if k % 3 == 0 else datas[k % len(datas)]
            with httpx.Client(base_url=s.url, timeout=30) as c:
                r = c.post("/detect", files={"image": (name, data)})
                return name, r.status_code, r.json()

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, range(36)))
        for name, status, body in results:
            if name == "poison.png":
                assert (status, body) == (500, {"detail": "detection failed: RuntimeError"})
            else:
                assert status == 200, body
                assert_same(body, expected[name])

        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request("POST", "/detect", body=poison, headers={"Content-Type": "image/png"})
        first = conn.getresponse()
        assert first.status == 500 and json.loads(first.read())["detail"] == "detection failed: RuntimeError"
        sock = conn.sock
        conn.request("POST", "/detect", body=datas[1][1], headers={"Content-Type": "image/jpeg"})
        second = conn.getresponse()
        assert second.status == 200
        assert_same(json.loads(second.read()), expected[datas[1][0]])
        assert sock is not None and conn.sock is sock, "the 500 closed the keep-alive connection"
        conn.close()
        stats = httpx.get(s.url + "/stats").json()
    assert stats["server_errors"] == 13 and stats["completed"] == 25
    assert stats["batches_split_after_a_failure"] >= 1  # the poison shared a batch with honest requests at least once
    assert stats["distinct_errors"] == {"RuntimeError: poisoned batch": 13}
    logged = [r for r in caplog.records if "poisoned batch" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_client_that_goes_away_is_not_a_server_error(server):
    """A client that announces a body and disconnects half-way is counted as a disconnect, not a 500."""
    before = httpx.get(server.url + "/stats").json()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        sock.sendall(b"\xff\xd8" + b"\0" * 1000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = httpx.get(server.url + "/stats").json()
        if after["client_disconnects"] > before["client_disconnects"]:
            break
        time.sleep(0.05)
    assert after["client_disconnects"] == before["client_disconnects"] + 1
    assert after["server_errors"] == before["server_errors"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
