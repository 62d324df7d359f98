"""The service's limits and the guards that hold them, so that what a client sends bounds what it costs:

::

    connection  -- beyond max_connections open ones, every request is answered 503 (uvicorn still accepts
                   the connection); its request line and headers within header_timeout_s of connecting or of
                   its previous answer, else it is closed; one whose answer went out before its upload was
                   whole (a 408, a 413, an error) is closed, so it cannot keep sending
    upload      -- at most max_upload_bytes (413); its declared size reserved among max_upload_bytes_in_flight
                   before it is read (no room within body_timeout_s: 503); arrived within body_timeout_s (408)
    image       -- width x height from the header (read in a worker thread), at most max_pixels (413); then
                   those pixels are reserved among max_pixels_in_flight *before* decoding (waits for room,
                   then 503), and freed once answered: concurrent uploads cannot multiply memory
    queue       -- at most queue_size requests waiting for the network (503); the whole request, from the wait
                   for pixels to the answer, within request_timeout_s (504)

A decoded pixel costs about 15 bytes while the image is decoded and prepared (Pillow's RGBX buffer, the uint8
array and tensor, the resized float copy), so ``max_pixels_in_flight`` pixels cost about 15 times as many bytes.

:func:`server_config` is the uvicorn configuration that sets the connection-level limits (``ssd serve`` and the
tests run it). Nothing here imports torch: ``ssd serve --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ssd.errors import SSDError

__all__ = ["Budget", "HTTPProblem", "NoRoom", "ServeLimits", "server_config"]


class HTTPProblem(Exception):
    """An error answer: status code, one-line message, and the ``/stats`` counter it adds to (default: by status)."""

    def __init__(self, status: int, message: str, counter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.counter = counter


@dataclass(frozen=True)
class ServeLimits:
    """The service's limits (see the module docstring for where each applies). Validated on construction.

    ``max_upload_bytes`` and ``max_pixels`` bound one request; ``max_upload_bytes_in_flight`` and
    ``max_pixels_in_flight`` bound the uploads and the decoded images of all requests together (at least one
    request's worth each); ``batch_window_ms`` is how long the batcher waits for more requests (0: no wait),
    ``max_batch`` the images per forward pass; ``queue_size`` requests may wait; beyond ``max_connections`` open
    connections requests get 503; ``header_timeout_s``, ``body_timeout_s`` and ``request_timeout_s`` bound how long
    a client may take to send its headers and its upload, and the service to answer.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_bytes_in_flight: int = 80 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_pixels_in_flight: int = 80_000_000
    batch_window_ms: float = 5.0
    max_batch: int = 16
    queue_size: int = 64
    max_connections: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_upload_bytes_in_flight", "max_pixels", "max_pixels_in_flight",
                     "max_batch", "queue_size", "max_connections"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SSDError(f"{name} must be a positive integer, got {v!r}")
        for name in ("batch_window_ms", "header_timeout_s", "body_timeout_s", "request_timeout_s"):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            low_ok = v >= 0 if name == "batch_window_ms" else v > 0
            if not ok or not low_ok:
                kind = "non-negative" if name == "batch_window_ms" else "positive"
                raise SSDError(f"{name} must be a {kind} number, got {v!r}")
        for total, one in (("max_pixels_in_flight", "max_pixels"), ("max_upload_bytes_in_flight", "max_upload_bytes")):
            if getattr(self, total) < getattr(self, one):
                raise SSDError(f"{total} ({getattr(self, total)}) must be at least {one} ({getattr(self, one)}): "
                               "a request at the limit could never be admitted")  # fmt: skip


class NoRoom(Exception):
    """A :class:`Budget` had no room for a reservation within its timeout."""


class Budget:
    """A quantity in flight bounded by ``capacity`` (decoded pixels, upload bytes): :meth:`hold` reserves an amount
    before what it measures is allocated, waiting for room, and frees it when the request is done. Used from one
    event loop."""

    def __init__(self, capacity: int, unit: str) -> None:
        self.capacity, self.unit = capacity, unit
        self.in_use = 0
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, amount: int, timeout_s: float) -> AsyncIterator[None]:
        """Reserve ``amount`` (at most ``capacity``) for the body of the ``async with``; raises :class:`NoRoom`
        when no room frees up within ``timeout_s``."""
        amount = min(amount, self.capacity)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.in_use + amount <= self.capacity),
                                       max(timeout_s, 0.0))  # fmt: skip
            except asyncio.TimeoutError as err:
                raise NoRoom(f"no room for {amount} more {self.unit} within {max(timeout_s, 0.0):g} s") from err
            self.in_use += amount
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= amount
                self._changed.notify_all()


LINGER_S = 2.0
"""How long a connection answered before its upload was whole keeps reading (and dropping) the rest."""


class _LingeringTransport:
    """A connection's transport as uvicorn's protocol sees it, except that closing it while the client is still
    sending an upload (answered early: 413, 408, 503) is a "lingering close", as Apache and nginx do: the answer is
    followed by FIN, what the client still sends is read and dropped for at most LINGER_S, then the socket closes.
    Closing at once with unread upload bytes makes the kernel send a reset, which can destroy the answer before the
    client reads it. Everything else is the transport's own."""

    def __init__(self, transport: Any, protocol: Any) -> None:
        self._transport, self._protocol, self._closing = transport, protocol, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not (self._protocol.upload_unfinished() and self._transport.can_write_eof()):
            self._transport.close()
            return
        self._protocol.lingering = True
        self._transport.write_eof()
        self._transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)


def _guarded_h11_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline on each request's head: a connection that has not sent a complete
    request line and headers within ``header_timeout_s`` of connecting, or of its previous answer, is closed.
    (uvicorn times idle keep-alive connections out, but not one that trickles its headers a byte at a time.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline = 0

        lingering = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(_LingeringTransport(transport, self))
            self._arm_header_deadline()

        def upload_unfinished(self) -> bool:
            return self.conn.their_state is h11.SEND_BODY

        def on_response_complete(self) -> None:
            unfinished = self.upload_unfinished()  # answered before the upload was whole
            super().on_response_complete()
            if unfinished:
                self.transport.close()  # lingers: the client must not go on sending, holding the connection
                return
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            if not self.lingering:  # lingering: the rest of an upload already answered, dropped
                super().data_received(data)

        def _arm_header_deadline(self) -> None:
            self._deadline += 1
            asyncio.get_running_loop().call_later(header_timeout_s, self._enforce_header_deadline, self._deadline)

        def _enforce_header_deadline(self, deadline: int) -> None:
            waiting_for_head = self.conn.their_state is h11.IDLE
            if deadline == self._deadline and waiting_for_head and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def server_config(app: Any, limits: ServeLimits, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any):
    """A ``uvicorn.Config`` for ``app`` with ``limits``' connection limits: beyond ``max_connections`` open ones
    uvicorn answers 503; the header deadline, and h11 (whose parser the deadline hooks into)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_guarded_h11_protocol(limits.header_timeout_s),
                          limit_concurrency=limits.max_connections, **kwargs)  # fmt: skip
