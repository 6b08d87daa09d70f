"""uvicorn's httptools protocol, with a deadline on request headers and OpenAI-shaped protocol errors.

uvicorn times out an idle keep-alive connection, but not a client that opens a connection and then
sends nothing, or trickles its headers a byte at a time (slow loris): each such socket is held open
for ever, and enough of them exhaust the server's file descriptors. Here every request's headers must
be complete within `header_timeout_seconds` of its first byte, and a new connection must start a
request within that time. A late request gets a 408; either way the connection is closed. The body has
its own deadline (`api/body_limit.py`), enforced in the app where the error can be answered properly.

Bytes that are not HTTP (or that follow a body longer than its Content-Length) are refused by uvicorn
before the app sees them; its plain-text 400 is replaced by OpenAI's error JSON, like every other answer.

Sizes, as nginx bounds them: a request line longer than `max_request_line_bytes` gets a 414 and a head
(request line and headers) longer than `max_header_bytes` a 431, as soon as the cap is crossed and
before anything else is parsed. The connection is then half-closed: what the client still sends is
read and dropped for a moment (so it sees the answer rather than a reset), never kept.

A client that stops reading its response holds the response in the socket's write buffer. When the
buffer is over uvicorn's high-water mark and the client reads nothing of it for `send_timeout_seconds`
(as nginx's send_timeout: between two reads, not for the whole response), the connection is reset,
which frees the buffer.

A WebSocket upgrade is answered as the plain HTTP request it also is (uvicorn runs with `ws="none"`;
vary has no WebSocket routes): a 401, 404 or 405 in OpenAI's JSON, then the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vary.api.errors import ApiError

log = logging.getLogger("vary.http")

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}
# How long a refused connection is still read (and dropped) before it is closed.
LINGER_SECONDS = 2.0
_HEAD_END = b"\r\n\r\n"
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the u64 at offset 120, after 8 one-byte fields,
# 24 u32 fields and the two u64 pacing rates.
_TCP_INFO_BYTES_ACKED = 120
_TCP_INFO_SIZE = 128


def raw_error(error: ApiError) -> bytes:
    """A whole HTTP/1.1 response, written straight to the socket, for when the connection then closes."""
    body = json.dumps(error.body()).encode()
    head = (
        f"HTTP/1.1 {error.status} {REASONS[error.status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class HttpLimits:
    """The deadlines and sizes a connection is held to (the settings' header_timeout_seconds and the rest)."""

    header_timeout_seconds: float = 10.0
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    send_timeout_seconds: float = 60.0

    @cached_property
    def headers_too_slow(self) -> bytes:
        message = f"The request headers did not arrive within {self.header_timeout_seconds:g} seconds."
        return raw_error(ApiError(408, message, code="request_timeout"))

    @cached_property
    def line_too_long(self) -> bytes:
        message = f"The request line is longer than {self.max_request_line_bytes} bytes."
        return raw_error(ApiError(414, message, code="uri_too_long"))

    @cached_property
    def head_too_large(self) -> bytes:
        message = f"The request headers are larger than {self.max_header_bytes} bytes in all."
        return raw_error(ApiError(431, message, code="request_header_fields_too_large"))


class VaryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under `limits`; `with_limits` makes the class to hand to uvicorn (`http=`)."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    _header_deadline: asyncio.TimerHandle | None = None
    _send_deadline: asyncio.TimerHandle | None = None
    _sent_mark: tuple[int, int] = (0, 0)  # (bytes the client acknowledged, bytes unsent) at arming
    _request_begun = False  # a byte of the request arrived: the client is owed an answer
    _refused = False  # answered and half-closed: whatever else arrives is dropped
    # Between requests and until a request's headers end, bytes count towards the head's size.
    _in_head = True
    _head_bytes = 0
    _line_bytes = 0
    _line_ended = False
    _tail = b""  # the last bytes seen, to find a head's end split across two reads

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[VaryHttpProtocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            joined = self._tail + data
            end = joined.find(_HEAD_END)
            self._head_bytes += len(data) if end < 0 else max(0, end + len(_HEAD_END) - len(self._tail))
            self._tail = joined[-(len(_HEAD_END) - 1) :]
            line_ended = self._line_ended or b"\r\n" in joined
            limits = self.limits
            if self._head_bytes > limits.max_header_bytes:
                if line_ended:
                    self._refuse(limits.head_too_large, f"headers over {limits.max_header_bytes} bytes")
                else:
                    self._refuse(limits.line_too_long, f"a request line over {limits.max_request_line_bytes} bytes")
                return
            self._line_ended = line_ended
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._line_bytes = 0
        self._arm()  # the next request on a kept-alive connection gets its own deadline

    def on_url(self, url: bytes) -> None:
        # The parser hands the URL over as it arrives, a read at a time, so this sees it grow.
        if self._refused:
            return
        self._line_bytes += len(url)
        if self._line_bytes > self.limits.max_request_line_bytes:
            self._refuse(self.limits.line_too_long, f"a request line over {self.limits.max_request_line_bytes} bytes")
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._request_begun = False
        self._in_head = False
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes, self._tail, self._line_ended = True, 0, b"", False
        if not self._refused:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_send()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return
        self._disarm()
        self.transport.write(raw_error(ApiError(400, msg)))
        self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        # An upgrade (WebSocket or other) is served as the plain request it is; the parser stops at
        # the upgrade, so this connection ends with that answer.
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._arm_send()

    def resume_writing(self) -> None:
        self._disarm_send()
        super().resume_writing()

    def _arm_send(self) -> None:
        self._sent_mark = (_bytes_acked(self.transport), self.transport.get_write_buffer_size())
        self._send_deadline = self.loop.call_later(self.limits.send_timeout_seconds, self._send_expired)

    def _send_expired(self) -> None:
        self._send_deadline = None
        buffered = self.transport.get_write_buffer_size()
        if buffered == 0:
            return
        acked, unsent = self._sent_mark
        if _bytes_acked(self.transport) > acked or buffered < unsent:  # the client read some: alive
            self._arm_send()
            return
        log.info(
            "dropped a client that read none of its response for %gs (%d bytes unsent)",
            self.limits.send_timeout_seconds,
            buffered,
        )
        _reset_on_close(self.transport)
        self.transport.abort()  # close() would wait for the buffer to drain, i.e. for ever

    def _disarm_send(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _refuse(self, answer: bytes, what: str) -> None:
        self._refused = True
        self._disarm()
        log.info("refused %s", what)
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.limits.header_timeout_seconds, self._expire)

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
            timeout = self.limits.header_timeout_seconds
            log.info("closed a connection whose request headers took longer than %gs", timeout)
            self.transport.write(self.limits.headers_too_slow)
        self.transport.close()


def _reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Makes closing the socket a reset, so the kernel drops what it still holds to send as well."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed


def _bytes_acked(transport: asyncio.BaseTransport) -> int:
    """How many bytes the client has acknowledged (Linux's TCP_INFO), or 0 where that is not known.

    uvloop's write-buffer size does not go down while one large write drains, so progress is read
    from the kernel: the client acknowledges bytes only as it reads them.
    """
    sock = transport.get_extra_info("socket")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (AttributeError, OSError):
        return 0
    return int(struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0]) if len(info) >= _TCP_INFO_SIZE else 0
