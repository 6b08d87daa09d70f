"""A guardrail on loopback in LiteLLM's Generic Guardrail API shape, whose answer depends on the path it is
called on: /pass, /block, /block-once (blocks its first call, then passes), /garbage, /error (HTTP 500),
/slow (answers after `delay` seconds, or when the test stops it), /huge (a 256 MiB answer, sent as fast as the
caller reads it: `huge_sent` says how much it took before hanging up). It records every request's JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PASS = b'{"action": "NONE"}'
BLOCK = b'{"action": "BLOCKED", "blocked_reason": "the fake guardrail blocks everything on /block"}'
HUGE_BYTES = 256 * 1024 * 1024


class FakeGuardrail:
    def __init__(self, delay: float = 30.0) -> None:
        self.delay = delay
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.stopping = threading.Event()
        self.huge_sent = 0  # bytes of /huge's answer written before the caller hung up (or all of them)
        self.huge_done = threading.Event()
        self._lock = threading.Lock()
        guardrail = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with guardrail._lock:
                    guardrail.requests.append((self.path, body))
                if self.path == "/huge":
                    guardrail.send_huge(self)
                    return
                status, payload = guardrail.answer(self.path)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up waiting (/slow): that is the point

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def calls(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for called, body in self.requests if called == path]

    def answer(self, path: str) -> tuple[int, bytes]:
        answers: dict[str, Callable[[], tuple[int, bytes]]] = {
            "/pass": lambda: (200, PASS),
            "/block": lambda: (200, BLOCK),
            "/block-once": lambda: (200, BLOCK if len(self.calls(path)) == 1 else PASS),
            "/garbage": lambda: (200, b"<html>surely not a verdict</html>"),
            "/error": lambda: (500, b'{"error": "internal"}'),
            "/slow": self._slow,
        }
        return answers.get(path, lambda: (404, b"{}"))()

    def send_huge(self, handler: BaseHTTPRequestHandler) -> None:
        chunk = b'{"action": "NONE", "padding": "' + b"x" * (64 * 1024)
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(HUGE_BYTES))
            handler.end_headers()
            while self.huge_sent < HUGE_BYTES:
                piece = chunk[: HUGE_BYTES - self.huge_sent]
                handler.wfile.write(piece)
                self.huge_sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller stopped reading: how much it took is the point
        finally:
            self.huge_done.set()

    def _slow(self) -> tuple[int, bytes]:
        self.stopping.wait(self.delay)
        return 200, PASS

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeGuardrail:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
