"""What providers that take a job and are polled for it share (fal's queue, Replicate's predictions, BFL's
tasks): the attempt's time, the key sent only to the provider's own API, the cancel when vary gives up,
the download of paid results, and the reading of their error answers.

One attempt is the request's calls (split.py: n split by the provider's images-per-call cap), each
submitted, polled until it ends, and its result URLs downloaded, all within `timeout_seconds`. The
provider module writes only its protocol: `job` (submit, poll, the result URLs) and how its answers
read (`detail_of`, `moderation`).

- Time: `timeout_seconds` bounds the whole attempt: queueing, polling and the downloads. A job still
  running when it passes is a retryable failure; a download still running is not: the generation is
  paid for, so this target is never asked to make it again, and the route moves on.
- Giving up: when vary stops waiting for a job (its time, the route's deadline, the client gone, an
  answer vary cannot read), the job is cancelled at the provider, where it has a cancel: a request of
  its own, fired in the background with a short timeout of its own, which neither the event loop nor
  the client's answer waits for.
- The key goes only to the base URL's host and the provider's documented API hosts (`api_hosts`): a
  status or polling URL elsewhere is refused, never sent the key.
- Results: downloaded under the SSRF rules (downloads.py) from the provider's documented result hosts
  (`result_hosts`) and the configuration's `download_hosts`, retried within the attempt's time, then
  made PNGs of the asked size (answers.py). `rehost_urls = false` hands the URLs on instead.
- Errors: 429 waits the provider's Retry-After; 5xx, 408, failed jobs and timeouts are retried; 401,
  402, 403, 404 and 3xx are vary's own credentials, credit or configuration (a WARNING naming the
  provider, and the next target); the provider's moderation is the client's content_policy_violation;
  any other 4xx is the client's input: a 400 with the provider's words, its key and any signed URL
  scrubbed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pybase64
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from vary.controls import Capabilities, RequestedControls
from vary.errors import ContentFlagged, UpstreamFailure, UpstreamMisconfigured, VaryError
from vary.request import Part, VariationRequest
from vary.targets.base import Made, Resilience
from vary.targets.hosted.answers import (
    ABSOLUTE_HTTP_URL,
    MAX_IMAGE_BYTES,
    pngs_of_size,
    read_capped,
    refusal,
    retry_after,
)
from vary.targets.hosted.answers import scrub as scrub_key
from vary.targets.hosted.downloads import Downloader, DownloadPolicy
from vary.targets.hosted.provider import HostedOptions, HostedProvider
from vary.targets.hosted.split import Split

log = logging.getLogger("vary.providers")
# A submission's answer -> the cancel of the job it made (method, URL), if the provider has one.
CancelOf = Callable[[Any], "tuple[str, str] | None"]
tracer = trace.get_tracer(__name__)

# A job's status or error answer is JSON of a few kilobytes; anything past this is not one.
API_ANSWER_LIMIT = 1024 * 1024
# A cancel vary sends when it gives up waits at most this long for the provider's answer, in the background.
CANCEL_TIMEOUT_SECONDS = 10.0
# A URL with a query string may carry a signature (a result URL, a presigned link): never passed on.
_SIGNED_URL = re.compile(r"https?://[^\s\"'<>]*\?[^\s\"'<>]*", re.IGNORECASE)


@dataclass(frozen=True)
class JobOptions(HostedOptions):
    """The options of a provider that takes jobs: `timeout_seconds` bounds a whole attempt."""

    poll_interval_seconds: float = 0.5  # between two looks at a job's status
    max_concurrent_calls: int = 4  # calls of one request in flight at once, when n is split

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.poll_interval_seconds <= 60:
            raise ValueError("poll_interval_seconds must be above 0 and at most 60")
        if not 1 <= self.max_concurrent_calls <= 16:
            raise ValueError("max_concurrent_calls must be 1 to 16")


@dataclass(frozen=True)
class Knobs:
    """What a provider's model takes besides the image: its steps' range, and its guidance's (None: none)."""

    steps: tuple[int, int]
    guidance: tuple[float, float] | None

    def capabilities(self) -> Capabilities:
        """FLUX.1 Redux as a job: one image in, no img2img path; steps always, guidance where the model has it."""
        return Capabilities(guidance_scale=self.guidance is not None, img2img=False, max_images=1, image_weights=False)

    def steps_of(self, controls: RequestedControls) -> int | None:
        return int(clamped(controls.steps, *self.steps)) if controls.steps is not None else None

    def guidance_of(self, controls: RequestedControls) -> float | None:
        if controls.guidance_scale is None or self.guidance is None:
            return None
        return clamped(controls.guidance_scale, *self.guidance)


@dataclass(frozen=True)
class JobCall:
    """One call of an attempt: the request, its part of the images, vary's key, and when the attempt's time ends."""

    request: VariationRequest
    part: Part
    key: str
    ends: float  # on the event loop's clock

    def left(self) -> float:
        """Seconds left of the attempt's time."""
        return max(0.0, self.ends - asyncio.get_running_loop().time())


def data_uri(png: bytes) -> str:
    """An input image as the data URI providers take in place of a URL (never uploaded anywhere)."""
    return "data:image/png;base64," + pybase64.b64encode(png).decode()


def clamped(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


class JobProvider(HostedProvider):
    """A provider whose API takes a job and is polled for it; a subclass writes its protocol."""

    per_call: ClassVar[int] = 1  # the most images one job makes
    seeds: ClassVar[int] = 2**32  # the provider takes seeds 0 to seeds - 1
    api_hosts: ClassVar[tuple[str, ...]] = ()  # besides the base URL's: where its status URLs may point
    result_hosts: ClassVar[tuple[str, ...]] = ()  # where its result URLs may point, by its documentation
    params: ClassVar[Mapping[str, str]] = {}  # the provider's input fields, as the request's params
    options_type: ClassVar[type[HostedOptions]] = JobOptions
    options: JobOptions

    def _open(self) -> None:
        base_url = self.base_url or ""
        seconds = self.options.timeout_seconds
        timeout = httpx.Timeout(seconds, connect=min(10.0, seconds))
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self.api = DownloadPolicy.of(base_url, self.api_hosts)  # where vary's key may be sent
        hosts = (*self.result_hosts, *self.options.download_hosts)
        self.downloads = Downloader(DownloadPolicy.of(base_url, hosts), timeout=timeout)
        self._cancels: set[asyncio.Future[Any]] = set()  # cancels, and submissions vary gave up on

    @property
    def resilience(self) -> Resilience:
        # None: make() times the whole attempt itself, so a slow download of a paid result never makes
        # the gateway ask for (and pay for) the generation again.
        return self.options.resilience(timeout_seconds=None)

    @property
    def split(self) -> Split:
        return Split(per_call=self.per_call, seeds=self.seeds, concurrency=self.options.max_concurrent_calls)

    async def aclose(self) -> None:
        if self._cancels:  # the cancels sent as vary gave up, each bounded by its own timeout
            await asyncio.wait(set(self._cancels), timeout=CANCEL_TIMEOUT_SECONDS)
            for pending in set(self._cancels):
                pending.cancel()
        await self.client.aclose()
        await self.downloads.aclose()

    # --- what a provider module writes ---------------------------------------------------------

    @abstractmethod
    def auth(self, key: str) -> dict[str, str]:
        """The headers that carry the key."""

    @abstractmethod
    async def job(self, call: JobCall) -> list[str]:
        """One call: submitted, polled until it ends, and its result URLs (as many as the part's images)."""

    def detail_of(self, body: bytes) -> tuple[str, str | None]:
        """An error answer's words and the input field they are about (a FastAPI `detail`, by default)."""
        return fastapi_detail(body, self.params)

    def moderation(self, status: int, body: bytes) -> ContentFlagged | None:
        """The provider's own moderation in an error answer, if that is what it is."""
        return None

    # --- one attempt ------------------------------------------------------------------------------

    async def make(self, request: VariationRequest) -> Made:
        started = time.perf_counter()
        key = self.secret()
        if key is None:
            log.warning("%s: the environment variable %s is not set", self.kind, self.api_key_env)
            raise UpstreamMisconfigured(f"the environment variable {self.api_key_env} is not set")
        ends = asyncio.get_running_loop().time() + self.options.timeout_seconds
        made = await self.split.make(request, lambda part: self._part(JobCall(request, part, key, ends)))
        return dataclasses.replace(made, stages={"upstream": time.perf_counter() - started})

    async def _part(self, call: JobCall) -> Made:
        part = call.part
        attributes: dict[str, str | int] = {"vary.provider": self.kind, "vary.images": part.images}
        with tracer.start_as_current_span(
            "vary.provider.job", attributes=attributes, record_exception=False, set_status_on_exception=False
        ):
            try:
                async with asyncio.timeout_at(call.ends):
                    urls = await self.job(call)
            except TimeoutError:
                seconds = self.options.timeout_seconds
                raise UpstreamFailure(f"{self.kind} did not finish the job in {seconds:g}s", retryable=True) from None
            if len(urls) != part.images or not all(ABSOLUTE_HTTP_URL.fullmatch(url) for url in urls):
                raise UpstreamFailure(f"{self.kind}'s result was not {part.images} image URLs", retryable=True)
            if not self.options.rehost_urls:
                return Made(urls=urls)  # handed to the client as they are
            return Made(pngs=await self._results(urls, call.request.size, call.ends))

    async def _results(self, urls: list[str], size: int, ends: float) -> list[bytes]:
        """The paid results as PNGs of the asked size; a failure here is never retried at this target."""
        downloads = [asyncio.ensure_future(self._download(url)) for url in urls]
        try:
            async with asyncio.timeout_at(ends):
                answers = await asyncio.gather(*downloads)
            return await run_in_threadpool(pngs_of_size, list(answers), size, False)
        except TimeoutError:
            error = UpstreamFailure(f"downloading {self.kind}'s result did not finish in time")
        except UpstreamFailure as exc:
            error = UpstreamFailure(f"downloading {self.kind}'s result failed: {exc.message}")
        finally:
            for download in downloads:  # one failed: the others stop too
                download.cancel()
        error.unused_images = len(urls)  # made and billed, never given
        raise error from None

    async def _download(self, url: str) -> bytes:
        """One result, the download retried as the target's own attempts are (its time bounds them all)."""
        options = self.options
        retrying = AsyncRetrying(
            stop=stop_after_attempt(options.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=options.backoff_seconds, max=options.max_backoff_seconds, jitter=options.backoff_seconds
            ),
            retry=retry_if_exception(lambda error: isinstance(error, UpstreamFailure) and error.kind == "retryable"),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._fetch(url)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _fetch(self, url: str) -> bytes:
        async def read(response: httpx.Response) -> bytes:
            if response.status_code != 200:
                retryable = response.status_code >= 500 or response.status_code in (408, 429)
                raise UpstreamFailure(f"a result URL answered {response.status_code}", retryable=retryable)
            return await read_capped(response, MAX_IMAGE_BYTES, "a result image", retryable=False)

        try:
            return await self.downloads.get(url, read)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"downloading a result failed ({type(exc).__name__})", retryable=True) from None

    # --- the provider's API ---------------------------------------------------------------------

    async def call(
        self, method: str, url: str, key: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """A request to the provider's API with the key: its 2xx status and JSON, or the domain error it means."""
        self.check_api_url(url)
        try:
            async with self.client.stream(
                method, url, json=body, headers={**self.auth(key), **(headers or {})}
            ) as response:
                answer = await read_capped(response, API_ANSWER_LIMIT, f"{self.kind}'s answer")
                status, answer_headers = response.status_code, response.headers
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                f"the connection to {self.kind} failed ({type(exc).__name__})", retryable=True
            ) from None
        if not 200 <= status < 300:
            raise self.error_from(status, answer_headers, answer)
        try:
            return status, json.loads(answer)
        except ValueError:
            raise UpstreamFailure(f"{self.kind}'s answer was not JSON", retryable=True) from None

    def check_api_url(self, url: str) -> None:
        """A URL the provider handed back (a status, result or cancel URL) must be its own API's to get the key."""
        try:
            self.api.check_url(httpx.URL(url))
        except (httpx.InvalidURL, UpstreamFailure):
            raise UpstreamFailure(f"{self.kind} pointed a job at a host that is not its API's") from None

    def error_from(self, status: int, headers: Mapping[str, str], body: bytes) -> VaryError:
        """A non-2xx answer as the domain error it means (the module's docstring has the table)."""
        message, param = self.detail_of(body)
        detail = self.scrub(message)[:200]
        if status == 429:
            wait = retry_after(headers)
            return UpstreamFailure(f"{self.kind} is rate limiting", status=429, retryable=True, retry_after=wait)
        if status >= 500 or status == 408:
            return UpstreamFailure(f"{self.kind} failed ({status})", status=status, retryable=True)
        if status in (401, 402, 403, 404) or status < 400:
            # vary's key, its credit or its configuration (an upstream model that does not exist): not the
            # client's. The operator reads the provider's words in the log; the client gets a 502.
            log.warning("%s refused vary's credentials, credit or configuration (%s): %s", self.kind, status, detail)
            return UpstreamMisconfigured(
                f"{self.kind} refused vary's credentials, credit or configuration ({status})", status=status
            )
        flagged = self.moderation(status, body)
        if flagged is not None:
            return flagged
        # Every field that reaches the client scrubbed of the key and of signed URLs, and cut short.
        return refusal(
            self.scrub(message) or "The provider refused the input.",
            status=400,
            type="invalid_request_error",
            param=self.scrub(param) if param is not None else None,
            code=None,
            secrets=(self.secret(),),
        )

    def scrub(self, text: str) -> str:
        """`text` without the key (in any form it can be echoed) and without any signed URL."""
        return _SIGNED_URL.sub("[url]", scrub_key(text, self.secret()))

    # --- giving up on a job ---------------------------------------------------------------------

    async def submit(
        self,
        url: str,
        key: str,
        body: Any,
        cancel_of: CancelOf,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """A job's submission (POST), seen through even when vary gives up while it is on its way: the job it
        made is then cancelled (`cancel_of` its answer: method, URL) once the answer names it, in the
        background, the submission bounded by the client's own timeouts."""
        sent = asyncio.ensure_future(self.call("POST", url, key, body=body, headers=headers))
        try:
            _, answer = await asyncio.shield(sent)
        except asyncio.CancelledError:
            self._cancels.add(sent)
            sent.add_done_callback(lambda done: self._cancel_made(done, key, cancel_of))
            raise
        return answer

    def _cancel_made(self, sent: asyncio.Future[tuple[int, Any]], key: str, cancel_of: CancelOf) -> None:
        self._cancels.discard(sent)
        if sent.cancelled() or sent.exception() is not None:
            return  # no job was made (the exception is retrieved here, so it is not logged as lost)
        try:
            target = cancel_of(sent.result()[1])
        except UpstreamFailure:
            return  # an answer vary cannot read names no job it could cancel
        if target is not None:
            self.cancel_later(*target, key)

    @contextlib.asynccontextmanager
    async def held(self, key: str, cancel: tuple[str, str] | None) -> AsyncIterator[None]:
        """While vary waits for a job: however it stops waiting before the job ends (its time, the route's
        deadline, the client gone, an answer it cannot read), `cancel` (method, URL) is sent."""
        try:
            yield
        except BaseException:
            if cancel is not None:
                self.cancel_later(*cancel, key)
            raise

    def cancel_later(self, method: str, url: str, key: str) -> None:
        """Sends a cancel in the background: nothing waits for it but aclose(), and it has its own timeout."""
        task = asyncio.get_running_loop().create_task(self._cancel(method, url, key))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, method: str, url: str, key: str) -> None:
        try:
            self.check_api_url(url)
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                response = await self.client.request(method, url, headers=self.auth(key))
            log.info("%s: cancelled a job vary gave up on (%s)", self.kind, response.status_code)
        except (httpx.HTTPError, TimeoutError, RuntimeError, UpstreamFailure) as exc:
            log.warning("%s: could not cancel a job vary gave up on (%s)", self.kind, type(exc).__name__)


def fastapi_detail(body: bytes, params: Mapping[str, str]) -> tuple[str, str | None]:
    """FastAPI's error shape, which fal and BFL answer with: {"detail": "words"} or {"detail": [{"loc", "msg"}]}."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace"), None
    if isinstance(detail, str):
        return detail, None
    if isinstance(detail, list) and detail and all(isinstance(item, dict) for item in detail):
        words = "; ".join(str(item.get("msg", "")) for item in detail)
        fields = [str(part) for part in detail[0].get("loc") or () if part != "body"]
        return words, next((params[field] for field in fields if field in params), None)
    return json.dumps(detail) if detail is not None else "", None
