"""One variation request, start to finish, in the service's own terms: no HTTP here.

The road: the registry names the model's targets; a model with a remote target has its images
checked first (a bad image is refused before any provider is called and billed); the content policy
checks the inputs, as whoever is sent them may see them (a flagged one costs no model work), and
nothing decoded is kept while the targets work; the gateway tries the targets; the policy checks
the outputs, all of them at once, and has flagged ones made again or refuses; the images come back as
PNGs (for base64) or are stored and signed as URLs, in a typed result the edge renders as OpenAI's JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from starlette.concurrency import run_in_threadpool

from vary.errors import ContentFlagged, SafetyUnavailable
from vary.imaging import ImageDecoder
from vary.request import VariationRequest
from vary.safety.checks import CheckResult, ContentChecks, Findings
from vary.safety.classifier import Picture, Stage
from vary.safety.policy import NO_CHECKS, SafetyPolicy
from vary.service.attempts import Tried
from vary.service.gateway import Gateway
from vary.service.registry import ModelRegistry, ServedModel
from vary.state.image_store import ImageStore, Presigner
from vary.state.signing import UrlSigner
from vary.targets.base import Made

tracer = trace.get_tracer(__name__)


@dataclass
class Timings:
    """Seconds spent in each stage of one request, for the Server-Timing header."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items())


@dataclass(frozen=True)
class VariationResult:
    created: int  # unix seconds, as OpenAI's `created`
    # The images, as the request asked: PNGs (response_format b64_json) or URLs (url; a provider's, handed on).
    pngs: tuple[bytes, ...]
    urls: tuple[str, ...]
    timings: Timings
    batch_images: int  # images in the pipeline call this request shared
    seed: int | None  # the request's seed, given or drawn; None when a provider made the images
    target: str  # the model that answered: the requested one, or a route's target
    tried: Tried  # the targets tried and the attempts on each


# Takes room for k more images from the caller's limits (the images window, the quota), or raises a 429.
AdmitImages = Callable[[int], Awaitable[None]]


async def _no_limits(images: int) -> None:
    """No caller's limits to take room from."""


@dataclass
class _Work:
    """One request's records and budget as the service works on it: what the caller reads however it ends
    (attempts and unused images, the checks' findings), the stages' timings, its limits, and its deadline."""

    tried: Tried
    findings: Findings
    timings: Timings
    admit_images: AdmitImages
    ends: float | None = None  # time.monotonic() at the deadline; None: no deadline (a local model)

    def remaining(self) -> float | None:
        return None if self.ends is None else self.ends - time.monotonic()


@dataclass(frozen=True)
class Links:
    """How image URLs are made, in this one place: signed by vary, valid for `ttl_seconds`, on `public_url` or
    the request's own base; or, with a `presigner` (VARY_STORAGE_PRESIGN=1), the store's own presigned URLs."""

    signer: UrlSigner
    ttl_seconds: int
    public_url: str | None = None
    presigner: Presigner | None = None

    def url(self, image_id: str, *, expires: int, base_url: str) -> str:
        """The URL of a stored image, valid until `expires` (unix seconds)."""
        if self.presigner is not None:
            # The same expiry as vary's own signature would carry, counted from now.
            return self.presigner.presigned_url(image_id, expires_in=max(1, expires - int(time.time())))
        base = (self.public_url or base_url).rstrip("/")
        signature = self.signer.signature(image_id, expires)
        return f"{base}/v1/files/{image_id}.png?expires={expires}&signature={signature}"


@dataclass
class VariationService:
    registry: ModelRegistry
    decoder: ImageDecoder
    store: ImageStore
    links: Links
    gateway: Gateway = field(default_factory=Gateway)
    checks: ContentChecks = field(default_factory=ContentChecks)

    async def create(
        self,
        request: VariationRequest,
        *,
        base_url: str,
        tried: Tried | None = None,
        findings: Findings | None = None,
        safety: bool = True,
        admit_images: AdmitImages | None = None,
    ) -> VariationResult:
        """The images, or a domain error. The caller's records are filled however it ends: `tried` with the
        attempts made (the regenerations' included) and the images made that the client never gets,
        `findings` with what the content checks found. `safety`: False skips the content checks (a key the
        operator trusts). `admit_images(k)`: takes room for k more images from the caller's limits, or raises
        (a 429), before a regeneration makes them: every image made is counted."""
        tried = Tried() if tried is None else tried
        findings = Findings() if findings is None else findings
        served = self.registry.resolve(request.model)
        # Not recorded as an exception: an error's message may echo what a client or a provider sent.
        with tracer.start_as_current_span(
            "vary.variation",
            attributes=_request_attributes(served.id, request),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                work = _Work(tried, findings, Timings(), admit_images or _no_limits)
                result = await self._create(request, served, base_url, work, safety)
            except Exception as exc:
                span.set_attributes({"error.type": type(exc).__name__, "vary.attempts": tried.total})
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attributes({"vary.target": result.target, "vary.attempts": tried.total})
            if result.batch_images:
                span.set_attribute("vary.batch.images", result.batch_images)
            if result.seed is not None:
                span.set_attribute("gen_ai.request.seed", result.seed)  # drawn, when the request gave none
            return result

    async def _create(
        self, request: VariationRequest, served: ServedModel, base_url: str, work: _Work, safety: bool
    ) -> VariationResult:
        policy = served.safety if safety else NO_CHECKS
        timings, tried = work.timings, work.tried
        # What the model cannot do of the request is refused before any work, from what it declares.
        served.info.capabilities.refuse(request.controls, len(request.images), request.weights, served.id)
        if policy.checks_input:
            # A local model first in line prepares the image from the check's own decode; a provider is sent bytes.
            local_first = not served.targets[0].remote
            await self._checked_input(policy, request, timings, work.findings, keep=local_first)
        elif any(target.remote for target in served.targets):
            await self._validated_input(request, timings)

        # One deadline for every attempt, wait and regeneration round of the request.
        work.ends = None if served.deadline_seconds is None else time.monotonic() + served.deadline_seconds
        try:
            made, answered = await self.gateway.run(
                served.targets, request, deadline_seconds=work.remaining(), tried=tried
            )
        except ContentFlagged as exc:  # a provider's own moderation: its finding goes in the usage row
            work.findings.add(exc.audit)
            raise
        for stage, seconds in made.stages.items():
            timings.add(stage, seconds)
        if policy.checks_output:
            made = await self._checked_output(served, policy, request, made, work)

        created = int(time.time())
        pngs: tuple[bytes, ...]
        urls: tuple[str, ...]
        if made.urls is not None:  # handed on as the provider gave them (rehost_urls = false)
            pngs, urls = (), tuple(made.urls)
        elif request.response_format == "b64_json":
            pngs, urls = tuple(made.pngs), ()
        else:
            mark = time.perf_counter()
            pngs, urls = (), tuple(await run_in_threadpool(self._stored, made.pngs, created, base_url))
            timings.add("encode", time.perf_counter() - mark)
        batch_images = made.batch_images or request.n
        return VariationResult(created, pngs, urls, timings, batch_images, made.seed, answered.target, tried)

    async def _validated_input(self, request: VariationRequest, timings: Timings) -> None:
        """Every input decoded and checked, so an image vary refuses costs no provider call; nothing decoded is
        kept: a provider is sent the bytes, and a local model decodes them when it prepares them."""
        mark = time.perf_counter()
        with tracer.start_as_current_span("vary.decode", attributes={"vary.images": len(request.images)}):
            for image in request.images:
                await run_in_threadpool(self.decoder.check, image)
        timings.add("prepare", time.perf_counter() - mark)

    async def _checked_input(
        self, policy: SafetyPolicy, request: VariationRequest, timings: Timings, findings: Findings, *, keep: bool
    ) -> None:
        """The inputs checked and classified as whoever is sent them may see them (every view of a transparent
        one); raises ContentFlagged. The views are dropped on return, before any target is called."""
        mark = time.perf_counter()
        with tracer.start_as_current_span("vary.decode", attributes={"vary.images": len(request.images)}):
            pictures = [
                Picture(image.data, await run_in_threadpool(functools.partial(self.decoder.views, image, keep=keep)))
                for image in request.images
            ]
        timings.add("prepare", time.perf_counter() - mark)
        checked = await self._check(policy, "input", pictures, timings, findings)
        if checked.flagged:
            raise ContentFlagged("input", checked.audit)

    async def _checked_output(
        self, served: ServedModel, policy: SafetyPolicy, request: VariationRequest, made: Made, work: _Work
    ) -> Made:
        """The images once every one passed the check: flagged ones made again (policy permitting) with a
        new seed, only those, up to `max_regenerations` times, each round's images admitted first and every
        round within the request's one deadline; raises ContentFlagged when one still fails."""
        timings, findings, tried = work.timings, work.findings, work.tried
        if made.urls is not None:  # a provider's URLs handed on: the catalogue refuses output checks on them
            note = "output check impossible: the provider's URLs are handed on (rehost_urls = false)"
            findings.add(note)
            raise SafetyUnavailable(note)
        pngs = list(made.pngs)
        checked = await self._check(policy, "output", [Picture(png) for png in pngs], timings, findings)
        flagged = list(checked.flagged)
        regenerations = 0
        try:
            while flagged and policy.on_flagged_output == "regenerate" and regenerations < policy.max_regenerations:
                remaining = work.remaining()
                if remaining is not None and remaining <= 0:
                    findings.add("no time left before the deadline for another regeneration")
                    break
                await work.admit_images(len(flagged))  # a 429 when the key has no room for them
                remade = await self._regenerated(served, request, len(flagged), remaining, tried)
                regenerations += 1
                for stage, seconds in remade.stages.items():
                    timings.add(stage, seconds)
                tried.unused_images += len(flagged)  # the flagged ones, made and replaced
                for index, png in zip(flagged, remade.pngs, strict=True):
                    pngs[index] = png
                rechecked = await self._check(policy, "output", [Picture(pngs[i]) for i in flagged], timings, findings)
                flagged = [flagged[i] for i in rechecked.flagged]
        except BaseException:
            tried.unused_images += len(pngs)  # made, and never given
            raise
        times = f"{regenerations} regeneration{'s' if regenerations != 1 else ''}"
        if flagged:
            tried.unused_images += len(pngs)
            if regenerations:
                findings.add(f"still flagged after {times}")
            raise ContentFlagged("output", findings.describe() or "")
        if regenerations:
            findings.add(f"passed after {times}")
        return dataclasses.replace(made, pngs=pngs)

    async def _regenerated(
        self, served: ServedModel, request: VariationRequest, n: int, remaining: float | None, tried: Tried
    ) -> Made:
        """`n` images made again for `request`, within the time the request has left."""
        # A seed the client gave would make the same images again; without one, the target draws a new one.
        seed = secrets.randbits(63) if request.controls.seed is not None else None
        again = dataclasses.replace(request, n=n, controls=dataclasses.replace(request.controls, seed=seed))
        remade, _ = await self.gateway.run(served.targets, again, deadline_seconds=remaining, tried=tried)
        return remade

    async def _check(
        self, policy: SafetyPolicy, stage: Stage, pictures: list[Picture], timings: Timings, findings: Findings
    ) -> CheckResult:
        """One check, its time in the `safety` stage and its finding in the record, whatever it ends in."""
        mark = time.perf_counter()
        try:
            with tracer.start_as_current_span(
                "vary.safety", attributes={"vary.safety.stage": stage, "vary.images": len(pictures)}
            ) as span:
                checked = await self.checks.check(policy, stage, pictures)
                span.set_attribute("vary.safety.flagged", len(checked.flagged))
        except SafetyUnavailable as exc:
            findings.add(exc.audit)
            raise
        finally:
            timings.add("safety", time.perf_counter() - mark)
        findings.add(checked.audit)
        return checked

    def _stored(self, pngs: list[bytes], created: int, base_url: str) -> list[str]:
        """The images stored, and their URLs signed."""
        # The expiry is fixed before the images are stored, so the sweeper (which ages them by their
        # mtime or LastModified) can never delete an image while a URL to it is still valid.
        expires = created + self.links.ttl_seconds
        with tracer.start_as_current_span("vary.store", attributes={"vary.images": len(pngs)}):
            return [self.links.url(self.store.put(png), expires=expires, base_url=base_url) for png in pngs]


def _request_attributes(model: str, request: VariationRequest) -> dict[str, str | int]:
    """What a span may say about a request (OpenTelemetry's GenAI names where they fit): never its images,
    its `user` or anything a client typed freely."""
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "image_variation",
        "gen_ai.request.model": model,  # the catalogue's name, resolved: never an unknown string
        "gen_ai.request.choice.count": request.n,
        "gen_ai.output.type": "image",
        "vary.size": f"{request.size}x{request.size}",
        "vary.response_format": request.response_format,
        "vary.images": len(request.images),
    }
    if request.controls.seed is not None:
        attributes["gen_ai.request.seed"] = request.controls.seed
    return attributes
