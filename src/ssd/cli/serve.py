"""``ssd serve``: the detection service and its web page (see :mod:`ssd.serve`), on loopback by default."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ssd.cli.checks import add_setting_options, non_negative, positive, settings_from_args
from ssd.errors import SSDError


def register(sub) -> None:
    from ssd.device import DEVICE_HELP
    from ssd.serve import ServeLimits
    from ssd.settings import DECODING_SETTINGS, DetectSettings, defaults_explained

    d = ServeLimits()
    p = sub.add_parser(
        "serve",
        help="an HTTP detection service with a web page (POST /detect, GET /)",
        description="Serve a checkpoint over HTTP: POST /detect (an image as multipart field 'image' or the raw "
        "body; min_score, max_overlap, top_k, suppress, annotated as query parameters) -> JSON detections; "
        "GET / is a web page to try it; GET /health, /model, /stats. Requests arriving within the batch window "
        "run through the model together. Needs: pip install 'ssd-detector[serve]'. " + defaults_explained(),
        epilog="Example: ssd serve --checkpoint ssd-demo/run/model.ckpt, then "
        "curl -F image=@dog.jpg 'http://127.0.0.1:8000/detect?min_score=0.3'",
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="an ssd checkpoint")
    model.add_argument("--onnx", metavar="MODEL.onnx", help="a file written by `ssd export` (int8 ones too), run with onnxruntime")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    add_setting_options(p.add_argument_group("the settings of requests that do not give their own"),
                        DetectSettings(), DECODING_SETTINGS)  # fmt: skip
    p.add_argument("--max-upload-mb", type=positive(float), default=d.max_upload_bytes / 2**20, metavar="MB",
                   help=f"largest upload accepted, in MiB (default {d.max_upload_bytes / 2**20:g}; larger: 413)")
    p.add_argument("--max-pixels", type=positive(int), default=d.max_pixels,
                   help=f"largest image accepted, width x height (default {d.max_pixels}; larger: 413)")
    p.add_argument("--batch-window-ms", type=non_negative, default=d.batch_window_ms, metavar="MS",
                   help=f"how long to wait for more requests to batch together (default {d.batch_window_ms:g}; 0: no wait)")
    p.add_argument("--max-batch", type=positive(int), default=d.max_batch, help=f"images per forward pass at most (default {d.max_batch})")
    p.add_argument("--queue-size", type=positive(int), default=d.queue_size,
                   help=f"requests waiting at most; more get 503 (default {d.queue_size})")
    p.add_argument("--timeout", type=positive(float), default=d.request_timeout_s, metavar="S",
                   help=f"seconds a request may wait for its answer; then 504 (default {d.request_timeout_s:g})")
    p.add_argument("--max-pixels-in-flight", type=positive(int), default=d.max_pixels_in_flight, metavar="N",
                   help="decoded pixels of all requests together; a request waits for room before its image is "
                   f"decoded, then 503 (default {d.max_pixels_in_flight}; a pixel costs about 15 bytes while it is "
                   f"decoded and prepared: about {15 * d.max_pixels_in_flight / 2**30:.1f} GiB)")  # fmt: skip
    p.add_argument("--max-upload-mb-in-flight", type=positive(float), default=d.max_upload_bytes_in_flight / 2**20,
                   metavar="MB", help="uploads of all requests together, in MiB, reserved from each one's declared "
                   f"size before it is read; no room in time: 503 (default {d.max_upload_bytes_in_flight / 2**20:g})")  # fmt: skip
    p.add_argument("--max-connections", type=positive(int), default=d.max_connections, metavar="N",
                   help=f"beyond this many open connections every request gets 503 (default {d.max_connections})")
    p.add_argument("--header-timeout", type=positive(float), default=d.header_timeout_s, metavar="S",
                   help=f"seconds a connection has to send a request's headers; then it is closed (default {d.header_timeout_s:g})")
    p.add_argument("--body-timeout", type=positive(float), default=d.body_timeout_s, metavar="S",
                   help=f"seconds an upload may take to arrive; then 408 (default {d.body_timeout_s:g})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssd.serve import ServeLimits, create_app, require_serve_dependencies, server_config
    from ssd.settings import DECODING_SETTINGS, DetectSettings

    require_serve_dependencies()
    import uvicorn

    from ssd.checkpoint import load_checkpoint
    from ssd.detector import Detector

    if not 0 <= args.port <= 65535:
        raise SSDError(f"--port {args.port}: not a port (0-65535)")
    settings = settings_from_args(args, DetectSettings(), DECODING_SETTINGS)
    if args.onnx:
        version, detector = None, Detector.from_onnx(args.onnx, device=args.device)
    else:
        version = load_checkpoint(args.checkpoint)["format_version"]
        detector = Detector.from_checkpoint(args.checkpoint, device=args.device)
    detector.settings = detector.checked(settings, prefix="--")
    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
        max_upload_bytes_in_flight=int(args.max_upload_mb_in_flight * 2**20),
        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, queue_size=args.queue_size,
        request_timeout_s=args.timeout, max_pixels_in_flight=args.max_pixels_in_flight,
        max_connections=args.max_connections, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
    )  # fmt: skip
    app = create_app(detector, limits, checkpoint_format_version=version)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"ssd serve: listening on {args.host}: reachable from other machines, with no authentication", file=sys.stderr)
    print(f"ssd serve: {detector!r}", file=sys.stderr)
    print(f"ssd serve: open http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/", file=sys.stderr)
    try:
        uvicorn.Server(server_config(app, limits, host=args.host, port=args.port, log_level=args.log_level)).run()
    except OSError as err:
        raise SSDError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    return 0
