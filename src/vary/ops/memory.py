"""Handing freed heap back to the operating system once a burst of requests is over.

glibc's malloc gives each thread that allocates concurrently an arena of its own (up to 8 per core)
and keeps what is freed there for reuse. After a burst (uploads decoded and images encoded on dozens
of worker threads) the server's RSS stays at the burst's peak although Python freed everything.
Two glibc calls fix that, measured in docs/reliability.md:
- `mallopt(M_ARENA_MAX, n)` at start caps the arenas, so freed memory is not scattered over dozens
  of half-empty heaps (the threads share them; the request rate did not drop in `bench/`).
- `malloc_trim(0)`, called by the middleware below once the server has been quiet for a moment, off
  the event loop, returns the free pages of every arena. A burst that never ends never pays for it.
On a libc without these calls (musl, macOS) both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

M_ARENA_MAX = -8  # glibc's malloc.h


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function: Callable[..., int] = getattr(libc, name)  # ctypes drops the GIL for the call
    except (OSError, AttributeError):
        return None
    return function


_malloc_trim = _libc_function("malloc_trim")
_mallopt = _libc_function("mallopt")


def cap_malloc_arenas(arenas: int) -> bool:
    """Before the server's threads start. An operator's MALLOC_ARENA_MAX wins; 0 keeps glibc's default."""
    if arenas <= 0 or _mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """True when the allocator gave memory back."""
    return _malloc_trim is not None and bool(_malloc_trim(0))


class ReleaseMemoryWhenIdle:
    """ASGI middleware: `quiet_seconds` after the last request in flight ends, trims the heap once."""

    def __init__(self, app: ASGIApp, *, quiet_seconds: float) -> None:
        self.app = app
        self.quiet_seconds = quiet_seconds
        self._active = 0
        self._timer: asyncio.TimerHandle | None = None
        self._trimming: asyncio.Task[bool] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _malloc_trim is None or self.quiet_seconds <= 0:
            await self.app(scope, receive, send)
            return
        self._active += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self.app(scope, receive, send)
        finally:
            self._active -= 1
            if self._active == 0:
                self._timer = asyncio.get_running_loop().call_later(self.quiet_seconds, self._trim)

    def _trim(self) -> None:
        self._timer = None
        if self._active or (self._trimming is not None and not self._trimming.done()):
            return
        self._trimming = asyncio.ensure_future(asyncio.to_thread(release_free_memory))
