"""The scheduler around the real tiny-random engine, gated so the tests decide when it may run."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from vary.api.errors import ApiError
from vary.engines.base import Batch, GenerationCancelled, VariationItem
from vary.engines.kandinsky import KandinskyVariationEngine
from vary.scheduler import Scheduler

WAIT_S = 30


class GatedEngine:
    """Delegates to a real engine once the gate opens; can be told to fail one batch."""

    def __init__(self, engine: KandinskyVariationEngine) -> None:
        self.engine = engine
        self.info = engine.info
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_next: Exception | None = None
        self.seen: list[Batch] = []

    def warmup(self) -> None:
        pass

    def prepare(self, image: Image.Image) -> object:
        return self.engine.prepare(image)

    def finish(self, frames: np.ndarray, size: int) -> list[np.ndarray]:
        return self.engine.finish(frames, size)

    def generate(self, batch: Batch) -> list[np.ndarray]:
        self.seen.append(batch)
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return self.engine.generate(batch)


TINY = KandinskyVariationEngine.tiny_random()


@pytest.fixture(scope="module")
def tiny() -> KandinskyVariationEngine:
    return TINY


@pytest.fixture()
def gated(tiny: KandinskyVariationEngine) -> GatedEngine:
    return GatedEngine(tiny)


@pytest.fixture()
def scheduler(gated: GatedEngine) -> Iterator[Scheduler]:
    s = Scheduler(gated, max_queue=2, max_batch_images=10, retry_after_seconds=7)
    s.start()
    yield s
    gated.gate.set()
    s.close(timeout=WAIT_S)


def item(n: int = 1, seed: int = 0) -> VariationItem:
    return VariationItem(TINY.prepare(Image.new("RGB", (32, 32), (10, 20, 30))), n, seed)


def test_each_job_gets_its_own_images(scheduler: Scheduler, gated: GatedEngine) -> None:
    gated.gate.set()
    jobs = [scheduler.submit(item(n), 256) for n in (1, 3)]
    assert [len(j.future.result(WAIT_S)) for j in jobs] == [1, 3]
    assert all(frame.shape == (64, 64, 3) for j in jobs for frame in j.future.result())  # tiny renders at 64


def test_a_full_queue_answers_429_with_retry_after(scheduler: Scheduler, gated: GatedEngine) -> None:
    running = scheduler.submit(item(), 64)
    assert gated.entered.wait(WAIT_S)  # the worker holds one job; the queue holds two more
    queued = [scheduler.submit(item(), 64), scheduler.submit(item(), 64)]
    with pytest.raises(ApiError) as err:
        scheduler.submit(item(), 64)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "7"}
    assert err.value.body()["error"]["code"] == "queue_full"
    gated.gate.set()
    for job in (running, *queued):
        assert len(job.future.result(WAIT_S)) == 1


def test_engine_failure_fails_that_job_and_the_next_one_succeeds(scheduler: Scheduler, gated: GatedEngine) -> None:
    gated.fail_next = RuntimeError("CUDA error: device-side assert triggered")
    failing = scheduler.submit(item(), 64)
    following = scheduler.submit(item(), 64)
    gated.gate.set()
    with pytest.raises(RuntimeError, match="device-side"):
        failing.future.result(WAIT_S)
    assert len(following.future.result(WAIT_S)) == 1


def test_cancelled_job_never_reaches_the_engine(scheduler: Scheduler, gated: GatedEngine) -> None:
    first = scheduler.submit(item(seed=1), 64)
    assert gated.entered.wait(WAIT_S)
    abandoned = scheduler.submit(item(seed=2), 64)
    kept = scheduler.submit(item(seed=3), 64)
    abandoned.cancel()
    gated.gate.set()
    first.future.result(WAIT_S)
    kept.future.result(WAIT_S)
    assert abandoned.future.cancelled()
    assert [b.items[0].seed for b in gated.seen] == [1, 3]


def test_running_job_stops_between_steps_when_abandoned(tiny: KandinskyVariationEngine) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        tiny.generate(Batch(items=(item(),), size=64, should_stop=stop.is_set))


def test_close_fails_queued_jobs(gated: GatedEngine) -> None:
    s = Scheduler(gated, max_queue=4, max_batch_images=10, retry_after_seconds=1)
    s.start()
    running = s.submit(item(), 64)
    assert gated.entered.wait(WAIT_S)
    queued = s.submit(item(), 64)
    closer = threading.Thread(target=s.close, kwargs={"timeout": WAIT_S})
    closer.start()
    with pytest.raises(ApiError) as err:
        queued.future.result(WAIT_S)
    assert err.value.status == 503
    gated.gate.set()
    closer.join(WAIT_S)
    assert len(running.future.result(WAIT_S)) == 1, "the running job still finishes"
    with pytest.raises(ApiError):
        s.submit(item(), 64)
