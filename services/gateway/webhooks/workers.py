"""The webhook service's loops: Haulmesh events → signed HTTPS POSTs to the carriers' subscriptions.

Two loops, both inside the gateway process, started through the runtime by :func:`start_workers`:

* the consumer (event group ``webhooks``, ``service.add_consumer``): for each public event of a carrier,
  one delivery per matching subscription (idempotent on (subscription, event id)), scheduled now in the due
  set — or recorded as SKIPPED when the subscription is paused or suspended;
* the sender (:class:`Dispatcher`, a companion loop: it is woken at once when a delivery is scheduled, so it
  is not a plain periodic loop): claims due deliveries (a lease, so replicas never send one delivery twice
  at once and a crashed sender's attempt comes back), attempts them with bounded concurrency, and records
  each outcome: SUCCEEDED on 2xx, RETRYING with the next time from the retry schedule, FAILED when the
  answer is not retryable or the schedule is exhausted.

Every attempt resolves the host again and refuses non-public addresses (a DNS answer may change between
subscription and delivery: DNS rebinding), then connects to the very address it checked, sending the
URL's host as Host header and TLS server name, so no second resolution can slip in. Redirects are never
followed; only a short excerpt of a response body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC

import httpx
from google.protobuf import json_format

from haulmesh.events.v1 import event_pb2
from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import ConfigError, InvalidArgument, Service, new_id, timestamp_ms

from ..config import GatewayConfig
from . import domain
from .metrics import WEBHOOK_ATTEMPT_DURATION, WEBHOOK_DELIVERIES, WEBHOOK_ETA_DUPLICATES, WEBHOOK_ETA_HELD_BACK
from .store import WebhookStore
from .usecases import check_destination

__all__ = ["CONSUMER_GROUP", "Dispatcher", "WebhookSettings", "event_body", "start_workers"]

_log = logging.getLogger("haulmesh.gateway.webhooks")

#: The runtime consumer group the dispatcher reads events in.
CONSUMER_GROUP = "webhooks"

Delivery = webhook_pb2.WebhookDelivery
Subscription = webhook_pb2.WebhookSubscription
_EXCERPT_BYTES = 256
# httpx logs every request's URL at INFO; a webhook URL may carry the receiver's credentials in its query,
# so the dispatcher's own requests are kept out of that log (its outcome log names the delivery instead).
_SENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("webhook_sending", default=False)


class _QuietWebhookRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SENDING.get()


logging.getLogger("httpx").addFilter(_QuietWebhookRequests())
_TERMINAL = {Delivery.STATE_SUCCEEDED, Delivery.STATE_FAILED, Delivery.STATE_SKIPPED}


@dataclass(frozen=True)
class WebhookSettings:
    """The dispatcher's settings, from GatewayConfig's ``webhook_*`` (see docs/webhooks.md)."""

    guard: domain.DestinationGuard = field(default_factory=domain.DestinationGuard)
    retry: domain.RetryPolicy = field(default_factory=domain.RetryPolicy)
    timeout_seconds: float = 10.0
    max_concurrency: int = 32
    poll_seconds: float = 1.0
    #: A subscription whose every attempt failed for this long is SUSPENDED (webhook.proto: 24 hours).
    suspend_after_seconds: float = 86400.0
    #: TLS verification: True (system trust store) or an SSL context (``HAULMESH_WEBHOOK_CA_FILE`` adds a CA
    #: for development receivers with a private certificate).
    verify: bool | ssl.SSLContext = True

    @classmethod
    def from_config(cls, config: GatewayConfig) -> WebhookSettings:
        """Raises ConfigError when the CA file cannot be loaded."""
        retry = domain.RetryPolicy(config.webhook_retry_schedule_seconds, config.webhook_retry_jitter_fraction)
        # Poll at least as often as the shortest retry delay, so short test schedules are honoured.
        poll = min([1.0, *(d / 2 for d in retry.delays if d > 0)])
        verify: bool | ssl.SSLContext = True
        if config.webhook_ca_file is not None:
            try:
                verify = ssl.create_default_context()
                verify.load_verify_locations(cafile=config.webhook_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"HAULMESH_WEBHOOK_CA_FILE: {exc}", field="HAULMESH_WEBHOOK_CA_FILE") from None
        return cls(guard=domain.DestinationGuard(config.webhook_allowed_cidrs), retry=retry,
                   timeout_seconds=config.webhook_timeout_seconds, max_concurrency=config.webhook_max_concurrency,
                   poll_seconds=max(poll, 0.02), verify=verify,
                   suspend_after_seconds=config.webhook_suspend_after_seconds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSettings:
        """The ``HAULMESH_WEBHOOK_*`` settings of ``env`` as GatewayConfig reads them."""
        return cls.from_config(GatewayConfig.from_env(env))


def event_body(event: event_pb2.Event) -> bytes:
    """The request body: the event as proto-JSON (camelCase field names)."""
    return json_format.MessageToJson(event, indent=None).encode()


def _now_seconds() -> float:
    return time.time()


def start_workers(service: Service, dispatcher: Dispatcher) -> None:
    """The dispatcher's consumer of public events and its sender loop, run while the service runs."""
    service.add_consumer(CONSUMER_GROUP, dispatcher.handle, types=set(domain.PUBLIC_EVENT_TYPES))
    service.add_companion(dispatcher.run, dispatcher.stop)


@dataclass
class _Attempt:
    status_code: int | None = None
    error: str = ""
    retryable_network: bool = True


class Dispatcher:
    """Creates deliveries from events and sends them: the consumer's handler, the sender loop, each attempt."""

    def __init__(self, store: WebhookStore, settings: WebhookSettings) -> None:
        self._store = store
        self._settings = settings
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """A delivery was scheduled: look for due ones now instead of after the pause."""
        self._wake.set()

    # --- the consumer --------------------------------------------------------------------------------

    async def handle(self, event: event_pb2.Event) -> None:
        """Consumer handler: one delivery per matching subscription of the event's carrier (idempotent on the
        event id): PENDING and due now, or SKIPPED when the subscription is paused or suspended."""
        if not event.carrier or event.type not in domain.PUBLIC_EVENT_TYPES:
            return  # fleet events concern no carrier; internal events never leave Haulmesh
        carrier = event.carrier.removeprefix("carriers/")
        now = _now_seconds()
        scheduled = False
        for subscription in await self._store.all(carrier):
            if not domain.matches(subscription.event_types, event.type):
                continue
            subscription_id = domain.parse_subscription_name(subscription.name)
            active = subscription.state == Subscription.STATE_ACTIVE
            delivery_id = new_id()
            delivery = Delivery(name=f"{subscription.name}/deliveries/{delivery_id}", event=event,
                                state=Delivery.STATE_PENDING if active else Delivery.STATE_SKIPPED)
            delivery.create_time.CopyFrom(timestamp_ms(int(now * 1000)))
            (delivery.next_attempt_time if active else delivery.complete_time).CopyFrom(delivery.create_time)
            if event.type == domain.ETA_EVENT_TYPE and active:
                created = await self._eta_delivery(carrier, subscription, subscription_id, delivery_id, delivery,
                                                   event, now)
                scheduled = scheduled or created
                continue
            _, created = await self._store.add_delivery(carrier, subscription_id, delivery_id, delivery,
                                                        due_at=now if active else None, event_id=event.id)
            scheduled = scheduled or (created and active)
        if scheduled:
            self.wake()

    async def _eta_delivery(self, carrier: str, subscription: Subscription, subscription_id: str, delivery_id: str,
                            delivery: Delivery, event: event_pb2.Event, now: float) -> bool:
        """An ETA update goes out only if the subscription's ETA policy says so (domain.eta_to_send), judged
        against the last one sent for the same mission stop; whether a delivery was created."""
        data = event.telemetry_eta_updated
        # Event time: the device time of the frame behind the estimate (older publishers: the event's time).
        event_time = (data.device_time if data.HasField("device_time") else event.time).ToDatetime(tzinfo=UTC)
        update = domain.EtaSent(data.estimated_arrive_time.ToDatetime(tzinfo=UTC), event_time, data.late)
        policy = domain.eta_policy_of(subscription)

        def decide(last: domain.EtaSent | None) -> domain.EtaSent | None:
            return update if domain.eta_to_send(policy, last, update) else None

        existing, created = await self._store.add_eta_delivery(
            carrier, subscription_id, delivery_id, delivery, mission_id=data.mission.removeprefix("missions/"),
            stop_index=data.stop_index, event_id=event.id, due_at=now, decide=decide)
        if existing and not created:
            WEBHOOK_ETA_DUPLICATES.inc()  # a redelivered event: it has its delivery, the policy held nothing back
        elif not created:
            WEBHOOK_ETA_HELD_BACK.inc()
        return created

    # --- the sender ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and attempt due deliveries until :meth:`stop`."""
        # trust_env=False: no proxy or .netrc from the environment may reroute or decorate webhooks.
        # No keep-alive: connections go to checked addresses and the pool is keyed by address, so a pooled
        # TLS connection made for one host name could otherwise carry a request for another.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, verify=self._settings.verify,
                                         timeout=httpx.Timeout(self._settings.timeout_seconds),
                                         limits=httpx.Limits(max_connections=self._settings.max_concurrency,
                                                             max_keepalive_connections=0))
        lease = self._settings.timeout_seconds + 30
        try:
            while not self._stopping.is_set():
                free = self._settings.max_concurrency - len(self._tasks)
                claimed = await self._store.claim_due(_now_seconds(), lease, free) if free > 0 else []
                for carrier, delivery_id in claimed:
                    task = asyncio.get_running_loop().create_task(self._attempt_logged(carrier, delivery_id))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), await self._pause())
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.aclose()

    async def _pause(self) -> float:
        due = await self._store.next_due()
        pause = self._settings.poll_seconds
        if due is not None:
            pause = min(pause, max(due - _now_seconds(), 0.01))
        return pause

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _attempt_logged(self, carrier: str, delivery_id: str) -> None:
        _SENDING.set(True)  # this task's context only
        async with self._slots:
            try:
                await self.attempt(carrier, delivery_id)
            except Exception:  # the lease brings the delivery back; keep the sender alive
                _log.exception("webhook delivery %s of %s: attempt crashed; retried after its lease",
                               delivery_id, carrier)

    async def attempt(self, carrier: str, delivery_id: str) -> None:
        """One attempt of a claimed delivery, and its recorded outcome."""
        delivery = await self._store.get_delivery(carrier, delivery_id)
        if delivery is None or delivery.state in _TERMINAL:
            await self._store.unschedule(carrier, delivery_id)
            return
        subscription_id, _ = domain.parse_delivery_name(delivery.name)
        subscription = await self._store.get(carrier, subscription_id)
        now = _now_seconds()
        if subscription is None:
            await self._store.unschedule(carrier, delivery_id)
            return
        if not delivery.replay_of and subscription.state != Subscription.STATE_ACTIVE:
            # Paused (or suspended) while the delivery waited: recorded as SKIPPED, replayable.
            delivery.state = Delivery.STATE_SKIPPED
            delivery.ClearField("next_attempt_time")
            delivery.complete_time.CopyFrom(timestamp_ms(int(now * 1000)))
            await self._finish(carrier, delivery_id, delivery, None)
            WEBHOOK_DELIVERIES.labels("skipped").inc()
            return
        began = time.perf_counter()
        result = await self._send(carrier, subscription, delivery.event)
        WEBHOOK_ATTEMPT_DURATION.observe(time.perf_counter() - began)
        delivery.attempt_count += 1
        delivery.last_status_code = result.status_code or 0
        delivery.last_error = result.error
        delivery.last_attempt_time.CopyFrom(timestamp_ms(int(now * 1000)))
        delivery.ClearField("next_attempt_time")
        outcome = domain.classify_attempt(result.status_code) if result.retryable_network else domain.Outcome.FAILED
        due_at = None
        if outcome is domain.Outcome.SUCCEEDED:
            delivery.state = Delivery.STATE_SUCCEEDED
        elif outcome is domain.Outcome.RETRY and (delay := self._settings.retry.delay_after(
                delivery.attempt_count)) is not None:
            delivery.state = Delivery.STATE_RETRYING
            due_at = _now_seconds() + delay
            delivery.next_attempt_time.CopyFrom(timestamp_ms(int(due_at * 1000)))
        else:
            delivery.state = Delivery.STATE_FAILED
            if outcome is domain.Outcome.RETRY:
                delivery.last_error = f"retries exhausted after {delivery.attempt_count} attempts: {result.error}"
        if delivery.state != Delivery.STATE_RETRYING:
            delivery.complete_time.CopyFrom(timestamp_ms(int(_now_seconds() * 1000)))
        await self._finish(carrier, delivery_id, delivery, due_at)
        WEBHOOK_DELIVERIES.labels(Delivery.State.Name(delivery.state).removeprefix("STATE_").lower()).inc()
        since = await self._store.record_outcome(carrier, subscription_id,
                                                 succeeded=outcome is domain.Outcome.SUCCEEDED, now=now)
        if since is not None and now - since >= self._settings.suspend_after_seconds:
            await self._suspend(carrier, subscription_id, since)

    async def _suspend(self, carrier: str, subscription_id: str, since: float) -> None:
        suspended = False

        def change(current: Subscription, _keys: object) -> tuple[Subscription, None]:
            nonlocal suspended
            suspended = domain.suspend(current, now_ns=time.time_ns())
            return current, None

        await self._store.update(carrier, subscription_id, change)
        if suspended:
            _log.warning("webhook subscription %s of %s SUSPENDED: every attempt failed since %.0f",
                         subscription_id, carrier, since)

    async def _finish(self, carrier: str, delivery_id: str, delivery: webhook_pb2.WebhookDelivery,
                      due_at: float | None) -> None:
        saved = await self._store.save_delivery(carrier, delivery_id, delivery)
        if saved and due_at is not None:
            await self._store.schedule(carrier, delivery_id, due_at)
        else:
            await self._store.unschedule(carrier, delivery_id)
        _log.info("webhook delivery %s of %s: %s after %d attempt(s)%s", delivery.name, carrier,
                  Delivery.State.Name(delivery.state), delivery.attempt_count,
                  f" ({delivery.last_error})" if delivery.last_error else "")

    async def _send(self, carrier: str, subscription: webhook_pb2.WebhookSubscription,
                    event: event_pb2.Event) -> _Attempt:
        try:
            destination, addresses = await check_destination(subscription.url, self._settings.guard, field="url")
        except InvalidArgument as exc:
            unresolved = any("does not resolve" in v.description for v in exc.violations)
            # A name that does not resolve may come back; one that resolves to a refused address is refused.
            return _Attempt(error=("DNS: " if unresolved else "destination refused: ") + exc.message,
                            retryable_network=unresolved)
        keys = await self._store.signing_keys(carrier, domain.parse_subscription_name(subscription.name))
        body = event_body(event)
        timestamp = int(_now_seconds())
        signature = domain.sign([domain.parse_secret(k.secret, field="secret") for k in keys], event.id, timestamp,
                                body)
        default_port = 443 if destination.scheme == "https" else 80
        host = f"[{destination.host}]" if ":" in destination.host else destination.host
        headers = {"host": host if destination.port == default_port else f"{host}:{destination.port}",
                   "content-type": "application/json", "user-agent": "Haulmesh-Webhooks/1",
                   "webhook-id": event.id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}
        extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
        assert self._client is not None
        result = _Attempt(error="no address")
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                # The checked addresses in resolver order; the next one only when a connection cannot be made.
                for address in addresses:
                    literal = f"[{address}]" if ":" in address else address
                    try:
                        async with self._client.stream(
                                "POST", f"{destination.scheme}://{literal}:{destination.port}{destination.target}",
                                content=body, headers=headers, extensions=extensions) as response:
                            excerpt = await _excerpt(response)
                    except httpx.ConnectError as exc:
                        result = _Attempt(error=f"ConnectError: {exc}"[:200])
                        continue
                    if 200 <= response.status_code < 300:
                        return _Attempt(response.status_code)
                    return _Attempt(response.status_code,
                                    f"HTTP {response.status_code}" + (f": {excerpt}" if excerpt else ""))
        except TimeoutError:
            return _Attempt(error=f"timeout after {self._settings.timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return _Attempt(error=f"{type(exc).__name__}: {exc}"[:200])
        return result


async def _excerpt(response: httpx.Response) -> str:
    """At most the first 256 bytes of the body, for the delivery log; the rest is never read."""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= _EXCERPT_BYTES:
            break
    return data[:_EXCERPT_BYTES].decode(errors="replace").strip()[:200]
