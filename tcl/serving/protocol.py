"""uvicorn's HTTP/1.1 protocol with a deadline for the request head.

uvicorn times out idle keep-alive connections, but not a client that opens a connection and sends its request line
and headers slowly or never (a "slowloris": one byte every few seconds, or nothing): each such connection is held
forever and counts against the connection limit. ``HeadDeadlineProtocol`` closes a connection whose request head
(request line and headers) is not complete within ``HEAD_TIMEOUT`` seconds of the connection opening, or of the
previous response on a keep-alive connection. The body has its own deadline (``tcl.serving.app.BodySizeLimit``).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0


class HeadDeadlineProtocol(H11Protocol):
    head_timeout = HEAD_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a request head still incomplete (or the next one not begun)
            if self._deadline is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.head_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info("closing a connection whose request head took over %.0f s", self.head_timeout)
            self.transport.close()
