"""``ssd serve``: a detection service over HTTP (FastAPI + uvicorn) with a web page, and micro-batching.

::

    import uvicorn
    from ssd.detector import Detector
    from ssd.serve import ServeLimits, create_app, server_config

    limits = ServeLimits(max_batch=8)
    app = create_app(Detector.from_checkpoint("checkpoint.pt"), limits)
    uvicorn.Server(server_config(app, limits, host="127.0.0.1")).run()   # connection limits and deadlines too

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

    upload (its bytes reserved first) -> upload_pixels (header) -> pixels reserved  (waits for room, else 503)
      -> decode_upload (uint8 RGB, upright) -> Detector.prepare          (worker threads, in parallel)
    query/form fields -> parse_settings -> Detector.resolve                (checked completely, else 422)
      -> Batcher: requests arriving within ``batch_window_ms`` of each other, at most ``max_batch``
         -> Detector.run_batch (one forward pass) -> Detector.finish (each request's own settings)
      -> ImageDetections.to_dict() + the settings used (+ annotated PNG)

The limits are a :class:`ServeLimits` (:mod:`ssd.serve_limits` says where each applies). An image's pixels
are reserved among ``max_pixels_in_flight`` from its header, before it is decoded.

Errors are JSON ``{"detail": "message"}``: 400 (no image, or a bad field), 408 (the upload took over
``body_timeout_s``), 413 (upload over ``max_upload_bytes`` or image over ``max_pixels``), 415 (not an image), 422
(a damaged image or a bad setting), 503 (queue full: ``queue_size`` requests waiting; no room for the upload or
the image's pixels in time; over ``max_connections``), 504 (no answer within ``request_timeout_s``).
An unexpected failure is a 500 with a one-line message, never a traceback, and the service keeps running: a batch
that fails is split and re-run (bisection), so the failure stays with the request that caused it; the connection
stays open; each distinct error is logged once with its traceback (``/stats`` counts the repeats).
"""

import asyncio
import base64
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssd.errors import SSDError
from ssd.serve_batcher import Batcher, Job
from ssd.serve_limits import Budget, HTTPProblem, NoRoom, ServeLimits, server_config
from ssd.settings import DECODING_SETTINGS, DetectSettings, setting_spec

if TYPE_CHECKING:  # only in annotations: `ssd serve --help` stays torch-free
    import torch

__all__ = ["create_app", "require_serve_dependencies", "STATIC_DIR", "ServeLimits", "server_config"]

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


# --- images ---------------------------------------------------------------------------------------


def upload_pixels(data: bytes, name: str, max_pixels: int) -> tuple[int, bool]:
    """(width x height from the image header, whether the header was readable) of uploaded bytes, without decoding;
    a header that cannot tell counts as ``max_pixels`` (the most the decoder will be allowed). Raises
    :class:`HTTPProblem` (400 empty, 413 over ``max_pixels``)."""
    from PIL import Image

    if not data:
        raise HTTPProblem(400, "empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as err:
        raise HTTPProblem(413, f"{name}: image too large (over the decompression-bomb limit)") from err
    except Exception:
        return max_pixels, False
    if w * h > max_pixels:
        raise HTTPProblem(413, f"{name}: image of {w} x {h} pixels is over the limit of {max_pixels} pixels")
    return w * h, True


def decode_upload(data: bytes, name: str, max_pixels: int, header_ok: bool | None = None) -> "torch.Tensor":
    """Uploaded bytes -> uint8 RGB (3, H, W), upright, decoded in memory exactly as
    :func:`ssd.detector.load_image` decodes the same file (so the service and ``Detector`` agree). Huge images are
    refused from their header, before decoding (``header_ok``: :func:`upload_pixels` ran already and said whether
    the header was readable). Raises :class:`HTTPProblem`."""
    from ssd.data.image import decode_image_bytes

    if header_ok is None:
        _, header_ok = upload_pixels(data, name, max_pixels)
    try:
        image = decode_image_bytes(data, name)
    except SSDError as err:
        raise HTTPProblem(422 if header_ok else 415, str(err)) from err
    if image.shape[1] * image.shape[2] > max_pixels:
        raise HTTPProblem(413, f"{name}: image of {image.shape[2]} x {image.shape[1]} pixels is over the limit of {max_pixels} pixels")
    return image


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


def _declared_length(request, max_upload_bytes: int) -> int:
    """The upload's size from its Content-Length (400 when malformed, 413 over the limit), or the limit when the
    client does not say (chunked): what the upload may cost."""
    length = request.headers.get("content-length")
    if length is None:
        return max_upload_bytes
    try:
        declared = int(length)
    except ValueError:
        raise HTTPProblem(400, "bad Content-Length header") from None
    if declared < 0:
        raise HTTPProblem(400, "bad Content-Length header")
    if declared > max_upload_bytes:
        raise HTTPProblem(413, f"upload of {declared} bytes is over the limit of {max_upload_bytes} bytes")
    return declared


async def _read_body(request, max_upload_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``max_upload_bytes``."""
    _declared_length(request, max_upload_bytes)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_upload_bytes:
            raise HTTPProblem(413, f"upload over the limit of {max_upload_bytes} bytes")
        chunks.append(chunk)
    request.state.upload_read = True  # an error answer from here on leaves the connection open
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

    def problem(status: int, message: str, close: bool = False) -> JSONResponse:
        # an answer given before the upload was read ends the connection, and says so, so that no client sends its
        # next request into it (the server drops the rest of the upload, then closes: serve_limits)
        return JSONResponse({"detail": message}, status_code=status, headers={"Connection": "close"} if close else None)

    counter = {500: "server_errors", 503: "rejected_queue_full", 504: "timeouts", CLIENT_CLOSED: "client_disconnects"}

    @app.exception_handler(HTTPProblem)
    async def _on_problem(request, exc: HTTPProblem):
        batcher.count(exc.counter or counter.get(exc.status, "client_errors" if exc.status < 500 else "server_errors"))
        return problem(exc.status, exc.message, close=getattr(request.state, "upload_read", True) is False)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request, exc: StarletteHTTPException):
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _on_error(request, exc: Exception):  # outside /detect (which answers its own errors; see _answer)
        batcher.errors.report(exc, request.url.path)
        batcher.count("server_errors")
        return problem(500, f"internal error: {type(exc).__name__}")


class DetectEndpoint:
    """``POST /detect``: read the upload (within ``body_timeout_s``), check its settings, reserve its pixels before
    decoding it, queue it for the batcher and answer; every failure is an :class:`HTTPProblem` (see the module
    docstring), a 500 answered here so that the connection stays open."""

    def __init__(self, detector, limits: ServeLimits, batcher: Batcher) -> None:
        self.detector, self.limits, self.batcher = detector, limits, batcher
        self.uploads = Budget(limits.max_upload_bytes_in_flight, "upload bytes")
        self.pixels = Budget(limits.max_pixels_in_flight, "decoded pixels")

    async def __call__(self, request) -> dict[str, Any]:
        from starlette.requests import ClientDisconnect

        self.batcher.count("requests")
        request.state.upload_read = False
        try:
            return await self._answer(request)
        except HTTPProblem:
            raise
        except NoRoom as err:
            raise HTTPProblem(503, f"busy: {err}; retry later", counter="rejected_busy") from None
        except ClientDisconnect:
            raise HTTPProblem(CLIENT_CLOSED, "the client closed the connection") from None
        except Exception as err:  # a 500 answered here keeps the connection open (a handler of Exception closes it)
            self.batcher.errors.report(err, "/detect")
            raise HTTPProblem(500, f"internal error: {type(err).__name__}") from err

    async def _answer(self, request) -> dict[str, Any]:
        """Room for the upload's bytes, then the upload, then room for its pixels (from the header, in a worker
        thread), then detection; one deadline (``request_timeout_s``) from the wait for pixels to the answer."""
        from starlette.concurrency import run_in_threadpool

        limits, loop = self.limits, asyncio.get_running_loop()
        async with self.uploads.hold(_declared_length(request, limits.max_upload_bytes), limits.body_timeout_s):
            try:
                data, name, params = await asyncio.wait_for(_image_and_params(request, limits.max_upload_bytes),
                                                            timeout=limits.body_timeout_s)  # fmt: skip
            except asyncio.TimeoutError:
                raise HTTPProblem(408, f"the upload did not arrive within {limits.body_timeout_s:g} s",
                                  counter="upload_timeouts") from None  # fmt: skip
            settings, annotated = parse_settings(params, self.detector)
            deadline = loop.time() + limits.request_timeout_s
            pixels, header_ok = await run_in_threadpool(upload_pixels, data, name, limits.max_pixels)
            async with self.pixels.hold(pixels, deadline - loop.time()):  # room for it before it is decoded
                return await self._detect(data, name, header_ok, settings, annotated, deadline)

    async def _detect(self, data: bytes, name: str, header_ok: bool, settings: DetectSettings, annotated: bool,
                      deadline: float) -> dict[str, Any]:  # fmt: skip
        from starlette.concurrency import run_in_threadpool

        if deadline <= asyncio.get_running_loop().time():  # admitted as the deadline passed: decode nothing
            raise HTTPProblem(504, f"no answer within {self.limits.request_timeout_s:g} s (the service is overloaded)")
        image = await run_in_threadpool(decode_upload, data, name, self.limits.max_pixels, header_ok)
        prepared = await run_in_threadpool(self.detector.prepare, image, name)
        fut = self.batcher.submit(Job(image=prepared, settings=settings))
        try:
            dets = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=deadline - asyncio.get_running_loop().time())
        except asyncio.TimeoutError:
            fut.cancel()
            timeout_s = self.limits.request_timeout_s
            raise HTTPProblem(504, f"no answer within {timeout_s:g} s (the service is overloaded)") from None
        out = {**dets.to_dict(), "settings": settings.decoding_dict()}
        if annotated:
            out["annotated_png"] = await run_in_threadpool(_annotated_png, image, dets)
        self.batcher.count("completed")
        return out


def create_app(detector, limits: ServeLimits | None = None, *, checkpoint_format_version: int | None = None):
    """A FastAPI app serving ``detector`` (a :class:`ssd.detector.Detector`) within ``limits`` (default
    :class:`ServeLimits`); see the module docstring."""
    require_serve_dependencies()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles
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

    endpoint = DetectEndpoint(detector, limits, batcher)

    @app.post("/detect")
    async def detect(request: Request):
        return await endpoint(request)

    @app.get("/health")
    async def health():
        return {"status": "ok" if batcher.running() else "starting", "queued": batcher.queue.qsize()}

    @app.get("/model")
    async def model():
        return info

    @app.get("/stats")
    async def stats():
        pixels, uploads = endpoint.pixels, endpoint.uploads
        return {**batcher.stats(), "pixels_in_flight": pixels.in_use, "max_pixels_in_flight": pixels.capacity,
                "upload_bytes_in_flight": uploads.in_use, "max_upload_bytes_in_flight": uploads.capacity}  # fmt: skip

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
