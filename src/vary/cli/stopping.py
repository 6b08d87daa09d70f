"""How `vary serve` stops: every request in flight answered, the app shut down, nothing logged as a traceback.

uvicorn, when its graceful wait runs out, cancels the requests still running and at once shuts the app down
under them: each logged a traceback of its cancellation, answered a plain-text 500, and could find the
database already closed while it recorded itself. At a second Ctrl-C it stopped waiting and left the app
open; the cancellations at exit then logged tracebacks of several KB each.

StoppingServer times the graceful wait itself: when it runs out, or at a second Ctrl-C, it cancels the
requests still running, each answers its own 503 (api/shutdown.py) and records itself, and only then is
the app shut down, with its models, providers and database, a second Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

log = logging.getLogger("vary")

# How long the requests cancelled at the end have to give their answers (a decode or a database call in a
# worker thread finishes first) before the app is shut down anyway.
ANSWER_SECONDS = 5.0
POLL_SECONDS = 0.1


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        # Timed here rather than by uvicorn, which would cancel the requests and shut the app down at once.
        self.grace_seconds = config.timeout_graceful_shutdown
        config.timeout_graceful_shutdown = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.ensure_future(self._stop_requests())
        try:
            await super().shutdown(sockets=sockets)  # waits for the requests: until they end, or are stopped
            if self.force_exit:  # uvicorn stopped waiting and left the app open: answer, then shut it down
                await stopping
                await self.lifespan.shutdown()
        finally:
            stopping.cancel()

    async def _stop_requests(self) -> None:
        """Once the graceful wait is over (or at a second Ctrl-C), the requests still running are cancelled
        and given ANSWER_SECONDS to answer; then uvicorn stops waiting for them."""
        loop = asyncio.get_running_loop()
        ends = None if self.grace_seconds is None else loop.time() + self.grace_seconds
        while self.server_state.tasks and not self.force_exit and (ends is None or loop.time() < ends):
            await asyncio.sleep(POLL_SECONDS)
        running = set(self.server_state.tasks)
        if not running:
            return
        log.warning("stopping with %d request(s) still running: each is answered 503", len(running))
        for task in running:
            task.cancel()
        _, late = await asyncio.wait(running, timeout=ANSWER_SECONDS)
        if late:
            log.warning("%d request(s) did not answer within %gs of being stopped", len(late), ANSWER_SECONDS)
        self.force_exit = True  # uvicorn waits no longer; shutdown() shuts the app down
