"""Domain errors: what went wrong, in the service's terms, with no HTTP in them.

Lower layers (imaging, scheduler, engines, limits, gateway, service) raise these; only the HTTP edge
(`vary.api.errors`) turns them into OpenAI's error JSON and a status, in one place.

Each error has a `kind`, which is all the gateway reads to decide what to do next:
- refused: the request itself is wrong; every other target would say the same, so nothing else is tried.
- retryable: the same target may succeed if asked again (a provider's 5xx, a timeout, a reset).
- overloaded: the target is full or rate limiting right now; another target may have room.
- unavailable: the target cannot serve at all (weights failed to load, bad credentials, shutting down).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from vary.echo import clipped

Kind = Literal["refused", "retryable", "overloaded", "unavailable"]


class VaryError(Exception):
    kind: Kind = "refused"
    # Images a provider made (and billed) in the attempt that raised this, which the client will not get:
    # the other calls of a split request that failed, or moderated images a provider still bills.
    unused_images: int = 0

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        # Domain errors cross processes (a Ray Serve replica raises them for the edge to answer), and
        # pickle's default would call each constructor with the message alone: rebuilt from state instead.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[VaryError], args: tuple[Any, ...], state: dict[str, Any]) -> VaryError:
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


# --- the request ------------------------------------------------------------------------------


class RequestInvalid(VaryError):
    """A field of the request breaks a rule; `param` names it."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class ImageRejected(RequestInvalid):
    """The input image breaks a rule (format, size, shape, corruption)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="image")


class ControlInvalid(RequestInvalid):
    """A control (seed, strength, steps, guidance_scale) the model cannot honour."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


# --- the content policy ------------------------------------------------------------------------

# OpenAI's own words for its safety system's refusals: clients match on the code, people read the message.
FLAGGED_INPUT_MESSAGE = "Your input image may contain content that is not allowed by our safety system."
FLAGGED_OUTPUT_MESSAGE = (
    "Your request was rejected as a result of our safety system. "
    "The generated image may contain content that is not allowed."
)


class ContentFlagged(RequestInvalid):
    """The content policy flagged an input or an output image; the whole request fails, as OpenAI's did.

    `audit` (which check, the classifier, the score) is for the log line and the usage row only: the
    client's answer is OpenAI's fixed message, so nothing about the classifier can be probed through it.
    """

    def __init__(self, stage: str, audit: str) -> None:
        message = FLAGGED_INPUT_MESSAGE if stage == "input" else FLAGGED_OUTPUT_MESSAGE
        super().__init__(message, code="content_policy_violation")
        self.stage = stage
        self.audit = audit


class SafetyUnavailable(VaryError):
    """A content check could not run (its guardrail down, slow or answering garbage) and the policy fails
    closed. The reason, and the guardrail's address, are in the server's log only."""

    kind: Kind = "unavailable"

    def __init__(self, audit: str, retry_after: int = 5) -> None:
        super().__init__("The content safety check is unavailable right now. Retry after a few seconds.")
        self.audit = audit
        self.retry_after = retry_after


# --- the model --------------------------------------------------------------------------------


class ModelNotFound(VaryError):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{clipped(model)}` does not exist or you do not have access to it.", param="model")
        self.model = model


class ModelUnavailable(VaryError):
    """The model's weights failed to load; the next request tries again."""

    kind: Kind = "unavailable"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` could not be loaded. Retry later; the server's log says why.", param="model"
        )
        self.model = model


class Overloaded(VaryError):
    """The model's queue is full: a cheap refusal instead of a growing backlog."""

    kind: Kind = "overloaded"

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(
            f"The model `{model}` has more requests queued than it accepts. Retry after {retry_after} seconds."
        )
        self.retry_after = retry_after


class Busy(Overloaded):
    """A target has as many requests in flight as it takes at once (a hosted provider's max_concurrent): a cheap
    refusal, or the route's next target, rather than memory held without bound while a provider works."""

    def __init__(self, model: str, retry_after: int) -> None:
        VaryError.__init__(
            self,
            f"The model `{model}` has as many requests in flight as it takes at once. "
            f"Retry after {retry_after} seconds.",
        )
        self.retry_after = retry_after


class ReplicaLost(VaryError):
    """The process serving the model (a Ray Serve replica) died or could not be reached during the request.

    Retryable: the next attempt is routed to a live replica. When every attempt failed, the client
    is asked to come back once the replica is replaced.
    """

    kind: Kind = "retryable"

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(
            f"The model `{model}` lost the replica serving this request. Retry after {retry_after} seconds."
        )
        self.model = model
        self.retry_after = retry_after


class ShuttingDown(VaryError):
    """The server is stopping with the request still queued or running: the client retries (another replica,
    or this one once it is back)."""

    kind: Kind = "unavailable"

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(f"The server is shutting down; retry the request after {retry_after} seconds.")
        self.retry_after = retry_after


# --- the caller's limits ----------------------------------------------------------------------


class RateLimited(VaryError):
    """A per-key window or the concurrency limit is full. `unit` is "requests" or "images"."""

    kind: Kind = "overloaded"

    def __init__(self, message: str, *, unit: str, retry_after: int, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.unit = unit
        self.retry_after = retry_after
        self.headers = dict(headers)  # the x-ratelimit-* headers as they stand


class QuotaExceeded(VaryError):
    def __init__(self, message: str, *, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.headers = dict(headers)


# --- hosted providers -------------------------------------------------------------------------


class UpstreamFailure(VaryError):
    """One failed attempt at a provider. Its message is already free of the provider's secret."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.kind = "retryable" if retryable else "unavailable"
        self.attempts = 1  # set by the gateway to the attempts made on the target before it gave up

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


class UpstreamMisconfigured(UpstreamFailure):
    """vary's own setup for this target is wrong (its key, deployment, model or URL): not the client's fault.

    Not retried; the next target is tried, and it counts toward the target's circuit.
    """


class UpstreamRefused(VaryError):
    """The provider refused the request itself (a 4xx but 429): passed on as the provider said it."""

    def __init__(self, message: str, *, status: int, type: str | None, param: str | None, code: str | None) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.type = type
        self.code = code


class UpstreamUnavailable(VaryError):
    """Every target of a model failed or was skipped."""

    kind: Kind = "unavailable"

    def __init__(self, names: str) -> None:
        super().__init__(f"No target could serve this model ({names}): the providers failed or did not answer.")


class UpstreamRateLimited(VaryError):
    kind: Kind = "overloaded"

    def __init__(self, names: str, retry_after: int) -> None:
        super().__init__(f"Every target for this model is rate limited ({names}). Retry after {retry_after} seconds.")
        self.retry_after = retry_after


# --- the image store --------------------------------------------------------------------------


class StoreUnavailable(VaryError):
    """The image store (an S3 bucket) cannot be reached or refused vary: the images cannot be stored or read.

    The reason is in the server's log; the client is told to retry, or to ask for b64_json.
    """

    kind: Kind = "unavailable"

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(
            "The image store cannot be reached right now. Retry after a few seconds, "
            "or ask for response_format=b64_json, which needs no store."
        )
        self.retry_after = retry_after


# --- the database ----------------------------------------------------------------------------


class DatabaseUnavailable(VaryError):
    """The database cannot answer now (the server is gone, a lock or statement timeout, no free connection):
    the key cannot be checked, nor the quota counted. The reason is in the server's log."""

    kind: Kind = "unavailable"

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__("The service's database cannot be reached right now. Retry after a few seconds.")
        self.retry_after = retry_after
