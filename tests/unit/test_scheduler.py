"""The scheduler around the real tiny-random engine, gated so the tests decide when it may run."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from vary.api.errors import api_error
from vary.engines.base import Batch, Controls, GenerationCancelled, RequestedControls, VariationItem
from vary.engines.kandinsky import KandinskyVariationEngine
from vary.errors import Overloaded, ShuttingDown
from vary.targets.scheduler import Scheduler

WAIT_S = 30


class GatedEngine:
    """Delegates to a real engine, one batch per permit; can be told to fail one batch."""

    def __init__(self, engine: KandinskyVariationEngine) -> None:
        self.engine = engine
        self.info = engine.info
        self.permits = threading.Semaphore(0)
        self.started = threading.Semaphore(0)  # released as each batch reaches the engine
        self.entered = threading.Event()
        self.fail_next: Exception | None = None
        self.seen: list[Batch] = []

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self.permits.release()

    def open(self) -> None:
        self.allow(1000)

    def wait_for_batch(self) -> None:
        assert self.started.acquire(timeout=WAIT_S)

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def controls(self, requested: RequestedControls) -> Controls:
        return self.engine.controls(requested)

    def prepare(self, image: Image.Image, size: int, controls: Controls) -> object:
        return self.engine.prepare(image, size, controls)

    def finish(self, frames: np.ndarray, size: int) -> list[np.ndarray]:
        return self.engine.finish(frames, size)

    def generate(self, batch: Batch) -> list[np.ndarray]:
        self.seen.append(batch)
        self.entered.set()
        self.started.release()
        assert self.permits.acquire(timeout=WAIT_S)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return self.engine.generate(batch)


TINY = KandinskyVariationEngine.tiny_random()
C = TINY.controls(RequestedControls())


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
    gated.open()
    s.close(timeout=WAIT_S)


def item(n: int = 1, seed: int = 0) -> VariationItem:
    return VariationItem(TINY.prepare(Image.new("RGB", (32, 32), (10, 20, 30)), 64, C), n, seed)


def test_each_job_gets_its_own_images(scheduler: Scheduler, gated: GatedEngine) -> None:
    gated.open()
    jobs = [scheduler.submit(item(n), 256, C) for n in (1, 3)]
    assert [len(j.future.result(WAIT_S)) for j in jobs] == [1, 3]
    assert all(frame.shape == (64, 64, 3) for j in jobs for frame in j.future.result())  # tiny renders at 64


def test_a_full_queue_answers_429_with_retry_after(scheduler: Scheduler, gated: GatedEngine) -> None:
    running = scheduler.submit(item(), 64, C)
    assert gated.entered.wait(WAIT_S)  # the worker holds one job; the queue holds two more
    queued = [scheduler.submit(item(), 64, C), scheduler.submit(item(), 64, C)]
    with pytest.raises(Overloaded) as err:
        scheduler.submit(item(), 64, C)
    answer = api_error(err.value)  # what the client is sent
    assert answer.status == 429 and answer.headers == {"Retry-After": "7"}
    assert answer.body()["error"]["code"] == "queue_full"
    gated.open()
    for job in (running, *queued):
        assert len(job.future.result(WAIT_S)) == 1


def test_engine_failure_fails_that_job_and_the_next_one_succeeds(scheduler: Scheduler, gated: GatedEngine) -> None:
    gated.fail_next = RuntimeError("CUDA error: device-side assert triggered")
    failing = scheduler.submit(item(seed=1), 64, C)
    gated.wait_for_batch()  # the failing batch is running: the next job cannot join it
    following = scheduler.submit(item(seed=2), 64, C)
    gated.open()
    with pytest.raises(RuntimeError, match="device-side"):
        failing.future.result(WAIT_S)
    assert len(following.future.result(WAIT_S)) == 1
    assert [seeds(b) for b in gated.seen] == [[1], [2]]


def test_cancelled_job_never_reaches_the_engine(scheduler: Scheduler, gated: GatedEngine) -> None:
    first = scheduler.submit(item(seed=1), 64, C)
    assert gated.entered.wait(WAIT_S)
    abandoned = scheduler.submit(item(seed=2), 64, C)
    kept = scheduler.submit(item(seed=3), 64, C)
    abandoned.cancel()
    gated.open()
    first.future.result(WAIT_S)
    kept.future.result(WAIT_S)
    assert abandoned.future.cancelled()
    assert [b.items[0].seed for b in gated.seen] == [1, 3]


def test_running_job_stops_between_steps_when_abandoned(tiny: KandinskyVariationEngine) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        tiny.generate(Batch(items=(item(),), size=64, controls=C, should_stop=stop.is_set))


def test_close_fails_queued_jobs(gated: GatedEngine) -> None:
    s = Scheduler(gated, max_queue=4, max_batch_images=10, retry_after_seconds=1)
    s.start()
    running = s.submit(item(), 64, C)
    assert gated.entered.wait(WAIT_S)
    queued = s.submit(item(), 64, C)
    closer = threading.Thread(target=s.close, kwargs={"timeout": WAIT_S})
    closer.start()
    with pytest.raises(ShuttingDown) as err:
        queued.future.result(WAIT_S)
    assert api_error(err.value).status == 503
    gated.open()
    closer.join(WAIT_S)
    assert len(running.future.result(WAIT_S)) == 1, "the running job still finishes"
    with pytest.raises(ShuttingDown):
        s.submit(item(), 64, C)


def seeds(batch: Batch) -> list[int]:
    return [item.seed for item in batch.items]


def test_same_size_jobs_coalesce_up_to_the_cap_in_arrival_order(scheduler: Scheduler, gated: GatedEngine) -> None:
    scheduler.max_queue = 10
    first = scheduler.submit(item(seed=0), 256, C)
    gated.wait_for_batch()  # the worker is inside batch 1; the rest queue up behind it
    jobs = [
        scheduler.submit(item(3, seed=1), 256, C),
        scheduler.submit(item(1, seed=2), 512, C),
        scheduler.submit(item(5, seed=3), 256, C),
        scheduler.submit(item(4, seed=4), 256, C),  # 3 + 5 + 4 > 10: waits for the next batch of its size
        scheduler.submit(item(2, seed=5), 256, C),
    ]
    gated.open()
    for job in (first, *jobs):
        assert len(job.future.result(WAIT_S)) == job.item.n
    assert [seeds(b) for b in gated.seen] == [[0], [1, 3, 5], [2], [4]]
    assert [b.size for b in gated.seen] == [256, 256, 512, 256]
    assert [j.batch_images for j in jobs] == [10, 1, 10, 4, 10]


def test_jobs_with_different_controls_never_share_a_batch(scheduler: Scheduler, gated: GatedEngine) -> None:
    scheduler.max_queue = 10
    more_steps = Controls(steps=3, guidance_scale=C.guidance_scale)
    other_guidance = Controls(steps=C.steps, guidance_scale=1.5)
    first = scheduler.submit(item(seed=0), 64, C)
    gated.wait_for_batch()
    jobs = [
        scheduler.submit(item(seed=1), 64, C),
        scheduler.submit(item(seed=2), 64, more_steps),
        scheduler.submit(item(seed=3), 64, other_guidance),
        scheduler.submit(item(seed=4), 64, Controls(steps=3, guidance_scale=C.guidance_scale)),  # equal: joins 2
        scheduler.submit(item(seed=5), 64, C),
    ]
    gated.open()
    for job in (first, *jobs):
        job.future.result(WAIT_S)
    assert [seeds(b) for b in gated.seen] == [[0], [1, 5], [2, 4], [3]]
    assert [b.controls for b in gated.seen[1:]] == [C, more_steps, other_guidance]


def test_a_big_request_is_not_starved_and_does_not_starve(scheduler: Scheduler, gated: GatedEngine) -> None:
    scheduler.max_queue = 10
    a = scheduler.submit(item(1, seed=1), 64, C)
    gated.wait_for_batch()
    big = scheduler.submit(item(10, seed=10), 64, C)
    c, d = scheduler.submit(item(1, seed=3), 64, C), scheduler.submit(item(1, seed=4), 64, C)
    gated.allow(1)  # batch [a] finishes; the oldest waiting job, the n=10 one, leads the next batch
    gated.wait_for_batch()
    e = scheduler.submit(item(1, seed=5), 64, C)  # arrives while the big batch runs
    gated.open()
    for job in (a, big, c, d, e):
        job.future.result(WAIT_S)
    assert [seeds(b) for b in gated.seen] == [[1], [10], [3, 4, 5]]


def test_coalesced_jobs_get_the_images_they_would_get_alone(gated: GatedEngine) -> None:
    from tests.unit.test_engines import assert_same_images

    s = Scheduler(gated, max_queue=8, max_batch_images=10, retry_after_seconds=1)
    s.start()
    try:
        blocker = s.submit(item(seed=99), 64, C)
        gated.wait_for_batch()
        together = [s.submit(item(2, seed=21), 64, C), s.submit(item(3, seed=22), 64, C)]
        gated.open()
        blocker.future.result(WAIT_S)
        assert [seeds(b) for b in gated.seen][-1] == [21, 22]
        alone = [
            s.submit(item(2, seed=21), 64, C).future.result(WAIT_S),
            s.submit(item(3, seed=22), 64, C).future.result(WAIT_S),
        ]
        for batched, single in zip(together, alone, strict=True):
            assert_same_images(list(batched.future.result(WAIT_S)), list(single))
    finally:
        gated.open()
        s.close(timeout=WAIT_S)
