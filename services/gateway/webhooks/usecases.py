"""The webhook service's use cases: subscriptions, the delivery log and replays (new events: workers.py).

Each reads what it needs, asks the rules in domain.py, and writes through store.py. A subscription's URL is
checked when it is set (the host resolved here, the addresses judged by the destination guard) and again
before every attempt (workers.py), because a DNS answer may change in between. A scheduled delivery wakes
the sender at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable

from haulmesh.gateway.v1 import webhook_pb2, webhook_service_pb2
from services.runtime import (
    FailedPrecondition,
    Idempotency,
    NotFound,
    check_etag,
    decode_page,
    new_id,
    next_page_token,
    parse_filter,
    timestamp_ms,
)

from . import domain
from .convert import DELIVERY_FILTER, delivery_filter_values
from .store import WebhookStore

__all__ = ["Webhooks", "check_destination", "resolve"]

Delivery = webhook_pb2.WebhookDelivery
Subscription = webhook_pb2.WebhookSubscription
_PREFIX = "webhook_subscription."
#: A destination's DNS lookup, well inside the 5 s default deadline of the call that asks for it
#: (HAULMESH_CALL_TIMEOUT_SECONDS): a silent resolver is answered "does not resolve" (400), not 504 when the
#: caller's deadline expires first (found by schemathesis).
_RESOLVE_TIMEOUT_SECONDS = 2.0


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


def _subscription_not_found(name: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason="WEBHOOK_SUBSCRIPTION_NOT_FOUND", metadata={"name": name})


def _delivery_not_found(name: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason="WEBHOOK_DELIVERY_NOT_FOUND", metadata={"name": name})


class Webhooks:
    """The webhook use cases, per carrier (``tenant``): another carrier's resources are NOT_FOUND.

    ``scheduled`` is called after a delivery was scheduled (it wakes the sender in workers.py).
    """

    def __init__(self, store: WebhookStore, guard: domain.DestinationGuard, idempotency: Idempotency,
                 scheduled: Callable[[], None]) -> None:
        self._store = store
        self._guard = guard
        self._idempotency = idempotency
        self._scheduled = scheduled

    async def _check_url(self, url: str) -> None:
        await check_destination(url, self._guard, field=f"{_PREFIX}url")

    # --- subscriptions -------------------------------------------------------------------------------

    async def create_subscription(self, tenant: str,
                                  request: webhook_service_pb2.CreateWebhookSubscriptionRequest) -> Subscription:
        given = request.webhook_subscription

        async def create() -> Subscription:
            domain.validate_subscription(display_name=given.display_name, url=given.url,
                                         event_types=list(given.event_types), public=domain.PUBLIC_EVENT_TYPES,
                                         eta_policy=given.eta_policy if given.HasField("eta_policy") else None)
            domain.check_new_state(given.state)
            domain.parse_secret(given.secret, field=f"{_PREFIX}secret")
            await self._check_url(given.url)
            subscription_id = new_id()
            now_ns = time.time_ns()
            subscription = Subscription(
                name=f"webhookSubscriptions/{subscription_id}", carrier=f"carriers/{tenant}",
                display_name=given.display_name, url=given.url, event_types=list(given.event_types),
                state=given.state or Subscription.STATE_ACTIVE)
            if given.HasField("eta_policy"):
                subscription.eta_policy.CopyFrom(given.eta_policy)
            for stamp in (subscription.create_time, subscription.secret_update_time):
                stamp.FromNanoseconds(now_ns)
            domain.touch(subscription, now_ns=now_ns)
            return await self._store.create(tenant, subscription, subscription_id, given.secret)

        return await self._idempotency.run(f"{tenant}:CreateWebhookSubscription", request.request_id, request,
                                           create, Subscription)

    async def get_subscription(self, tenant: str, name: str) -> Subscription:
        subscription = await self._store.get(tenant, domain.parse_subscription_name(name))
        if subscription is None:
            raise _subscription_not_found(name)
        return subscription

    async def list_subscriptions(self, tenant: str, page_size: int, page_token: str
                                 ) -> tuple[list[Subscription], str]:
        """A page (oldest first) and the next page's token."""
        query = f"webhook subscriptions of {tenant}"
        page = decode_page(page_size, page_token, query)
        subscriptions, cursor = await self._store.list(tenant, page)
        return subscriptions, next_page_token(cursor, query)

    async def update_subscription(self, tenant: str, given: Subscription, mask_paths: list[str]) -> Subscription:
        subscription_id = domain.parse_subscription_name(given.name, field=f"{_PREFIX}name")
        paths = domain.update_paths(mask_paths, given.state)
        domain.validate_subscription(display_name=given.display_name, url=given.url,
                                     event_types=list(given.event_types), public=domain.PUBLIC_EVENT_TYPES,
                                     check=[p for p in paths if p != "state"],
                                     eta_policy=given.eta_policy if given.HasField("eta_policy") else None)
        if "url" in paths:
            await self._check_url(given.url)

        def change(current: Subscription, _keys: list[domain.SigningKey]) -> tuple[Subscription, None]:
            check_etag(given.etag, current.etag, current.name)
            domain.apply_update(current, given, paths, now_ns=time.time_ns())
            return current, None

        updated = await self._store.update(tenant, subscription_id, change)
        if updated is None:
            raise _subscription_not_found(given.name)
        if "state" in paths and given.state == Subscription.STATE_ACTIVE:
            # Set ACTIVE again (e.g. after a suspension): the failure streak starts over.
            await self._store.clear_failures(tenant, subscription_id)
        return updated

    async def delete_subscription(self, tenant: str, name: str, etag: str) -> None:
        if not await self._store.delete(tenant, domain.parse_subscription_name(name),
                                        lambda current: check_etag(etag, current.etag, current.name)):
            raise _subscription_not_found(name)

    async def rotate_secret(self, tenant: str, name: str, new_secret: str, etag: str,
                            overlap_seconds: int | None) -> Subscription:
        """``overlap_seconds`` None: the default overlap (a day)."""
        subscription_id = domain.parse_subscription_name(name)
        domain.parse_secret(new_secret, field="new_secret")
        overlap = domain.DEFAULT_OVERLAP_SECONDS if overlap_seconds is None else overlap_seconds
        domain.check_overlap(overlap)

        def change(current: Subscription, keys: list[domain.SigningKey]
                   ) -> tuple[Subscription, list[domain.SigningKey]]:
            check_etag(etag, current.etag, current.name)
            now_ns = time.time_ns()
            rotated = domain.rotate_keys(keys, new_secret, overlap_seconds=overlap, now_ms=now_ns // 1_000_000)
            current.secret_update_time.FromNanoseconds(now_ns)
            domain.touch(current, now_ns=now_ns)
            return current, rotated

        updated = await self._store.update(tenant, subscription_id, change)
        if updated is None:
            raise _subscription_not_found(name)
        return updated

    # --- the delivery log ----------------------------------------------------------------------------

    async def list_deliveries(self, tenant: str, parent: str, filter_text: str, page_size: int,
                              page_token: str) -> tuple[list[Delivery], str]:
        """A page (newest first) of the deliveries ``filter_text`` selects, and the next page's token."""
        subscription_id = domain.parse_subscription_name(parent, field="parent")
        selected = parse_filter(filter_text, DELIVERY_FILTER)
        query = f"deliveries of {tenant}/{subscription_id} where {filter_text.strip()}"
        page = decode_page(page_size, page_token, query)
        if await self._store.get(tenant, subscription_id) is None:
            raise _subscription_not_found(parent)
        deliveries, cursor = await self._store.list_deliveries(
            tenant, subscription_id, page,
            (lambda delivery: selected.matches(delivery_filter_values(delivery))) if selected else None)
        return deliveries, next_page_token(cursor, query)

    async def get_delivery(self, tenant: str, name: str) -> Delivery:
        _, delivery_id = domain.parse_delivery_name(name)
        delivery = await self._store.get_delivery(tenant, delivery_id)
        # The delivery id is unique per carrier; the name must also name its own subscription.
        if delivery is None or delivery.name != name:
            raise _delivery_not_found(name)
        return delivery

    async def replay_delivery(self, tenant: str, name: str) -> Delivery:
        """A new delivery of the event of ``name`` (same event id), scheduled now whatever the subscription's
        state."""
        original = await self.get_delivery(tenant, name)
        state = Delivery.State.Name(original.state).removeprefix("STATE_")
        if not domain.replayable(state):
            raise FailedPrecondition(
                f"{original.name} is {state}; only FAILED, SKIPPED or SUCCEEDED deliveries can be replayed",
                reason="INVALID_DELIVERY_STATE", metadata={"name": original.name})
        subscription_id, _ = domain.parse_delivery_name(original.name)
        now = time.time()
        delivery_id = new_id()
        delivery = Delivery(name=f"webhookSubscriptions/{subscription_id}/deliveries/{delivery_id}",
                            event=original.event, state=Delivery.STATE_PENDING, replay_of=original.name)
        delivery.create_time.CopyFrom(timestamp_ms(int(now * 1000)))
        delivery.next_attempt_time.CopyFrom(delivery.create_time)
        await self._store.add_delivery(tenant, subscription_id, delivery_id, delivery, due_at=now)
        self._scheduled()
        return delivery
