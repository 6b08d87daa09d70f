"""A TIMED STAND-IN for a GPU model, for the capacity bench only (bench/capacity.py): never served by vary.

It is no model. Each pipeline call waits a fixed, configurable time, as a GPU batch keeps its replica
busy without using the CPU (the wait releases the GIL, as a CUDA kernel does), and returns frames of
noise made once (per size): as incompressible as a photograph's worst case, so the PNGs, the Ray hop and
the base64 answers carry a real image's bytes. Everything around it is vary's real code: the model
replica's queue and batching (LocalModel, Scheduler), the input's decode and the PNG encode, the Ray
hop, and the real HTTP edge. So the bench
measures what vary and Ray Serve cost around the GPU, not what a GPU costs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from ray import serve

from vary.cluster.metrics_export import RegistryExport
from vary.engines.base import Batch, Controls, Frames, GenerationCancelled, ModelInfo, RequestedControls
from vary.imaging import ImageDecoder, ImageRules
from vary.ops.metrics import Metrics
from vary.targets.base import Made
from vary.targets.local_model import LocalModel, QueuePolicy
from vary.targets.ray_replica import ShippedRequest

STEP_SECONDS = 0.05  # how often a batch's wait checks whether its clients are still there


class TimedEngine:
    """The stand-in: `batch_seconds` per pipeline call, whatever its size (a GPU batch that fits takes about
    as long as one image), and frames of noise at the size asked for."""

    def __init__(self, name: str, *, batch_seconds: float) -> None:
        self.info = ModelInfo(id=name, owned_by="bench", description="timed stand-in (bench only)", license="n/a")
        self.batch_seconds = batch_seconds
        self._noise: dict[int, Frames] = {}

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def controls(self, requested: RequestedControls) -> Controls:
        return Controls(steps=requested.steps or 25, guidance_scale=requested.guidance_scale or 4.0)

    def prepare(
        self,
        images: Image.Image | Sequence[Image.Image],
        size: int,
        controls: Controls,
        weights: Sequence[float] | None = None,
    ) -> Any:
        return size

    def generate(self, batch: Batch) -> list[Frames]:
        deadline = time.perf_counter() + self.batch_seconds
        while (left := deadline - time.perf_counter()) > 0:
            if batch.should_stop():
                raise GenerationCancelled()
            time.sleep(min(STEP_SECONDS, left))  # the stand-in's "GPU time": a wait, no CPU
        frame = self._noise.get(batch.size)
        if frame is None:
            frame = self._noise[batch.size] = np.random.default_rng(0).integers(
                0, 256, (batch.size, batch.size, 3), dtype=np.uint8
            )
        return [np.broadcast_to(frame, (item.n, *frame.shape)) for item in batch.items]

    def finish(self, frames: Frames, size: int) -> list[Frames]:
        return list(frames)  # made at the size asked for


@serve.deployment
class TimedModelReplica:
    """A model replica as vary's (cluster/deployments.py ModelReplica), with the stand-in for the engine."""

    def __init__(self, name: str, batch_seconds: float, max_batch_images: int, queue_size: int) -> None:
        engine = TimedEngine(name, batch_seconds=batch_seconds)
        queue = QueuePolicy(max_queue=queue_size, max_batch_images=max_batch_images)
        self.model = LocalModel(engine, decoder=ImageDecoder(ImageRules(max_bytes=4 << 20, max_side=4096)), queue=queue)
        self.metrics = Metrics(served=[name])
        self.metrics.watch([self.model])
        self.model.start(on_batch=functools.partial(self.metrics.observe_batch, name))
        self.export = RegistryExport(lambda: self.metrics.registry).start()

    async def make(self, shipped: ShippedRequest) -> Made:
        return await self.model.make(shipped.request())
