"""OpenTelemetry tracing: one trace from a REST request through every service, its Redis calls and its events.

Each process configures one TracerProvider from :class:`~._config.TracingConfig` (``HAULMESH_TRACES_*``):
resource ``service.name = haulmesh-<service>``, a parent-based ratio sampler, and a batch exporter (OTLP over
HTTP/protobuf to OpenTelemetry's own ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, or the console). With the
exporter ``none`` (the default) nothing is installed at all: no interceptor, no middleware, no Redis patch,
no context injection, so tracing costs nothing on the telemetry hot path.

What makes a span:

* gRPC: the instrumentation's aio server interceptor (outermost) and client interceptors; health and
  reflection calls are left out (probes would be most of the traces). A streaming RPC is one span for the
  whole stream, never one per message.
* Redis: ``RedisInstrumentor`` on its own provider whose sampler only records a command inside a sampled
  operation, and never inside a streaming RPC: background loops (consumer polls, sweeps) start no traces of
  their own, and a truck's stream does not become one Redis span per frame.
* HTTP: the ASGI middleware around the gateway's Starlette app (:func:`asgi_middleware`).
* Events: the outbox writes the current W3C context into ``Event.trace_context``
  (:func:`inject_event_context`); a consumer runs its handler in a CONSUMER span whose *parent* is that
  context (:func:`event_span`), so tender → events → billing/mission → telemetry/webhooks is one trace.
  A child rather than a link: each event has exactly one cause, and operators want the whole flow in one
  trace view; a redelivery becomes a second child of the same parent, which is what happened.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from haulmesh.events.v1 import event_pb2

from ._config import TracingConfig

__all__ = [
    "STREAMING_ATTRIBUTE",
    "asgi_middleware",
    "client_interceptors",
    "configure_tracing",
    "current_trace_ids",
    "event_span",
    "inject_event_context",
    "server_interceptors",
    "shutdown_tracing",
    "tracing_enabled",
]

_log = logging.getLogger("haulmesh.tracing")
#: Set on a streaming RPC's server span: the store sampler then records no Redis command under it.
STREAMING_ATTRIBUTE = "haulmesh.rpc.streaming"
_INSTRUMENTATION = "services.runtime"
#: Event envelopes carry W3C Trace Context only (event.proto's TraceContext), whatever OTEL_PROPAGATORS says.
_W3C = TraceContextTextMapPropagator()
#: Calls that would otherwise be most of the traces and say nothing about a request.
_UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")

_provider: TracerProvider | None = None
_store_provider: TracerProvider | None = None


class _StoreSampler(Sampler):
    """Redis commands only as part of a sampled operation, and not inside a streaming RPC.

    A command with no sampled parent is a background loop (a consumer's poll, a sweep): it would start a
    one-span trace of its own every few milliseconds. A stream's commands are per message.
    """

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Sequence[Any] | None = None,
                      trace_state: Any = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context)
        context = parent.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return SamplingResult(Decision.DROP)
        if (getattr(parent, "attributes", None) or {}).get(STREAMING_ATTRIBUTE):
            return SamplingResult(Decision.DROP, trace_state=context.trace_state)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, trace_state=context.trace_state)

    def get_description(self) -> str:
        return "HaulmeshStoreSampler"


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        # One JSON object per line, like the logs, so a log collector reads spans line by line.
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    # Imported here: only a process that exports over OTLP needs the HTTP transport loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout and compression come from OpenTelemetry's standard OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter()


def configure_tracing(service: str, config: TracingConfig, *, processor: SpanProcessor | None = None) -> None:
    """Install this process's tracer provider and the Redis instrumentation (nothing when the exporter is none).

    ``processor`` replaces the batch exporter (tests hand in an in-memory one).
    """
    global _provider, _store_provider
    if not config.enabled or _provider is not None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    resource = Resource.create({"service.name": f"haulmesh-{service}", "service.namespace": "haulmesh"})
    processor = processor or BatchSpanProcessor(_exporter(config))
    _provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    _provider.add_span_processor(processor)
    # Same resource and processor, its own sampler: see _StoreSampler. Shut down through _provider only.
    _store_provider = TracerProvider(resource=resource, sampler=_StoreSampler(), shutdown_on_exit=False)
    _store_provider.add_span_processor(processor)
    trace.set_tracer_provider(_provider)
    RedisInstrumentor().instrument(tracer_provider=_store_provider)
    _log.info("tracing: exporter %s, sample ratio %s", config.exporter, config.sample_ratio)


def shutdown_tracing() -> None:
    """Export what is buffered and stop (the end of a process; tests use it to reset)."""
    global _provider, _store_provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().uninstrument()
    _provider.shutdown()
    _provider = _store_provider = None


def tracing_enabled() -> bool:
    """Whether this process records spans (a provider was configured with an exporter other than none)."""
    return _provider is not None


def _traced_call(details: Any) -> bool:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return not method.lstrip("/").startswith(_UNTRACED_SERVICES)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing server interceptor, to run first (outermost); none when tracing is off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import _aio_server

    class StreamAwareInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
        """The instrumentation's interceptor, marking a streaming RPC's span so the store sampler skips it."""

        def _intercept_aio_server_stream(self, behavior: Any, details: Any) -> Any:
            return super()._intercept_aio_server_stream(_marked_stream(behavior), details)

        def _intercept_aio_server_unary(self, behavior: Any, details: Any) -> Any:
            return super()._intercept_aio_server_unary(_marked_unary(behavior), details)

    tracer = _provider.get_tracer("opentelemetry.instrumentation.grpc")
    return [StreamAwareInterceptor(tracer, filter_=_traced_call)]


def _marked_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        trace.get_current_span().set_attribute(STREAMING_ATTRIBUTE, True)
        async for response in behavior(request, context):
            yield response

    return streaming


def _marked_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: Any) -> Any:
        if hasattr(request, "__aiter__"):  # client streaming: one response, many messages
            trace.get_current_span().set_attribute(STREAMING_ATTRIBUTE, True)
        return await behavior(request, context)

    return unary


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing client interceptors (one per call shape), to run first; none when tracing is off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors(tracer_provider=_provider, filter_=_traced_call)


def asgi_middleware(span_name: Callable[[str, str], str]) -> list[Any]:
    """Starlette middleware entries for a server span per HTTP request (empty when tracing is off).

    ``span_name(method, path)`` names the span after the route template, not the concrete path (ids in span
    names make every request its own operation). Probes are not traced.
    """
    if _provider is None:
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    def details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return span_name(scope.get("method", "HTTP"), scope.get("path", "")), {}

    return [Middleware(OpenTelemetryMiddleware, excluded_urls="/healthz,/readyz", default_span_details=details,
                       tracer_provider=_provider, exclude_spans=["receive", "send"])]


def inject_event_context(event: event_pb2.Event) -> None:
    """Write the current trace context into the event's envelope (nothing when tracing is off or no span)."""
    if _provider is None or event.HasField("trace_context"):
        return
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    if "traceparent" in carrier:
        event.trace_context.traceparent = carrier["traceparent"]
        event.trace_context.tracestate = carrier.get("tracestate", "")


@contextlib.contextmanager
def event_span(event: event_pb2.Event, group: str) -> Iterator[None]:
    """Run a consumer's handling of ``event`` in a CONSUMER span, child of the span that committed it."""
    if _provider is None:
        yield
        return
    carrier = {"traceparent": event.trace_context.traceparent, "tracestate": event.trace_context.tracestate}
    parent = _W3C.extract(carrier) if event.trace_context.traceparent else None
    attributes = {"messaging.system": "redis", "messaging.operation.type": "process",
                  "messaging.consumer.group.name": group, "messaging.message.id": event.id,
                  "haulmesh.event.subject": event.subject}
    tracer = _provider.get_tracer(_INSTRUMENTATION)
    with tracer.start_as_current_span(event.type, context=parent, kind=trace.SpanKind.CONSUMER,
                                      attributes=attributes):
        yield


def current_trace_ids() -> tuple[str, str] | None:
    """The W3C trace id and span id (hex) of the active span, or None outside any recorded span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
