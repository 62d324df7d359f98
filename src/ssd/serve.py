"""``ssd serve``: a detection service over HTTP (FastAPI + uvicorn) with a web page, and micro-batching.

::

    from ssd.detector import Detector
    from ssd.serve import create_app

    app = create_app(Detector.from_checkpoint("checkpoint.pt"))   # then: uvicorn.run(app, host="127.0.0.1")

Endpoints:

* ``POST /detect``: the image as a multipart field ``image`` (``curl -F image=@dog.jpg``) or as the raw
  request body (``curl --data-binary @dog.jpg -H 'Content-Type: image/jpeg'``). Settings as query
  parameters or multipart form fields: ``min_score``, ``max_overlap``, ``top_k``, ``suppress`` (class names,
  comma-separated) and ``annotated`` (``true``: the JSON also holds ``annotated_png``, the image with the
  boxes drawn by :func:`ssd.visualize.draw_detections`, base64-encoded PNG). Answer:
  ``{"source", "height", "width", "detections": [{"class_name", "label", "score", "box": [x1, y1, x2, y2]}],
  "settings": {...}}`` -- :meth:`ssd.detector.ImageDetections.to_dict`, boxes in pixels of the original
  (upright) image, exactly what :class:`~ssd.detector.Detector` returns for the same file.
* ``GET /health``, ``GET /model`` (preset, classes with their colours, input size, checkpoint format
  version), ``GET /stats`` (requests, batches, batched images, largest batch, rejections), ``GET /``
  (the web page, from ``ssd/static``).

The way of a request::

    upload -> decode_upload (uint8 RGB, upright) -> Detector.prepare      (worker threads, in parallel)
    query/form fields -> parse_settings -> Detector.resolve                (checked completely, else 422)
      -> Batcher: requests arriving within ``batch_window_ms`` of each other, at most ``max_batch``
         -> Detector.run_batch (one forward pass) -> Detector.finish (each request's own settings)
      -> ImageDetections.to_dict() + the settings used (+ annotated PNG)

The limits are a :class:`ServeLimits`; ``create_app(detector, limits=ServeLimits(max_batch=8))``.

Errors are JSON ``{"detail": "message"}``: 400 (no image, or a bad field), 413 (upload over
``max_upload_bytes`` or image over ``max_pixels``), 415 (not an image), 422 (a damaged image or a bad
setting), 503 (queue full: ``queue_size`` requests waiting), 504 (no answer within ``request_timeout_s``).
An unexpected failure is a 500 with a one-line message, never a traceback, and the service keeps running: a batch
that fails is split and re-run (bisection), so the failure stays with the request that caused it; the connection
stays open; each distinct error is logged once with its traceback (``/stats`` counts the repeats).
"""

import asyncio
import base64
import concurrent.futures
import io
import logging
import math
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssd.errors import SSDError
from ssd.settings import DECODING_SETTINGS, DetectSettings, setting_spec

if TYPE_CHECKING:  # only in annotations: `ssd serve --help` stays torch-free
    import torch

__all__ = ["create_app", "require_serve_dependencies", "STATIC_DIR", "ServeLimits"]

log = logging.getLogger("ssd.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
INSTALL_HINT = "pip install 'ssd-detector[serve]'"
CLIENT_CLOSED = 499
"""The status recorded (never seen by anyone) when a client goes away before its answer: not a server error."""


def require_serve_dependencies() -> None:
    """Raise :class:`SSDError` with the install command when FastAPI, uvicorn or python-multipart is missing."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SSDError(f"ssd serve needs {', '.join(missing)}: {INSTALL_HINT}")


class HTTPProblem(Exception):
    """An error answer: status code and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServeLimits:
    """The service's limits: ``max_upload_bytes`` (larger uploads: 413), ``max_pixels`` (width x height; larger
    images: 413), ``batch_window_ms`` (how long the batcher waits for more requests; 0: no wait), ``max_batch``
    (images per forward pass), ``queue_size`` (requests waiting; more: 503) and ``request_timeout_s`` (then 504).
    Validated on construction."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    batch_window_ms: float = 5.0
    max_batch: int = 16
    queue_size: int = 64
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_batch", "queue_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SSDError(f"{name} must be a positive integer, got {v!r}")
        for name, low in (("batch_window_ms", 0.0), ("request_timeout_s", None)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v < 0 if low is not None else v <= 0):
                raise SSDError(f"{name} must be a {'non-negative' if low is not None else 'positive'} number, got {v!r}")


# --- images ---------------------------------------------------------------------------------------


def decode_upload(data: bytes, name: str, max_pixels: int) -> "torch.Tensor":
    """Uploaded bytes -> uint8 RGB (3, H, W), upright, decoded in memory exactly as
    :func:`ssd.detector.load_image` decodes the same file (so the service and ``Detector`` agree). Raises
    :class:`HTTPProblem`."""
    from PIL import Image

    from ssd.data.image import decode_image_bytes

    if not data:
        raise HTTPProblem(400, "empty image (0 bytes)")
    header_ok = False
    try:  # the header only: format and size, so that huge images are refused before decoding
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        header_ok = True
        if w * h > max_pixels:
            raise HTTPProblem(413, f"{name}: image of {w} x {h} pixels is over the limit of {max_pixels} pixels")
    except HTTPProblem:
        raise
    except Image.DecompressionBombError as err:
        raise HTTPProblem(413, f"{name}: image too large (over the decompression-bomb limit)") from err
    except Exception:
        header_ok = False
    try:
        image = decode_image_bytes(data, name)
    except SSDError as err:
        raise HTTPProblem(422 if header_ok else 415, str(err)) from err
    if image.shape[1] * image.shape[2] > max_pixels:
        raise HTTPProblem(413, f"{name}: image of {image.shape[2]} x {image.shape[1]} pixels is over the limit of {max_pixels} pixels")
    return image


# --- micro-batching -------------------------------------------------------------------------------


class ErrorLog:
    """Logs each distinct unexpected error (its type and message) once, with its traceback; repeats are only
    counted, so that a client repeating a failing request cannot flood the log. At most ``max_kinds`` distinct
    errors are remembered (then every new kind is logged in one line, without its traceback)."""

    def __init__(self, max_kinds: int = 256) -> None:
        self.max_kinds = max_kinds
        self.seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def report(self, err: BaseException, where: str) -> None:
        key = (type(err).__name__, str(err)[:500])
        with self._lock:
            first = key not in self.seen
            if first and len(self.seen) >= self.max_kinds:
                log.error("%s failed: %s: %s", where, key[0], (key[1].splitlines() or [""])[0])
                return
            self.seen[key] = self.seen.get(key, 0) + 1
        if first:
            log.error("%s failed (logged once; repeats are counted in /stats): %s: %s", where, *key,
                      exc_info=(type(err), err, err.__traceback__))  # fmt: skip

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for (kind, message), n in self.seen.items():
                shown = f"{kind}: {message}"[:200]
                out[shown] = out.get(shown, 0) + n
        return out


@dataclass
class _Job:
    image: Any  # a PreparedImage (Detector.prepare)
    settings: DetectSettings  # checked (Detector.resolve)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One thread running the detector on batches of queued jobs (see the module docstring)."""

    def __init__(self, detector, *, window_s: float, max_batch: int, queue_size: int) -> None:
        self.detector = detector
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False  # set by stop(): new requests get 503
        self.counters = {
            "requests": 0, "completed": 0, "batches": 0, "batched_images": 0, "max_batch_seen": 0,
            "rejected_queue_full": 0, "timeouts": 0, "client_errors": 0, "server_errors": 0,
            "client_disconnects": 0, "batches_split_after_a_failure": 0,
        }  # fmt: skip
        self.errors = ErrorLog()
        self.batch_sizes: dict[int, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.counters)
            out["batch_size_histogram"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        out["queued"] = self.queue.qsize()
        out["mean_batch"] = round(out["batched_images"] / out["batches"], 3) if out["batches"] else 0.0
        out["batch_window_ms"] = self.window_s * 1000
        out["max_batch"] = self.max_batch
        out["queue_size"] = self.queue.maxsize
        out["distinct_errors"] = self.errors.counts()
        return out

    def running(self) -> bool:
        """Whether the batching thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open for requests (the service's start-up); also after a stop()."""
        with self._lock:
            self._closed = False
            self._stop.clear()  # also when a thread that stop() could not join is still finishing its batch
            self._ensure_running()

    def _ensure_running(self) -> None:
        """Start the batching thread if it is not running; call with the lock held."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ssd-serve-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand, then answer every request still queued with 503 (shutting down)."""
        with self._lock:
            self._closed = True
        self._stop.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(HTTPProblem(503, "the service is shutting down; retry later"))

    def submit(self, job: _Job) -> concurrent.futures.Future:
        # Checked and queued under the lock that stop() takes to close: no job slips in after the final drain.
        with self._lock:
            if self._closed:
                raise HTTPProblem(503, "the service is shutting down; retry later")
            self._ensure_running()
            try:
                self.queue.put_nowait(job)
            except queue.Full:
                raise HTTPProblem(503, f"busy: {self.queue.maxsize} requests are already waiting; retry later") from None
        return job.future

    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.monotonic() + self.window_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get_nowait() if remaining <= 0 else self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is None:  # stop()'s wake-up: it has set _stop already (unless a start() cleared it since)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if first is None:
                if self._stop.is_set():
                    break
                continue  # a stop() that a start() has since cancelled
            jobs = [j for j in self._collect(first) if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._serve(jobs)

    def _serve(self, jobs: list[_Job]) -> None:
        """Answer every job: the batch in one pass or, when that pass fails, each half again (bisection, about
        2 log2(n) extra passes for one bad job in n), so that a job that cannot be served (whatever the reason)
        fails by itself with a 500 and its neighbours get the answers they would have got alone. Never raises:
        the thread keeps serving."""
        try:
            results = self._detect(jobs)
        except Exception as err:
            if len(jobs) > 1:
                self.count("batches_split_after_a_failure")
                half = len(jobs) // 2
                self._serve(jobs[:half])
                self._serve(jobs[half:])
                return
            self.errors.report(err, "detection")
            jobs[0].future.set_exception(HTTPProblem(500, f"detection failed: {type(err).__name__}"))
            return
        with self._lock:
            self.counters["batches"] += 1
            self.counters["batched_images"] += len(jobs)
            self.counters["max_batch_seen"] = max(self.counters["max_batch_seen"], len(jobs))
            self.batch_sizes[len(jobs)] = self.batch_sizes.get(len(jobs), 0) + 1
        for j, r in zip(jobs, results):
            j.future.set_result(r)

    def _detect(self, jobs: list[_Job]):
        """One forward pass for all jobs, each job's own settings in the decoding: the Detector's steps."""
        images = [j.image for j in jobs]
        return self.detector.finish(self.detector.run_batch(images), images, [j.settings for j in jobs])


# --- settings ---------------------------------------------------------------------------------------


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_settings(params: dict[str, str], detector) -> tuple[DetectSettings, bool]:
    """Query/form strings -> (the detector's settings with the request's overrides, checked completely by
    :meth:`~ssd.detector.Detector.resolve`; annotated). Raises HTTPProblem(422) on a bad value."""
    known = {*DECODING_SETTINGS, "annotated"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise HTTPProblem(422, f"unknown parameter {unknown[0]!r}; parameters are: {', '.join(sorted(known))}")
    overrides: dict[str, Any] = {}
    for key in DECODING_SETTINGS:
        if key in params:
            try:
                overrides[key] = setting_spec(key).parse(params[key])
            except ValueError as err:
                raise HTTPProblem(422, f"{key}: {err}") from err
    annotated = False
    if "annotated" in params:
        v = params["annotated"].strip().lower()
        if v not in _TRUE | _FALSE:
            raise HTTPProblem(422, f"annotated: {params['annotated']!r} is not true or false")
        annotated = v in _TRUE
    try:
        return detector.resolve(**overrides), annotated
    except SSDError as err:
        raise HTTPProblem(422, str(err)) from err


def _annotated_png(image: "torch.Tensor", dets) -> str:
    from PIL import Image

    from ssd.visualize import draw_detections

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    draw_detections(pil, dets).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def model_info(detector, checkpoint_format_version: int | None = None) -> dict[str, Any]:
    """What ``GET /model`` answers; a PyTorch model's checkpoint format is this library's unless given."""
    from ssd.visualize import class_color

    if checkpoint_format_version is None and getattr(detector, "backend", None) == "torch":
        from ssd.checkpoint import FORMAT_VERSION

        checkpoint_format_version = FORMAT_VERSION
    model = detector.model
    config = getattr(model, "config", None)
    return {
        "backend": detector.backend,
        "preset": getattr(config, "preset", None),
        "input_size": detector.image_size,
        "classes": list(detector.class_names),
        "class_colors": ["#%02x%02x%02x" % class_color(i + 1) for i in range(len(detector.class_names))],
        "checkpoint_format_version": checkpoint_format_version,
        "device": str(detector.device),
        "defaults": detector.settings.decoding_dict(),
    }


# --- the app ----------------------------------------------------------------------------------------


async def _read_body(request, max_upload_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``max_upload_bytes``."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPProblem(400, "bad Content-Length header") from None
        if declared > max_upload_bytes:
            raise HTTPProblem(413, f"upload of {declared} bytes is over the limit of {max_upload_bytes} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_upload_bytes:
            raise HTTPProblem(413, f"upload over the limit of {max_upload_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_NO_IMAGE = "no image: send a multipart file field named 'image' (or the image as the raw body)"


async def _multipart_image(request, body: bytes, params: dict[str, str]) -> tuple[bytes, str]:
    """The file field ``image`` of a multipart body (already read) and its file name; the other fields go to
    ``params``."""
    from starlette.requests import Request

    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception as err:
        raise HTTPProblem(400, f"cannot parse the multipart form: {getattr(err, 'detail', err)}") from err
    image, name = None, "<upload>"
    for key, value in form.multi_items():
        if hasattr(value, "read"):  # an UploadFile
            if key != "image":
                raise HTTPProblem(400, f"unexpected file field {key!r}: send the image in the field 'image'")
            image, name = await value.read(), (value.filename or "<upload>")
        elif key == "image":
            raise HTTPProblem(400, "field 'image' must be a file upload, not text")
        else:
            params[key] = str(value)
    await form.close()
    if image is None:
        raise HTTPProblem(400, _NO_IMAGE)
    return image, name


async def _image_and_params(request, max_upload_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, file name, settings fields) of a ``POST /detect``: multipart or a raw body."""
    params = dict(request.query_params)
    body = await _read_body(request, max_upload_bytes)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        image, name = await _multipart_image(request, body, params)
        return image, name, params
    if ctype.startswith(("application/x-www-form-urlencoded", "text/", "application/json")):
        raise HTTPProblem(415, f"send the image as multipart field 'image' or as the raw body, not {ctype.split(';')[0]}")
    if not body:
        raise HTTPProblem(400, _NO_IMAGE)
    return body, "<upload>", params


def _add_error_handlers(app, batcher: Batcher) -> None:
    """Every error answer is ``{"detail": message}``; an unexpected one is a 500 with a one-line message."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def problem(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    counter = {500: "server_errors", 503: "rejected_queue_full", 504: "timeouts", CLIENT_CLOSED: "client_disconnects"}

    @app.exception_handler(HTTPProblem)
    async def _on_problem(request, exc: HTTPProblem):
        batcher.count(counter.get(exc.status, "client_errors" if exc.status < 500 else "server_errors"))
        return problem(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request, exc: StarletteHTTPException):
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _on_error(request, exc: Exception):  # outside /detect (which answers its own errors; see _answer)
        batcher.errors.report(exc, request.url.path)
        batcher.count("server_errors")
        return problem(500, f"internal error: {type(exc).__name__}")


def create_app(detector, limits: ServeLimits | None = None, *, checkpoint_format_version: int | None = None):
    """A FastAPI app serving ``detector`` (a :class:`ssd.detector.Detector`) within ``limits`` (default
    :class:`ServeLimits`); see the module docstring."""
    require_serve_dependencies()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    limits = ServeLimits() if limits is None else limits
    batcher = Batcher(detector, window_s=limits.batch_window_ms / 1000.0, max_batch=limits.max_batch,
                      queue_size=limits.queue_size)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="ssd detection service", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher, app.state.detector, app.state.limits = batcher, detector, limits
    info = model_info(detector, checkpoint_format_version)
    _add_error_handlers(app, batcher)

    @app.post("/detect")
    async def detect(request: Request):
        batcher.count("requests")
        try:
            return await _answer(request)
        except HTTPProblem:
            raise
        except ClientDisconnect:
            raise HTTPProblem(CLIENT_CLOSED, "the client closed the connection") from None
        except Exception as err:  # a 500 answered here keeps the connection open (a handler of Exception closes it)
            batcher.errors.report(err, "/detect")
            raise HTTPProblem(500, f"internal error: {type(err).__name__}") from err

    async def _answer(request: Request) -> dict[str, Any]:
        data, name, params = await _image_and_params(request, limits.max_upload_bytes)
        settings, annotated = parse_settings(params, detector)
        image = await run_in_threadpool(decode_upload, data, name, limits.max_pixels)
        prepared = await run_in_threadpool(detector.prepare, image, name)
        fut = batcher.submit(_Job(image=prepared, settings=settings))
        try:
            dets = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=limits.request_timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPProblem(504, f"no answer within {limits.request_timeout_s:g} s (the service is overloaded)") from None
        out = {**dets.to_dict(), "settings": settings.decoding_dict()}
        if annotated:
            out["annotated_png"] = await run_in_threadpool(_annotated_png, image, dets)
        batcher.count("completed")
        return out

    @app.get("/health")
    async def health():
        return {"status": "ok" if batcher.running() else "starting", "queued": batcher.queue.qsize()}

    @app.get("/model")
    async def model():
        return info

    @app.get("/stats")
    async def stats():
        return batcher.stats()

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
