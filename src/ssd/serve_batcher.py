"""Micro-batching for ``ssd serve``: a :class:`Batcher` thread takes the queued :class:`Job` s that arrive within
a window (at most ``max_batch``), runs them through the detector in one forward pass, and answers each job's
future; a failing batch is bisected so that the failure stays with the job that caused it. :class:`ErrorLog`
logs each distinct unexpected error once.

::

    Job(PreparedImage, DetectSettings) -> Batcher.submit -> queue -> Batcher._serve(jobs)
        -> Detector.run_batch (one forward pass) -> Detector.finish (each job's settings) -> job.future
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ssd.serve_limits import HTTPProblem
from ssd.settings import DetectSettings

__all__ = ["Batcher", "ErrorLog", "Job"]

log = logging.getLogger("ssd.serve")


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
class Job:
    """One request's image and settings, and the future its answer (an ImageDetections, or an HTTPProblem) goes to."""

    image: Any  # a PreparedImage (Detector.prepare)
    settings: DetectSettings  # checked (Detector.resolve)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One thread running the detector on batches of queued jobs (see the module docstring)."""

    def __init__(self, detector, *, window_s: float, max_batch: int, queue_size: int) -> None:
        self.detector = detector
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False  # set by stop(): new requests get 503
        self.counters = {
            "requests": 0, "completed": 0, "batches": 0, "batched_images": 0, "max_batch_seen": 0,
            "rejected_queue_full": 0, "timeouts": 0, "client_errors": 0, "server_errors": 0,
            "client_disconnects": 0, "batches_split_after_a_failure": 0, "rejected_busy": 0,
            "upload_timeouts": 0,
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

    def submit(self, job: Job) -> concurrent.futures.Future:
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

    def _collect(self, first: Job) -> list[Job]:
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

    def _serve(self, jobs: list[Job]) -> None:
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

    def _detect(self, jobs: list[Job]):
        """One forward pass for all jobs, each job's own settings in the decoding: the Detector's steps."""
        images = [j.image for j in jobs]
        return self.detector.finish(self.detector.run_batch(images), images, [j.settings for j in jobs])
