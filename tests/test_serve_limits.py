"""``ssd serve`` under clients that hold resources: idle and trickling connections, slow uploads, and more
decoded pixels than the service may hold. Each attack runs against a real server (uvicorn in a thread, configured
by ``server_config`` as ``ssd serve`` is) while an honest client checks that ``/health`` keeps answering."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_serve import Server, _png, checkpoint, detector  # noqa: F401  (fixtures)

import httpx  # noqa: E402  (test_serve skips the module when the serve extras are missing)

from ssd.detector import Detector  # noqa: E402
from ssd.errors import SSDError  # noqa: E402
from ssd.serve import ServeLimits, create_app  # noqa: E402


def _open(server: Server, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""  # the server closed without answering
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _health_ms(server: Server) -> float:
    start = time.perf_counter()
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    return 1000 * (time.perf_counter() - start)


def test_idle_and_trickling_connections_are_closed_and_health_keeps_answering(detector):  # noqa: F811
    limits = ServeLimits(header_timeout_s=1.0, max_connections=64)
    with Server(create_app(detector, limits)) as s:
        idle = [_open(s) for _ in range(30)]
        trickling = [_open(s, b"POST /detect HTTP/1.1\r\n") for _ in range(10)]
        stop = threading.Event()

        def trickle():  # a header byte every 0.1 s: never a whole request
            while not stop.is_set():
                for sock in trickling:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
                time.sleep(0.1)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            assert max(_health_ms(s) for _ in range(5)) < 1000
            assert all(_closed_by_server(sock, within_s=3.0) for sock in idle + trickling)
        finally:
            stop.set()
            thread.join()
            for sock in idle + trickling:
                sock.close()
        assert _health_ms(s) < 1000


def test_connections_over_the_limit_get_503_until_the_idle_ones_time_out(detector):  # noqa: F811
    with Server(create_app(detector, ServeLimits(header_timeout_s=1.0, max_connections=4))) as s:
        idle = [_open(s) for _ in range(4)]
        try:
            assert httpx.get(s.url + "/health", timeout=5).status_code == 503
            time.sleep(1.5)  # the header deadline closes the idle ones
            assert httpx.get(s.url + "/health", timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_an_upload_that_trickles_gets_408_and_is_counted(detector):  # noqa: F811
    with Server(create_app(detector, ServeLimits(body_timeout_s=1.0))) as s:
        sock = _open(s, b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        try:
            start = time.perf_counter()
            for _ in range(30):  # 10 bytes every 0.1 s: the 100 kB would take over 15 minutes
                sock.send(b"0123456789")
                sock.settimeout(0.1)
                try:
                    answer = sock.recv(4096)
                    break
                except socket.timeout:
                    continue
            else:
                pytest.fail("no answer to a trickled upload")
            sock.settimeout(2.0)
            while b"did not arrive" not in answer:  # the head and the body may come in separate reads
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
            assert time.perf_counter() - start < 2.5
        finally:
            sock.close()
        assert httpx.get(s.url + "/stats", timeout=5).json()["upload_timeouts"] == 1


def test_decoded_pixels_in_flight_stay_within_the_budget(detector, monkeypatch):  # noqa: F811
    """A model slowed to 1 s a batch and room for one 1000 x 1000 image at a time: four such uploads at once are
    decoded one after another (never two at a time), and those that find no room within the 1.5 s timeout get 503
    without being decoded at all."""
    import ssd.serve

    class Slow(Detector):
        def run_batch(self, images):
            time.sleep(1.0)
            return super().run_batch(images)

    slow = Detector.__new__(Slow)
    slow.__dict__.update(detector.__dict__)
    decoded, alive, peak, lock = [], [0], [0], threading.Lock()
    real_decode = ssd.serve.decode_upload

    def counting_decode(data, name, max_pixels):
        image = real_decode(data, name, max_pixels)
        with lock:
            decoded.append(name)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return image

    real_finish = Detector.finish

    def counting_finish(self, *args, **kwargs):
        with lock:
            alive[0] -= 1
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(ssd.serve, "decode_upload", counting_decode)
    monkeypatch.setattr(Detector, "finish", counting_finish)
    limits = ServeLimits(max_pixels=1_000_000, max_pixels_in_flight=1_000_000, max_upload_bytes=10_000_000,
                         batch_window_ms=0, request_timeout_s=1.5)  # fmt: skip
    data = _png(1000, 1000)
    with Server(create_app(slow, limits)) as s:
        def send(k: int) -> int:
            return httpx.post(s.url + "/detect", files={"image": (f"{k}.png", data)}, timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(send, range(4)))
        stats = httpx.get(s.url + "/stats", timeout=5).json()
    assert codes.count(200) >= 1 and set(codes) <= {200, 503} and 503 in codes, codes
    assert peak[0] == 1 and len(decoded) == codes.count(200)
    assert stats["rejected_pixels_busy"] == codes.count(503) and stats["pixels_in_flight"] == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"max_pixels_in_flight": 10, "max_pixels": 100}, "could never be admitted"),
        ({"max_connections": 0}, "max_connections must be a positive integer"),
        ({"header_timeout_s": float("inf")}, "header_timeout_s must be a positive number"),
        ({"body_timeout_s": 0}, "body_timeout_s must be a positive number"),
    ],
)
def test_limits_are_checked_on_construction(bad, match):
    with pytest.raises(SSDError, match=match):
        ServeLimits(**bad)
