"""Between HTTP and an engine: a bounded queue of jobs, one worker thread, a future per job.

Every future is resolved or failed, whatever the engine does. A full queue answers 429 at once
instead of growing a backlog. A job whose client went away is skipped before it starts, and a
running one stops at the next denoising step.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from vary.api.errors import ApiError
from vary.engines.base import Batch, Engine, GenerationCancelled, VariationItem

log = logging.getLogger("vary.scheduler")


@dataclass
class Job:
    item: VariationItem
    size: int
    future: Future[list[Image.Image]] = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client is gone: drop the job if it has not started, stop it between steps if it has."""
        self.abandoned.set()
        self.future.cancel()


def shutting_down() -> ApiError:
    return ApiError(503, "The server is shutting down; retry the request.", type="server_error")


class Scheduler:
    def __init__(self, engine: Engine, *, max_queue: int, retry_after_seconds: int) -> None:
        self.engine = engine
        self.retry_after_seconds = retry_after_seconds
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine:{engine.info.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: VariationItem, size: int) -> Job:
        if self._closed.is_set():
            raise shutting_down()
        job = Job(item, size)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ApiError(
                429,
                f"The model `{self.engine.info.id}` has more requests queued than it accepts. "
                f"Retry after {self.retry_after_seconds} seconds.",
                type="requests",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after_seconds)},
            ) from None
        return job

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Fails what is still queued, lets the running job finish, stops the worker."""
        self._closed.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(shutting_down())
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued: never reaches the engine
            batch = Batch(items=(job.item,), size=job.size, should_stop=job.abandoned.is_set)
            try:
                images = self.engine.generate(batch)[0]
            except GenerationCancelled as exc:
                log.info("generation stopped early: its client left")
                job.future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiting future
                job.future.set_exception(exc)
            else:
                job.future.set_result(images)
