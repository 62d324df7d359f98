"""Throughput of ``ssd serve`` on loopback: micro-batching vs one image at a time.

Starts the service twice in this process (uvicorn in a thread) on the same model: once batching
(``--batch-window-ms``, ``--max-batch``), once one at a time (window 0, max batch 1), and sends the same
requests from ``--clients`` concurrent clients to each, printing requests/s and the batch sizes seen.

    python bench/serve_load.py                         # small preset, random weights, CPU
    python bench/serve_load.py --checkpoint ckpt.pt --device cuda --requests 400 --clients 16

Images: VOCmini JPEGs from ../shared (or --images DIR). Needs fastapi, uvicorn, python-multipart, httpx.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "VOCmini" / "VOCdevkit" / "VOC2007" / "JPEGImages"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(app, datas, n_requests: int, n_clients: int) -> tuple[float, dict]:
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as c:  # warm-up
            for name, data in datas[:2]:
                c.post("/detect", files={"image": (name, data)}).raise_for_status()

        def worker(k: int) -> int:
            errors = 0
            with httpx.Client(base_url=url, timeout=120) as c:
                for i in range(k, n_requests, n_clients):
                    name, data = datas[i % len(datas)]
                    errors += c.post("/detect", files={"image": (name, data)}).status_code != 200
            return errors

        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_clients) as pool:
            errors = sum(pool.map(worker, range(n_clients)))
        elapsed = time.perf_counter() - t0
        with httpx.Client(base_url=url) as c:
            stats = c.get("/stats").json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    if errors:
        raise SystemExit(f"{errors} requests failed")
    return n_requests / elapsed, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="an ssd checkpoint (default: the small preset with random weights)")
    ap.add_argument("--preset", default="small", help="preset for the random-weight model (default small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batch-window-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import ssd
    from ssd.detector import Detector
    from ssd.serve import ServeLimits, create_app

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            torch.manual_seed(0)
            ckpt = Path(tmp) / f"{args.preset}.pt"
            ssd.save_checkpoint(ssd.build_model(args.preset, ssd.VOC_CLASSES), ckpt)
        detector = Detector.from_checkpoint(ckpt, device=args.device, min_score=0.5, top_k=50)
    files = sorted(args.images.glob("*.jpg"))[:16]
    if not files:
        raise SystemExit(f"no .jpg images in {args.images}")
    datas = [(p.name, p.read_bytes()) for p in files]
    print(f"{detector!r}; {args.requests} requests from {args.clients} clients, {len(datas)} images; "
          f"torch threads {args.threads}", flush=True)  # fmt: skip
    rows = []
    for label, window, max_batch in (
        (f"batched (window {args.batch_window_ms:g} ms, max batch {args.max_batch})", args.batch_window_ms, args.max_batch),
        ("one at a time (window 0, max batch 1)", 0.0, 1),
    ):
        app = create_app(detector, ServeLimits(batch_window_ms=window, max_batch=max_batch, queue_size=max(64, args.clients * 2)))
        rps, stats = run_load(app, datas, args.requests, args.clients)
        rows.append((label, rps, stats))
        print(f"{label:<48} {rps:8.1f} requests/s   mean batch {stats['mean_batch']:.2f}, largest {stats['max_batch_seen']}", flush=True)
    print(f"speed-up from batching: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
