"""Outgoing mTLS channels: a deadline on every call, retries of idempotent methods with throttling, and fresh
credentials after a certificate rotation.

Retries (docs/decisions.md, "Retries between services") are gRPC's own (a service config on every channel):
a call that failed with UNAVAILABLE is sent again, up to ``max_attempts`` in all, with exponential backoff,
inside the call's one deadline; and retry throttling stops retrying towards a server once failures outweigh
successes (gRPC's token bucket: every failure costs 1 of ``RETRY_MAX_TOKENS`` tokens, every success gives
``RETRY_TOKEN_RATIO`` back, retries only while more than half are left), so a sick service sees at most about
``RETRY_MAX_TOKENS / 2`` extra attempts from each client process instead of its load multiplied.

Only methods that are safe to send twice are retried (:data:`RETRIED_METHODS`):

* reads (Get/List, fleet capacity, the KPI report, telemetry's frame and certificate lists): no effect;
* creates that are idempotent by ``request_id`` (the server's Idempotency: the same id and request give the
  same answer, computed once). The deadline interceptor gives such a call a fresh ``request_id`` when its caller
  set none, once per call, before gRPC's retries, which resend the same bytes: a second attempt after a reply
  lost on the way is answered from the first one's record.

Not retried: transitions (accept, decline, cancel, start, arrive, complete...) and updates, which carry no
request id and answer a repeat with FAILED_PRECONDITION or an etag conflict; RecordUsage, RotateWebhookSecret,
ReplayWebhookDelivery and RunArchive, each of which a repeat would do again; and every stream (a truck's
telemetry stream resumes by its own handshake, watches from their last event id). Their callers retry at their
own level (event consumers on the event id, the TMS with its Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from ._tls import CertificateFiles, client_credentials
from ._tracing import client_interceptors

__all__ = ["RETRIED_METHODS", "RETRY_MAX_TOKENS", "RETRY_TOKEN_RATIO", "Channels", "DeadlineInterceptor",
           "retry_service_config"]

#: Methods safe to send twice, by gRPC service: reads, and creates idempotent by request_id (see the module).
RETRIED_METHODS: dict[str, tuple[str, ...]] = {
    "haulmesh.tender.v1.TenderService": ("GetTender", "ListTenders", "CreateTender"),
    "haulmesh.tender.v1.FacilityService": ("GetFacility", "ListFacilities", "CreateFacility"),
    "haulmesh.mission.v1.MissionService": (
        "GetVehicle", "ListVehicles", "GetFleetCapacity", "GetMission", "ListMissions",
        "CreateMission", "RaiseMissionException", "RecordCheckIn"),
    "haulmesh.billing.v1.BillingService": (
        "GetRateCard", "ListRateCards", "GetQuote", "GetInvoice", "ListInvoices", "CreateRateCard", "CreateQuote"),
    "haulmesh.billing.v1.ReportService": ("GetKpiReport",),
    "haulmesh.telemetry.v1.TelemetryService": ("ListTelemetryFrames", "ListVehicleCertificates"),
    "haulmesh.gateway.v1.WebhookService": (
        "GetWebhookSubscription", "ListWebhookSubscriptions", "ListWebhookDeliveries", "GetWebhookDelivery",
        "CreateWebhookSubscription"),
}
#: Full names (``/package.Service/Method``) of the retried methods whose request carries a request_id.
_IDEMPOTENT_CREATES = frozenset(
    f"/{service}/{method}" for service, methods in RETRIED_METHODS.items() for method in methods
    if not method.startswith(("Get", "List")))
#: Retry throttling (gRPC's retryThrottling): the token bucket of one client process towards one server.
RETRY_MAX_TOKENS = 10
RETRY_TOKEN_RATIO = 0.1


def retry_service_config(max_attempts: int) -> str:
    """The gRPC service config (JSON) of every mesh channel: retries of :data:`RETRIED_METHODS` on UNAVAILABLE,
    ``max_attempts`` in all (1: no retry), backoff 50 ms doubling to 1 s (with gRPC's jitter), and throttling."""
    config: dict[str, Any] = {
        "retryThrottling": {"maxTokens": RETRY_MAX_TOKENS, "tokenRatio": RETRY_TOKEN_RATIO},
    }
    if max_attempts > 1:
        config["methodConfig"] = [{
            "name": [{"service": service, "method": method}
                     for service, methods in RETRIED_METHODS.items() for method in methods],
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    return json.dumps(config)


class DeadlineInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor,
                          grpc.aio.UnaryStreamClientInterceptor):
    """Gives every call without a deadline the default one, so no call can wait forever, and every retried
    create without a request_id a fresh one, so that gRPC's retries of it are answered once.

    Long-lived streams (a truck's telemetry stream, watch streams) are not called through here: they carry
    their own liveness (heartbeats) and pass an explicit timeout when they want one.
    """

    def __init__(self, default_timeout_seconds: float) -> None:
        self._timeout = default_timeout_seconds

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(details.method, self._timeout, details.metadata,
                                          details.credentials, details.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method in _IDEMPOTENT_CREATES and not getattr(request, "request_id", "x"):
            # A copy: the caller's message stays as it was (it may send it again, as a new call).
            request = _with_request_id(request)
        return await continuation(self._with_deadline(details), request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._with_deadline(details), request_iterator)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)


def _with_request_id(request: Any) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.request_id = uuid.uuid4().hex
    return copy


class Channels:
    """One channel per target, rebuilt when this workload's certificate files change; every channel retries the
    idempotent methods up to ``max_attempts`` (:func:`retry_service_config`).

    The check for changed files (three stats) runs at most every ``reload_check_interval_seconds`` (1 s: a rotated
    certificate is presented by the next call a second later at most). A replaced channel is closed once the calls
    open on it have ended (counted by :class:`InFlightCalls`), no sooner than :data:`RETIRED_CHANNEL_MIN_SECONDS` and
    at the latest after :data:`RETIRED_CHANNEL_MAX_SECONDS`: a rotation never cuts a stream in progress, such as a
    TMS's watch through the gateway (at most an hour).
    """

    def __init__(self, files: CertificateFiles, *, call_timeout_seconds: float,
                 reload_check_interval_seconds: float = 1.0, max_message_bytes: int = 4 * 1024 * 1024,
                 unary_deadlines: bool = True, max_attempts: int = 3) -> None:
        self._files = files
        # Tracing first, so its client span covers the whole call and carries the context in the metadata.
        self._interceptors: list[grpc.aio.ClientInterceptor] = [
            *client_interceptors(), *([DeadlineInterceptor(call_timeout_seconds)] if unary_deadlines else [])]
        self._check_interval = reload_check_interval_seconds
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            # Retries and throttling of idempotent methods (see the module); gRPC enables retries by default.
            ("grpc.service_config", retry_service_config(max_attempts)),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = client_credentials(files)
        #: The material the channels present. Compared with the files' current material, not taken from
        #: ``refresh()``'s answer: the server's handshakes share ``files`` and may have seen the change first.
        self._material = files.current
        self._next_check = time.monotonic() + self._check_interval
        self._retired: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._in_flight: dict[str, InFlightCalls] = {}

    def channel(self, target: str) -> grpc.aio.Channel:
        """The channel to ``target`` (host:port) with the current certificate."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._files.refresh()
            if self._files.current is not self._material:
                self._material = self._files.current
                self._credentials = client_credentials(self._files)
                old, self._channels = self._channels, {}
                counters, self._in_flight = self._in_flight, {}
                for name, channel in old.items():
                    task = asyncio.get_running_loop().create_task(_retire(channel, counters[name]))
                    self._retired[task] = channel
                    task.add_done_callback(lambda done: self._retired.pop(done, None))
        channel = self._channels.get(target)
        if channel is None:
            counter = InFlightCalls()
            # Innermost: it counts the call gRPC really made, whatever the interceptors above did.
            channel = grpc.aio.secure_channel(target, self._credentials, options=self._options,
                                              interceptors=[*self._interceptors, counter])
            self._channels[target] = channel
            self._in_flight[target] = counter
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        retired, self._retired = dict(self._retired), {}
        for task in retired:
            task.cancel()
        await asyncio.gather(*(c.close() for c in [*channels, *retired.values()]), *retired, return_exceptions=True)


#: Least time a replaced channel stays open: a stub taken just before the rotation may still make its next calls.
RETIRED_CHANNEL_MIN_SECONDS = 30.0
#: Longest a replaced channel waits for its open calls: a watch through the gateway lasts at most an hour
#: (services/gateway/rest/sse.py); a call still open after that is cut, as a stuck one would be.
RETIRED_CHANNEL_MAX_SECONDS = 3600.0 + 60.0


class InFlightCalls(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                    grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Counts the calls open on one channel (started and not done), so that a channel replaced after a
    certificate rotation is closed when idle rather than under a call."""

    def __init__(self) -> None:
        self.open = 0
        #: Set while no call is open.
        self.idle = asyncio.Event()
        self.idle.set()

    def _track(self, call: Any) -> Any:
        self.open += 1
        self.idle.clear()
        call.add_done_callback(self._done)
        return call

    def _done(self, _call: Any) -> None:
        self.open -= 1
        if self.open == 0:
            self.idle.set()

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._track(await continuation(details, request))

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._track(await continuation(details, request))

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                                     request_iterator: Any) -> Any:
        return self._track(await continuation(details, request_iterator))

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any,
                                      request_iterator: Any) -> Any:
        return self._track(await continuation(details, request_iterator))


async def _retire(channel: grpc.aio.Channel, in_flight: InFlightCalls) -> None:
    """Close ``channel`` once no call is open on it, no sooner than :data:`RETIRED_CHANNEL_MIN_SECONDS` and no later
    than :data:`RETIRED_CHANNEL_MAX_SECONDS` after it was replaced."""
    await asyncio.sleep(RETIRED_CHANNEL_MIN_SECONDS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(in_flight.idle.wait(), RETIRED_CHANNEL_MAX_SECONDS - RETIRED_CHANNEL_MIN_SECONDS)
    await channel.close(grace=1)
