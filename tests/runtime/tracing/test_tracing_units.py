"""Tracing configuration, the event envelope's trace context, log lines and the 'none' exporter's zero cost."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from haulmesh.events.v1 import tender_events_pb2
from services.runtime import (
    ConfigError,
    ServiceConfig,
    TracingConfig,
    _tracing,
    configure_tracing,
    current_trace_ids,
    event_span,
    new_event,
    shutdown_tracing,
)
from services.runtime._events import add_event
from services.runtime._logging import _JsonFormatter


def test_default_is_off_and_costs_nothing() -> None:
    config = TracingConfig.from_env({})
    assert (config.exporter, config.sample_ratio, config.enabled) == ("none", 1.0, False)
    configure_tracing("tender", config)
    assert not _tracing.tracing_enabled()
    assert _tracing.server_interceptors() == [] and _tracing.client_interceptors() == []
    assert _tracing.asgi_middleware(lambda verb, path: verb) == []
    event = new_event("tender_accepted", tender_events_pb2.TenderAccepted(), subject="tenders/x", carrier_id="c",
                      source="tender")
    _tracing.inject_event_context(event)
    assert not event.HasField("trace_context")


@pytest.mark.parametrize(("env", "variable"), [
    ({"HAULMESH_TRACES_EXPORTER": "jaeger"}, "HAULMESH_TRACES_EXPORTER"),
    ({"HAULMESH_TRACES_EXPORTER": "otlp", "HAULMESH_TRACES_SAMPLE_RATIO": "half"}, "HAULMESH_TRACES_SAMPLE_RATIO"),
    ({"HAULMESH_TRACES_SAMPLE_RATIO": "1.5"}, "HAULMESH_TRACES_SAMPLE_RATIO"),
    ({"HAULMESH_TRACES_SAMPLE_RATIO": "-0.1"}, "HAULMESH_TRACES_SAMPLE_RATIO"),
])
def test_bad_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TracingConfig.from_env(env)
    assert caught.value.field == variable and variable in str(caught.value)
    with pytest.raises(ConfigError):
        ServiceConfig.from_env("tender", env)


@pytest.mark.parametrize("value", ["none", "console", "OTLP", " otlp "])
def test_every_exporter_name_is_accepted(value: str) -> None:
    config = TracingConfig.from_env({"HAULMESH_TRACES_EXPORTER": value, "HAULMESH_TRACES_SAMPLE_RATIO": "0.25"})
    assert config.exporter == value.strip().lower() and config.sample_ratio == 0.25
    assert ServiceConfig.from_env("billing", {"HAULMESH_TRACES_EXPORTER": value}).tracing.exporter == config.exporter


async def test_a_service_with_a_bad_exporter_refuses_to_start() -> None:
    env = {**os.environ, "HAULMESH_TRACES_EXPORTER": "zipkin"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tender", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert b"HAULMESH_TRACES_EXPORTER" in stderr and b"zipkin" in stderr


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Tracing on in this process, spans kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    configure_tracing("tender", TracingConfig(exporter="console"), processor=SimpleSpanProcessor(exporter))
    yield exporter
    shutdown_tracing()


class _Pipe:
    """What add_event queues on a pipeline (the envelope as committed)."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def xadd(self, stream: str, fields: dict) -> None:
        self.entries.append(fields)

    def publish(self, channel: str, message: str) -> None:
        pass


def test_events_carry_the_committing_span_and_consumers_continue_it(spans: InMemorySpanExporter) -> None:
    tracer = _tracing._provider.get_tracer("test")
    pipe = _Pipe()
    with tracer.start_as_current_span("AcceptTender") as producer:
        event = new_event("tender_accepted", tender_events_pb2.TenderAccepted(), subject="tenders/x",
                          carrier_id="acme", source="tender")
        add_event(pipe, event)  # type: ignore[arg-type]
    committed = type(event).FromString(pipe.entries[0]["event"])
    producer_context = producer.get_span_context()
    # version-trace id-parent id-flags (sampled; the SDK may add the W3C level 2 "random" flag)
    assert committed.trace_context.traceparent.startswith(
        f"00-{producer_context.trace_id:032x}-{producer_context.span_id:016x}-")
    with event_span(committed, "billing"):
        ids = current_trace_ids()
    consumer = next(s for s in spans.get_finished_spans() if s.name == "haulmesh.tender.v1.accepted")
    assert consumer.kind == trace.SpanKind.CONSUMER
    assert consumer.parent is not None and consumer.parent.span_id == producer_context.span_id
    assert consumer.context.trace_id == producer_context.trace_id
    assert consumer.attributes["messaging.consumer.group.name"] == "billing"
    assert ids == (f"{producer_context.trace_id:032x}", f"{consumer.context.span_id:016x}")


def test_an_event_without_trace_context_starts_its_own_trace(spans: InMemorySpanExporter) -> None:
    event = new_event("tender_accepted", tender_events_pb2.TenderAccepted(), subject="tenders/y", carrier_id="acme",
                      source="tender")
    with event_span(event, "billing"):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.kind == trace.SpanKind.CONSUMER


def test_log_lines_carry_trace_and_span_ids_only_inside_a_span(spans: InMemorySpanExporter) -> None:
    formatter = _JsonFormatter("tender")

    def line() -> dict:
        return json.loads(formatter.format(logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)))

    assert "trace_id" not in line()
    with _tracing._provider.get_tracer("test").start_as_current_span("op") as span:
        inside = line()
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_the_store_sampler_records_commands_only_inside_a_unary_operation(spans: InMemorySpanExporter) -> None:
    sampler = _tracing._StoreSampler()
    tracer = _tracing._provider.get_tracer("test")
    assert not sampler.should_sample(None, 1, "XREADGROUP").decision.is_sampled()  # a background poll
    with tracer.start_as_current_span("CreateTender"):
        assert sampler.should_sample(None, 1, "GET").decision.is_sampled()
    with tracer.start_as_current_span("StreamTelemetry") as stream:
        stream.set_attribute(_tracing.STREAMING_ATTRIBUTE, True)
        assert not sampler.should_sample(None, 1, "XADD").decision.is_sampled()


def test_the_console_exporter_writes_one_json_span_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_tracing("billing", TracingConfig(exporter="console"))
    try:
        with _tracing._provider.get_tracer("test").start_as_current_span("CreateQuote"):
            pass
    finally:
        shutdown_tracing()  # flushes the batch
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    span = json.loads(line)
    assert span["name"] == "CreateQuote" and span["resource"]["attributes"]["service.name"] == "haulmesh-billing"
