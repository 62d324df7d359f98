"""``ssd serve`` under clients that hold resources: idle and trickling connections, slow uploads, and more
decoded pixels than the service may hold. Each attack runs against a real server (uvicorn in a thread, configured
by ``server_config`` as ``ssd serve`` is) while an honest client checks that ``/health`` keeps answering."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_serve import Server, _png, checkpoint, detector, slowed  # noqa: F401  (fixtures)

import httpx  # noqa: E402  (test_serve skips the module when the serve extras are missing)

from ssd.errors import SSDError  # noqa: E402
from ssd.serve import ServeLimits, create_app  # noqa: E402

pytestmark = pytest.mark.slow  # real servers, with deadlines of seconds


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


def _eventually_healthy(server: Server, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/health", timeout=5).status_code == 200:
            return True
        time.sleep(0.2)
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
            assert max(_health_ms(s) for _ in range(5)) < 3000  # answered while 40 sockets are held
            assert all(_closed_by_server(sock, within_s=3.0) for sock in idle + trickling)
        finally:
            stop.set()
            thread.join()
            for sock in idle + trickling:
                sock.close()
        assert _health_ms(s) < 3000


def test_connections_over_the_limit_get_503_until_the_idle_ones_time_out(detector):  # noqa: F811
    with Server(create_app(detector, ServeLimits(header_timeout_s=1.0, max_connections=4))) as s:
        idle = [_open(s) for _ in range(4)]
        try:
            assert httpx.get(s.url + "/health", timeout=5).status_code == 503
            assert _eventually_healthy(s, within_s=6.0)  # the header deadline (1 s) closes the idle ones
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
            assert time.perf_counter() - start < 1.0 + 4.0  # the 1 s timeout, with room for a loaded machine
        finally:
            sock.close()
        assert httpx.get(s.url + "/stats", timeout=5).json()["upload_timeouts"] == 1


def test_decoded_pixels_in_flight_stay_within_the_budget(detector, monkeypatch):  # noqa: F811
    """A model slowed to 1 s a batch and room for one 1000 x 1000 image at a time: four such uploads at once are
    decoded one after another (never two at a time); those that find no room before the 2.5 s deadline get 503
    without being decoded at all, one admitted too late for its answer 504."""
    import ssd.serve

    slow = slowed(detector, 1.0)
    decoded, alive, peak, lock = [], [0], [0], threading.Lock()
    real_decode, real_detect = ssd.serve.decode_upload, ssd.serve.DetectEndpoint._detect

    def counting_decode(data, name, *args):
        with lock:
            decoded.append(name)
        return real_decode(data, name, *args)

    async def counting_detect(self, *args):  # the scope in which a request holds its decoded image
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        try:
            return await real_detect(self, *args)
        finally:
            with lock:
                alive[0] -= 1

    monkeypatch.setattr(ssd.serve, "decode_upload", counting_decode)
    monkeypatch.setattr(ssd.serve.DetectEndpoint, "_detect", counting_detect)
    limits = ServeLimits(max_pixels=1_000_000, max_pixels_in_flight=1_000_000, max_upload_bytes=10_000_000,
                         batch_window_ms=0, request_timeout_s=2.5)  # fmt: skip
    data = _png(1000, 1000)
    with Server(create_app(slow, limits)) as s:
        def send(k: int) -> int:
            return httpx.post(s.url + "/detect", files={"image": (f"{k}.png", data)}, timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(send, range(4)))
        stats = httpx.get(s.url + "/stats", timeout=5).json()
    assert codes.count(200) >= 1 and set(codes) <= {200, 503, 504} and codes.count(200) < 4, codes
    assert peak[0] == 1 and len(decoded) <= codes.count(200) + codes.count(504)  # never two decoded images at once
    assert stats["rejected_busy"] == codes.count(503) and stats["pixels_in_flight"] == 0


def test_a_client_that_keeps_sending_after_its_answer_is_disconnected(detector):  # noqa: F811
    """A chunked upload answered early (408 after the body deadline, 405 on a path that takes no body) while the
    client goes on sending chunks: the connection is closed, so such clients cannot hold the connection slots."""
    with Server(create_app(detector, ServeLimits(body_timeout_s=1.0, header_timeout_s=1.0, max_connections=8))) as s:
        head = "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        socks = [_open(s, head.format(path).encode()) for path in ("/detect", "/model", "/detect", "/model")]
        closed = {}
        deadline = time.monotonic() + 10
        try:
            while len(closed) < len(socks) and time.monotonic() < deadline:
                for k, sock in enumerate(socks):
                    if k in closed:
                        continue
                    try:
                        sock.send(b"5\r\nhello\r\n")
                        sock.settimeout(0.05)
                        if sock.recv(65536) == b"":
                            closed[k] = time.monotonic()
                    except socket.timeout:
                        pass
                    except OSError:
                        closed[k] = time.monotonic()
                time.sleep(0.2)
        finally:
            for sock in socks:
                sock.close()
        assert len(closed) == len(socks), f"{len(closed)} of {len(socks)} closed"
        assert _health_ms(s) < 3000


def test_uploads_in_flight_are_bounded_before_they_are_read(detector):  # noqa: F811
    """Room for one upload's bytes, held by a request the model answers slowly: a second upload is refused with 503
    once the body deadline passes, before any of its bytes are read; the first is answered."""
    import io

    import numpy as np
    from PIL import Image

    slow = slowed(detector, 2.5)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(buf, format="PNG")
    big = buf.getvalue()
    limits = ServeLimits(max_upload_bytes=len(big), max_upload_bytes_in_flight=len(big), body_timeout_s=1.0,
                         request_timeout_s=30, batch_window_ms=0)  # fmt: skip
    with Server(create_app(slow, limits)) as s, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, s.url + "/detect", content=big, headers={"Content-Type": "image/png"}, timeout=30)
        time.sleep(0.5)  # the first upload is in, its bytes held while the model works
        second = httpx.post(s.url + "/detect", content=_png(50, 40), headers={"Content-Type": "image/png"}, timeout=10)
        assert second.status_code == 503 and "no room for" in second.json()["detail"], second.text
        assert first.result().status_code == 200
        stats = httpx.get(s.url + "/stats", timeout=5).json()
    assert stats["rejected_busy"] == 1 and stats["upload_bytes_in_flight"] == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"max_pixels_in_flight": 10, "max_pixels": 100}, "could never be admitted"),
        ({"max_upload_bytes_in_flight": 10, "max_upload_bytes": 100}, "could never be admitted"),
        ({"max_connections": 0}, "max_connections must be a positive integer"),
        ({"header_timeout_s": float("inf")}, "header_timeout_s must be a positive number"),
        ({"body_timeout_s": 0}, "body_timeout_s must be a positive number"),
    ],
)
def test_limits_are_checked_on_construction(bad, match):
    with pytest.raises(SSDError, match=match):
        ServeLimits(**bad)
