"""A local model served by a Ray Serve deployment, as a Target of the edge (`vary serve --ray`).

The deployment's replicas hold the weights and run today's LocalModel (queue and batching). This
target ships the request to one of them through the deployment's handle and maps what can go wrong
to vary's domain errors, so the edge answers exactly as a single box would:
- a domain error raised in the replica (Overloaded when its queue is full, RequestInvalid, ...)
  comes back wrapped in a RayTaskError and is raised again as itself;
- Ray Serve's own BackPressureError (the deployment's max_queued_requests) is Overloaded;
- a replica that died or cannot be reached during the request is ReplicaLost, which the gateway
  retries (Serve routes the retry to a live replica); when every attempt failed the client gets
  a 503 with Retry-After, never a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from vary.errors import Overloaded, ReplicaLost
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.targets.base import Made, Resilience

# What Ray raises when the replica serving a request is gone or cannot be reached (ActorDiedError and
# ActorUnavailableError are RayActorErrors; RequestCancelledError is a TaskCancelledError).
_REPLICA_LOST = (RayActorError, TaskCancelledError, DeploymentUnavailableError, ReplicaUnavailableError)


@dataclass(frozen=True)
class ShippedRequest:
    """A VariationRequest as it crosses to a replica: the images' bytes only (their decode, and its lock, stay)."""

    images: tuple[bytes, ...]
    fields: dict[str, Any]
    # The caller's trace context (W3C traceparent): the replica's spans join the request's trace.
    trace_context: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, request: VariationRequest) -> ShippedRequest:
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "images"}
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # nothing without a configured tracer provider
        return cls(tuple(image.data for image in request.images), fields, carrier)

    def request(self) -> VariationRequest:
        return VariationRequest(images=tuple(InputImage(data) for data in self.images), **self.fields)


class RayTarget:
    remote = True  # the edge checks the images before shipping them: a bad one never costs a replica

    def __init__(
        self, name: str, handle: DeploymentHandle[Any], *, resilience: Resilience, retry_after_seconds: int
    ) -> None:
        self._name = name
        self._handle = handle
        self._resilience = resilience
        self.retry_after_seconds = retry_after_seconds

    @property
    def name(self) -> str:
        return self._name

    @property
    def resilience(self) -> Resilience:
        return self._resilience

    async def make(self, request: VariationRequest) -> Made:
        response = self._handle.make.remote(ShippedRequest.of(request))
        try:
            made = await response
        except asyncio.CancelledError:
            response.cancel()  # type: ignore[no-untyped-call]  # the client left or the attempt timed out: the replica drops the job too
            raise
        except Exception as exc:  # noqa: BLE001 - mapped below; anything else is raised as it is
            raise self._domain_error(exc) from None
        if not isinstance(made, Made):
            raise TypeError(f"the deployment for {self._name} answered {type(made).__name__}, not Made")
        return made

    def _domain_error(self, error: Exception) -> Exception:
        """What Ray raised, as vary's domain error; an unforeseen error as it is (the gateway: unavailable)."""
        if isinstance(error, RayTaskError) and isinstance(error.cause, Exception):
            # Raised by the replica's own code (a domain error, answered as it is), or by Ray inside it.
            error = error.cause
        if isinstance(error, BackPressureError):
            return Overloaded(self._name, self.retry_after_seconds)
        if isinstance(error, _REPLICA_LOST):
            return ReplicaLost(self._name, self.retry_after_seconds)
        return error
