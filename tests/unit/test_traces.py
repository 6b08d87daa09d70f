"""Traces' configuration: what turns them on, and the gRPC protocol, exported to a real OTLP/gRPC receiver.

(The HTTP protocol and the span trees: tests/e2e/test_traces.py, through a running server.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.fakes.otlp import GrpcReceiver
from vary.ops import traces


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_traces_are_off_unless_the_standard_variables_turn_them_on(environ: dict[str, str], on: bool) -> None:
    assert traces.tracing_requested(environ) is on


def test_the_protocol_picks_the_exporter_and_an_unknown_one_is_one_line() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    assert isinstance(traces._exporter(endpoint), HttpExporter)  # the specification's default
    assert isinstance(traces._exporter({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), GrpcExporter)
    only_traces = {
        **endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert isinstance(traces._exporter(only_traces), HttpExporter)
    with pytest.raises(traces.TracingSetupError, match="http/json"):
        traces._exporter({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.fixture()
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    yield receiver
    receiver.stop()


def test_grpc_export_reaches_a_real_receiver_with_the_default_service_name(
    grpc_receiver: GrpcReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    # A provider of the test's own, not the process's: other tests' spans must not go anywhere.
    provider = TracerProvider(resource=traces._resource())
    provider.add_span_processor(SimpleSpanProcessor(traces._exporter(dict(os.environ))))
    with provider.get_tracer("test").start_as_current_span("vary.test", attributes={"vary.size": "256x256"}):
        pass
    provider.shutdown()
    (span,) = grpc_receiver.wait_for(lambda spans: len(spans) == 1)
    assert span.name == "vary.test" and span.attributes == {"vary.size": "256x256"}
    assert span.resource["service.name"] == "vary"
    assert span.resource["deployment.environment"] == "test"
