"""OpenTelemetry traces: off unless the standard OTEL_* variables turn them on.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, or OTEL_TRACES_EXPORTER
is `console`; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none keep them off. The rest is read by the
OpenTelemetry SDK itself, as every instrumented service reads it: the sampler (OTEL_TRACES_SAMPLER and
its _ARG), the resource (OTEL_SERVICE_NAME, default "vary"; OTEL_RESOURCE_ATTRIBUTES), the exporter's
headers, timeout, compression and certificates, the batch processor's delays and sizes. Only the
protocol is chosen here, because the SDK leaves that choice to its auto-instrumentation launcher:
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL `http/protobuf` (the default, as the specification says) or `grpc`.

vary's own spans are made with the OpenTelemetry API where the work happens (api/, service/, targets/,
state/): without a configured provider the API does nothing. Spans never carry an API key, an image,
a `user` or a signed URL's query string.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger("vary.traces")

DEFAULT_SERVICE_NAME = "vary"
PROTOCOLS = ("http/protobuf", "grpc")
# Probes and scrapes would be most of the spans, and say nothing about a request.
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics"


class TracingSetupError(Exception):
    """The OTEL_* variables ask for something this installation cannot do; one line says what."""


_provider: TracerProvider | None = None


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return False
    if exporter == "console":
        return True
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure_tracing(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The process's tracer provider, made and installed once, when the environment asks for traces."""
    global _provider
    if _provider is not None or not tracing_requested(environ):
        return _provider
    provider = TracerProvider(resource=_resource())  # the sampler: OTEL_TRACES_SAMPLER, read by the SDK
    provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("traces: exported %s", _destination(environ))
    return provider


def tracing_enabled() -> bool:
    return _provider is not None


def instrument(app: FastAPI) -> None:
    """The FastAPI server span around every request, when traces are on; vary's spans are its children.

    OTEL_PYTHON_FASTAPI_EXCLUDED_URLS, when set, replaces the default of leaving out probes and scrapes."""
    if _provider is None:
        return
    excluded = None if "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS" in os.environ else DEFAULT_EXCLUDED_URLS
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=excluded,
        server_request_hook=_without_query,
        exclude_spans=["receive", "send"],  # a span per ASGI message would bury vary's own
    )


def _without_query(span: trace.Span, scope: dict[str, Any]) -> None:
    """A signed image URL's query string is its credential: the span keeps the path only."""
    if not span.is_recording() or not scope.get("query_string"):
        return
    path = scope.get("path", "")
    host = next((value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"host"), "")
    span.set_attribute("http.target", path)
    span.set_attribute("url.path", path)
    span.set_attribute("url.query", "REDACTED")
    url = f"{scope.get('scheme', 'http')}://{host}{path}"
    span.set_attribute("http.url", url)
    span.set_attribute("url.full", url)


def _resource() -> Resource:
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    name = resource.attributes.get(SERVICE_NAME)
    if not isinstance(name, str) or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _protocol(environ: Mapping[str, str]) -> str:
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip().lower()
    if protocol not in PROTOCOLS:
        raise TracingSetupError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: vary exports traces over {PROTOCOLS}")
    return protocol


def _exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The exporter the environment names; it reads its endpoint, headers and timeout from the environment."""
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        return ConsoleSpanExporter()
    if _protocol(environ) == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise TracingSetupError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc "
                '(pip install "vary[cluster]", or that package)'
            ) from None
        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def _destination(environ: Mapping[str, str]) -> str:
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        return "to the console"
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"over OTLP {_protocol(environ)} to {endpoint}"
