"""Database calls made for a request, bounded in time from the request's side.

PostgreSQL's statement and lock timeouts are enforced by the server; a server that is frozen (its
processes stopped, a VM paused, a disk that hangs) while its kernel still answers TCP enforces
nothing, and a call would wait for ever. So each call made on a request's path runs on a few threads
of its own (a stuck call can never take the threads the rest of the server runs on) and is waited for
at most `timeout_seconds`; then the request gets vary.errors.DatabaseUnavailable (503 with
Retry-After). A call not yet started is dropped; one that is running is left to finish (or fail) on
its thread, since a thread cannot be stopped. A write that must not be lost (a usage row) is waited
for the same time but never dropped: it is written once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from vary.errors import DatabaseUnavailable

log = logging.getLogger("vary.database")

P = ParamSpec("P")
T = TypeVar("T")

# A handful: a request makes one or two database calls, each normally a millisecond or so.
THREADS = 8
# Past the database's own bounds for a live server (PostgreSQL's 5 s connect timeout, SQLite's busy wait
# is for writes, which requests do not wait on): only a server that cannot answer reaches it.
TIMEOUT_SECONDS = 6.0


class BoundedCalls:
    def __init__(self, *, threads: int = THREADS, timeout_seconds: float = TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vary-db-request")

    async def run(self, action: str, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`call(*args, **kwargs)` on the pool; DatabaseUnavailable when it has not answered in time."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, _in_this_context(call, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, self.timeout_seconds)
        except asyncio.TimeoutError:
            raise self._late(action) from None

    async def keep(
        self, action: str, then: Callable[[], None], call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """As `run`, but the call is never dropped: after the wait it still runs when a thread is free, and
        `then` runs on the event loop once it has ended, in time or not (a failure is logged there)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, _in_this_context(call, *args, **kwargs))

        def ended(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is not None and not waited:
                log.warning("the database could %s only late, and then failed: %r", action, done.exception())
            then()

        waited = True
        future.add_done_callback(ended)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout_seconds)
        except asyncio.TimeoutError:
            waited = False
            raise self._late(action) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _late(self, action: str) -> DatabaseUnavailable:
        log.warning("the database cannot %s now: no answer within %.0f s", action, self.timeout_seconds)
        return DatabaseUnavailable()


def _in_this_context(call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Callable[[], T]:
    """The call, to run on another thread in the caller's context (its trace span, its request's log fields),
    as Starlette's run_in_threadpool does."""
    return functools.partial(contextvars.copy_context().run, call, *args, **kwargs)
