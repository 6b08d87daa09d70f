"""Cancellation at the edge: the work of a request is cancelled when its client hangs up.

The service and everything below it see only asyncio cancellation (a queued job is dropped, a
running batch stops at its next step, a provider call is abandoned); they never see the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

_T = TypeVar("_T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, _T]) -> _T:
    """`work`'s result, unless the client hangs up first: then `work` is cancelled and ClientGone raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request's own task is cancelled (the server shutting down)
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up; the body has been read by then, so nothing else is lost."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
