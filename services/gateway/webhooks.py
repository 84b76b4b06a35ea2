"""The webhook dispatcher: Haulmesh events → signed HTTPS POSTs to the carriers' subscriptions.

Two loops, both inside the gateway process:

* the consumer (event group ``webhooks``): for each public event of a carrier, one delivery per matching
  subscription (idempotent on (subscription, event id)), scheduled now in the due set — or recorded as
  SKIPPED when the subscription is paused or suspended;
* the sender (a companion loop): claims due deliveries (a lease, so replicas never send one delivery
  twice at once and a crashed sender's attempt comes back), attempts them with bounded concurrency, and
  records each outcome: SUCCEEDED on 2xx, RETRYING with the next time from the retry schedule, FAILED
  when the answer is not retryable or the schedule is exhausted.

Every attempt resolves the host again and refuses non-public addresses (a DNS answer may change between
subscription and delivery: DNS rebinding), then connects to the very address it checked, sending the
URL's host as Host header and TLS server name, so no second resolution can slip in. Redirects are never
followed; only a short excerpt of a response body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from google.protobuf import json_format, timestamp_pb2

from haulmesh.events.v1 import event_pb2
from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import ConfigError, FailedPrecondition, InvalidArgument, new_id

from . import domain
from .metrics import WEBHOOK_ATTEMPT_DURATION, WEBHOOK_DELIVERIES
from .store import WebhookStore

__all__ = ["CONSUMER_GROUP", "PUBLIC_EVENT_TYPES", "Dispatcher", "WebhookSettings", "check_destination", "resolve",
           "touch"]

_log = logging.getLogger("haulmesh.gateway.webhooks")

#: The runtime consumer group the dispatcher reads events in.
CONSUMER_GROUP = "webhooks"

#: Public event types: every ``Event.data`` field but those event.proto marks internal.
PUBLIC_EVENT_TYPES = domain.public_event_types(
    f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["data"].fields)

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
_RESOLVE_TIMEOUT_SECONDS = 5.0
_TERMINAL = {Delivery.STATE_SUCCEEDED, Delivery.STATE_FAILED, Delivery.STATE_SKIPPED}


@dataclass(frozen=True)
class WebhookSettings:
    """Dispatcher configuration, from ``HAULMESH_WEBHOOK_*`` environment variables (see docs/webhooks.md)."""

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        env = os.environ if environ is None else environ
        try:
            timeout = float(env.get("HAULMESH_WEBHOOK_TIMEOUT_SECONDS", "10"))
            concurrency = int(env.get("HAULMESH_WEBHOOK_MAX_CONCURRENCY", "32"))
            suspend_after = float(env.get("HAULMESH_WEBHOOK_SUSPEND_AFTER_SECONDS", "86400"))
        except ValueError:
            raise ConfigError("HAULMESH_WEBHOOK_TIMEOUT_SECONDS, _MAX_CONCURRENCY and _SUSPEND_AFTER_SECONDS "
                              "must be numbers", field="HAULMESH_WEBHOOK_TIMEOUT_SECONDS") from None
        if not 0 < timeout <= 30 or concurrency < 1 or suspend_after <= 0:
            raise ConfigError("webhook timeout must be in (0, 30] s, concurrency at least 1, suspension positive",
                              field="HAULMESH_WEBHOOK_TIMEOUT_SECONDS")
        retry = domain.RetryPolicy.from_text(env.get("HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS", ""),
                                             env.get("HAULMESH_WEBHOOK_RETRY_JITTER", ""))
        # Poll at least as often as the shortest retry delay, so short test schedules are honoured.
        poll = min([1.0, *(d / 2 for d in retry.delays if d > 0)])
        verify: bool | ssl.SSLContext = True
        if ca_file := env.get("HAULMESH_WEBHOOK_CA_FILE", ""):
            try:
                verify = ssl.create_default_context()
                verify.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"HAULMESH_WEBHOOK_CA_FILE: {exc}", field="HAULMESH_WEBHOOK_CA_FILE") from None
        allowed = domain.parse_allowed_cidrs(env.get("HAULMESH_WEBHOOK_ALLOWED_CIDRS", ""))
        return cls(guard=domain.DestinationGuard(allowed), retry=retry, timeout_seconds=timeout,
                   max_concurrency=concurrency, poll_seconds=max(poll, 0.02), verify=verify,
                   suspend_after_seconds=suspend_after)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (itself when it is an address literal); [] when it does not."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, TimeoutError):
        return []
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


async def check_destination(url: str, guard: domain.DestinationGuard, *, field: str) -> tuple[domain.Destination,
                                                                                            list[str]]:
    """Parse ``url``, resolve its host and apply the guard; INVALID_ARGUMENT naming ``field`` if refused."""
    destination = domain.parse_destination(url, field=field)
    addresses = await resolve(destination.host, destination.port)
    domain.check_addresses(destination, addresses, guard, field=field)
    return destination, addresses


def event_body(event: event_pb2.Event) -> bytes:
    """The request body: the event as proto-JSON (camelCase field names)."""
    return json_format.MessageToJson(event, indent=None).encode()


def touch(subscription: webhook_pb2.WebhookSubscription, *, now_ns: int) -> None:
    """Mark a subscription changed: new update time and etag."""
    subscription.update_time.FromNanoseconds(now_ns)
    subscription.etag = new_id()


def _now_seconds() -> float:
    return time.time()


def _stamp(timestamp: timestamp_pb2.Timestamp, seconds: float) -> None:
    timestamp.FromNanoseconds(int(seconds * 1e9))


@dataclass
class _Attempt:
    status_code: int | None = None
    error: str = ""
    retryable_network: bool = True


class Dispatcher:
    """Creates deliveries from events and sends them."""

    def __init__(self, store: WebhookStore, settings: WebhookSettings) -> None:
        self._store = store
        self._settings = settings
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    # --- the consumer --------------------------------------------------------------------------------

    async def handle(self, event: event_pb2.Event) -> None:
        """Consumer handler: one delivery per matching subscription of the event's carrier (idempotent)."""
        if not event.carrier or event.type not in PUBLIC_EVENT_TYPES:
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
            _stamp(delivery.create_time, now)
            if active:
                _stamp(delivery.next_attempt_time, now)
            else:
                _stamp(delivery.complete_time, now)
            _, created = await self._store.add_delivery(carrier, subscription_id, delivery_id, delivery,
                                                        due_at=now if active else None, event_id=event.id)
            scheduled = scheduled or (created and active)
        if scheduled:
            self._wake.set()

    async def replay(self, carrier: str, original: webhook_pb2.WebhookDelivery) -> webhook_pb2.WebhookDelivery:
        """A new delivery of ``original``'s event (same event id), scheduled now whatever the subscription's state."""
        if not domain.replayable(Delivery.State.Name(original.state).removeprefix("STATE_")):
            raise FailedPrecondition(
                f"{original.name} is {Delivery.State.Name(original.state).removeprefix('STATE_')}; only FAILED, "
                "SKIPPED or SUCCEEDED deliveries can be replayed", reason="INVALID_DELIVERY_STATE",
                metadata={"name": original.name})
        subscription_id, _ = domain.parse_delivery_name(original.name)
        now = _now_seconds()
        delivery_id = new_id()
        delivery = Delivery(name=f"webhookSubscriptions/{subscription_id}/deliveries/{delivery_id}",
                            event=original.event, state=Delivery.STATE_PENDING, replay_of=original.name)
        _stamp(delivery.create_time, now)
        _stamp(delivery.next_attempt_time, now)
        await self._store.add_delivery(carrier, subscription_id, delivery_id, delivery, due_at=now)
        self._wake.set()
        return delivery

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
            _stamp(delivery.complete_time, now)
            await self._finish(carrier, delivery_id, delivery, None)
            WEBHOOK_DELIVERIES.labels("skipped").inc()
            return
        began = time.perf_counter()
        result = await self._send(carrier, subscription, delivery.event)
        WEBHOOK_ATTEMPT_DURATION.observe(time.perf_counter() - began)
        delivery.attempt_count += 1
        delivery.last_status_code = result.status_code or 0
        delivery.last_error = result.error
        _stamp(delivery.last_attempt_time, now)
        delivery.ClearField("next_attempt_time")
        outcome = domain.classify_attempt(result.status_code) if result.retryable_network else domain.Outcome.FAILED
        due_at = None
        if outcome is domain.Outcome.SUCCEEDED:
            delivery.state = Delivery.STATE_SUCCEEDED
        elif outcome is domain.Outcome.RETRY and (delay := self._settings.retry.delay_after(
                delivery.attempt_count)) is not None:
            delivery.state = Delivery.STATE_RETRYING
            due_at = _now_seconds() + delay
            _stamp(delivery.next_attempt_time, due_at)
        else:
            delivery.state = Delivery.STATE_FAILED
            if outcome is domain.Outcome.RETRY:
                delivery.last_error = f"retries exhausted after {delivery.attempt_count} attempts: {result.error}"
        if delivery.state != Delivery.STATE_RETRYING:
            _stamp(delivery.complete_time, _now_seconds())
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
            if current.state == Subscription.STATE_ACTIVE:  # never overrides the carrier's PAUSED
                current.state = Subscription.STATE_SUSPENDED
                touch(current, now_ns=time.time_ns())
                suspended = True
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
