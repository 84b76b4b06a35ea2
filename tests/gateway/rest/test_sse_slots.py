"""The gateway's caps on concurrent Server-Sent Event streams (per process, per carrier): 429 + Retry-After."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory

from services.gateway.config import GatewayConfig
from services.gateway.rest.descriptors import load_api
from services.gateway.rest.errors import error_response
from services.gateway.rest.sse import StreamSlots, open_event_stream
from services.runtime import ConfigError
from services.runtime.tokens import DEFAULT_AUDIENCE


def test_streams_beyond_a_carriers_cap_or_the_process_cap_are_refused_with_retry_after() -> None:
    slots = StreamSlots(per_process=3, per_carrier=2, retry_after_seconds=9)
    a1, a2 = slots.acquire("acme"), slots.acquire("acme")
    with pytest.raises(Exception) as carrier_cap:
        slots.acquire("acme")
    response = error_response(carrier_cap.value)
    assert response.status_code == 429 and response.headers["Retry-After"] == "9"
    assert carrier_cap.value.reason == "TOO_MANY_STREAMS" and carrier_cap.value.metadata["scope"] == "carrier"
    slots.acquire("globex")
    with pytest.raises(Exception) as process_cap:
        slots.acquire("initech")
    assert process_cap.value.metadata["scope"] == "process"
    a1()
    a1()  # a release is idempotent: a stream's end and its generator's finalizer may both call it
    assert slots.total == 2
    slots.acquire("initech")  # the freed slot is taken again
    a2()
    assert slots.total == 2


def test_the_caps_come_from_the_environment() -> None:
    env = {"HAULMESH_SSE_MAX_STREAMS_PER_PROCESS": "40", "HAULMESH_SSE_MAX_STREAMS_PER_CARRIER": "4",
           "HAULMESH_SSE_RETRY_AFTER_SECONDS": "2", "HAULMESH_JWKS_FILE": "/dev/null"}
    config = GatewayConfig.from_env(env)
    assert (config.sse_max_streams_per_process, config.sse_max_streams_per_carrier,
            config.sse_retry_after_seconds) == (40, 4, 2)
    assert config.jwt_audience == DEFAULT_AUDIENCE
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({**env, "HAULMESH_SSE_MAX_STREAMS_PER_CARRIER": "0"})


async def test_a_stream_whose_call_cannot_be_created_gives_its_slot_back() -> None:
    """The slot is released when creating the call raises (here a real closed channel), not leaked for good."""
    method = next(m for m in load_api().methods if m.method.server_streaming and m.scope is not None)
    request = message_factory.GetMessageClass(method.method.input_type)()
    slots = StreamSlots(per_process=1, per_carrier=1)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    await channel.close()
    for _ in range(3):  # with a leak, the second try would be refused: the only slot gone
        with pytest.raises(Exception, match="closed"):
            await open_event_stream(channel, method, request, (), slots.acquire("acme"))
        assert slots.total == 0
