"""uvicorn's httptools protocol, with a deadline on request headers and OpenAI-shaped protocol errors.

uvicorn times out an idle keep-alive connection, but not a client that opens a connection and then
sends nothing, or trickles its headers a byte at a time (slow loris): each such socket is held open
for ever, and enough of them exhaust the server's file descriptors. Here every request's headers must
be complete within `header_timeout_seconds` of its first byte, and a new connection must start a
request within that time. A late request gets a 408; either way the connection is closed. The body has
its own deadline (`api/body_limit.py`), enforced in the app where the error can be answered properly.

Bytes that are not HTTP (or that follow a body longer than its Content-Length) are refused by uvicorn
before the app sees them; its plain-text 400 is replaced by OpenAI's error JSON, like every other answer.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vary.api.errors import ApiError

log = logging.getLogger("vary.http")

REASONS = {400: "Bad Request", 408: "Request Timeout"}


def raw_error(error: ApiError) -> bytes:
    """A whole HTTP/1.1 response, written straight to the socket, for when the connection then closes."""
    body = json.dumps(error.body()).encode()
    head = (
        f"HTTP/1.1 {error.status} {REASONS[error.status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def vary_http_protocol(header_timeout_seconds: float) -> type[HttpToolsProtocol]:
    """The protocol class to hand to uvicorn (`http=`), closing over the deadline."""
    headers_too_slow = raw_error(
        ApiError(
            408,
            f"The request headers did not arrive within {header_timeout_seconds:g} seconds.",
            code="request_timeout",
        )
    )

    class VaryHttpProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _request_begun = False  # a byte of the request arrived: the client is owed an answer

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._request_begun = True
            self._arm()  # the next request on a kept-alive connection gets its own deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            self._request_begun = False
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self.transport.write(raw_error(ApiError(400, msg)))
            self.transport.close()

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(header_timeout_seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expire(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm()  # a response is still being written; this connection is not idle
                return
            if self._request_begun:  # a connection that never sent a byte is closed without a word
                log.info("closed a connection whose request headers took longer than %gs", header_timeout_seconds)
                self.transport.write(headers_too_slow)
            self.transport.close()

    return VaryHttpProtocol
