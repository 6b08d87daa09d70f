"""Traces, end to end: `vary serve` with the standard OTEL_* variables exports to a real OTLP/HTTP receiver
on loopback (tests/fakes/otlp.py decodes the protobuf), driven by the openai SDK.

A local request's span tree holds every stage; a routed request holds each attempt, its retry and its
fallback; the access log line names the trace; no span carries the key, the `user`, or a URL's signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.otlp import HttpReceiver, ReceivedSpan
from tests.fakes.providers import FakeProvider
from tests.harness import Running, catalogue, hosted, local, png_bytes, route, serve
from vary.testing import ServerProcess

SECRET = "sk-fake-upstream-SECRET-0123456789"
SERVER_SPAN = "POST /v1/images/variations"


def catalogue_for(first: FakeProvider, second: FakeProvider) -> str:
    fast = {"key_env": "FAKE_OPENAI_KEY", "timeout_seconds": 5, "backoff_seconds": 0.05, "max_backoff_seconds": 1}
    return catalogue(
        local(),
        hosted("up-first", "openai-compatible", f"{first.base_url}/v1", max_attempts=2, **fast),
        hosted("up-second", "openai-compatible", f"{second.base_url}/v1", **fast),
        route("first-then-second", ["up-first", "up-second"]),
        route("checked", ["local"], safety={"check": "both"}),
        default="local",
    )


Traced = tuple[Running, HttpReceiver, FakeProvider, FakeProvider]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    receiver = HttpReceiver()
    first, second = FakeProvider(key=SECRET).start(), FakeProvider(key=SECRET).start()
    env = {
        "FAKE_OPENAI_KEY": SECRET,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,  # the exporter adds /v1/traces
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "vary-under-test",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: the test waits less
    }
    try:
        models, args = catalogue_for(first, second), ["--log-format", "json"]
        with serve(tmp_path_factory.mktemp("traces"), catalogue=models, args=args, env=env) as vary:
            yield vary, receiver, first, second
    finally:
        first.stop()
        second.stop()
        receiver.stop()


def access_line(server: ServerProcess, request_id: str) -> dict[str, object]:
    assert server.wait_for_log(f'"request_id": "{request_id}"')
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line.get("logger") == "vary.access" and line.get("request_id") == request_id]
    return line


def trace_of(server: ServerProcess, receiver: HttpReceiver, request_id: str, last: str) -> list[ReceivedSpan]:
    """The request's spans, found through its access log line's trace id, once its span named `last` is in."""
    trace_id = access_line(server, request_id)["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32
    spans = receiver.wait_for(lambda spans: {SERVER_SPAN, last} <= {s.name for s in spans if s.trace_id == trace_id})
    return [span for span in spans if span.trace_id == trace_id]


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (span,) = [span for span in spans if span.name == name]
    return span


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> set[str]:
    return {span.name for span in spans if span.parent_id == parent.span_id}


def test_a_local_request_s_trace_has_every_stage_in_one_tree(traced: Traced) -> None:
    vary, receiver, _, _ = traced
    server, key, client = vary.server, vary.key, vary.client()
    result = client.images.create_variation(
        image=png_bytes(64),
        model="local",
        n=2,
        size="256x256",
        user="user-secret-name",
        extra_body={"seed": 1234},
        extra_headers={"x-request-id": "traced-local-1"},
    )
    assert result.data[0].url
    spans = trace_of(server, receiver, "traced-local-1", last="vary.db.record_usage")

    root = one(spans, SERVER_SPAN)
    assert root.parent_id == "" and root.resource["service.name"] == "vary-under-test"
    assert root.attributes["http.status_code"] == 200
    assert children(spans, root) >= {"vary.read_form", "vary.admission", "vary.variation", "vary.db.record_usage"}
    variation = one(spans, "vary.variation")
    assert children(spans, variation) == {"vary.attempt", "vary.store"}
    attempt = one(spans, "vary.attempt")
    assert children(spans, attempt) == {"vary.prepare", "vary.queue", "vary.generate", "vary.encode"}
    # One span per pipeline call, linked to the request (its attempt) that rode in it.
    generate = one(spans, "vary.generate")
    assert (attempt.trace_id, attempt.span_id) in generate.links
    assert generate.attributes["vary.batch.images"] >= 2 and generate.attributes["vary.batch.requests"] >= 1
    queue = one(spans, "vary.queue")
    assert queue.start_ns <= queue.end_ns

    assert variation.attributes == variation.attributes | {
        "gen_ai.request.model": "local",
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.seed": 1234,
        "gen_ai.output.type": "image",
        "vary.size": "256x256",
        "vary.response_format": "url",
        "vary.target": "local",
        "vary.attempts": 1,
    }
    assert attempt.attributes["vary.target"] == "local" and attempt.attributes["vary.outcome"] == "success"
    assert one(spans, "vary.db.record_usage").attributes["db.system.name"] == "sqlite"
    assert one(spans, "vary.store").attributes["vary.images"] == 2

    # The image's signed URL: its span keeps the path, never the signature; nothing carries the key or user.
    url = result.data[0].url
    assert httpx.get(url, timeout=30).status_code == 200
    signature = url.split("signature=")[1]
    receiver.wait_for(lambda spans: any(s.name.startswith("GET /v1/files") for s in spans))
    everything = repr(receiver.snapshot())
    for secret in (key, signature, "user-secret-name", SECRET):
        assert secret not in everything


def test_a_routed_request_traces_its_retry_and_its_fallback(traced: Traced) -> None:
    vary, receiver, first, second = traced
    server, client = vary.server, vary.client()
    # Both attempts on up-first fail (retried, then given up), the first with words no span may repeat.
    first.fail("openai", ("status", 500, "PROVIDER-WORDS: the prompt was ..."), ("status", 500))
    result = client.images.create_variation(
        image=png_bytes(64),
        model="first-then-second",
        size="256x256",
        response_format="b64_json",
        extra_headers={"x-request-id": "traced-route-1"},
    )
    assert result.data[0].b64_json and len(second.calls_to("openai")) == 1
    spans = trace_of(server, receiver, "traced-route-1", last="vary.db.record_usage")

    variation = one(spans, "vary.variation")
    attempts = sorted(
        (s for s in spans if s.name == "vary.attempt" and s.parent_id == variation.span_id), key=lambda s: s.start_ns
    )
    described = [
        (s.attributes["vary.target"], s.attributes["vary.attempt"], s.attributes["vary.outcome"], s.status_code)
        for s in attempts
    ]
    error, ok = 2, 0
    assert described == [
        ("up-first", 1, "retryable", error),
        ("up-first", 2, "retryable", error),
        ("up-second", 1, "success", ok),
    ]
    assert [s.attributes.get("http.response.status_code") for s in attempts] == [500, 500, None]
    assert variation.attributes["vary.target"] == "up-second" and variation.attributes["vary.attempts"] == 3
    assert "vary.decode" in children(spans, variation)  # a route with a remote target checks the image first
    assert "vary.store" not in children(spans, variation)  # b64_json: nothing stored
    # A failed attempt's span says the class of failure, never what the provider said.
    assert attempts[0].status_message.startswith("retryable: ")
    assert "PROVIDER-WORDS" not in repr(spans)


def test_the_content_checks_are_a_stage_of_their_own(traced: Traced) -> None:
    vary, receiver, _, _ = traced
    server, client = vary.server, vary.client()
    client.images.create_variation(
        image=png_bytes(64),
        model="checked",
        size="256x256",
        response_format="b64_json",
        extra_headers={"x-request-id": "traced-checked-1"},
    )
    spans = trace_of(server, receiver, "traced-checked-1", last="vary.db.record_usage")
    variation = one(spans, "vary.variation")
    checks = sorted((s for s in spans if s.name == "vary.safety"), key=lambda s: s.start_ns)
    assert [(s.attributes["vary.safety.stage"], s.parent_id) for s in checks] == [
        ("input", variation.span_id),
        ("output", variation.span_id),
    ]
    assert all(s.attributes["vary.safety.flagged"] == 0 for s in checks)
