"""The gateway's own gRPC surface: WebhookService (subscriptions of the TMS to Haulmesh events).

Translation only: requests are checked with the rules in domain.py, stored by store.py, and deliveries
are made by the dispatcher in webhooks.py (registered here too, with its consumer and sender loops).
"""

from __future__ import annotations

import time
from datetime import UTC

import grpc
from google.protobuf import empty_pb2

from haulmesh.gateway.v1 import webhook_pb2, webhook_service_pb2, webhook_service_pb2_grpc
from services.runtime import (
    FieldViolation,
    Idempotency,
    InvalidArgument,
    NotFound,
    Policy,
    Service,
    carrier,
    check_etag,
    decode_page,
    new_id,
    next_page_token,
)

from . import domain
from .store import SigningKey, WebhookStore
from .webhooks import CONSUMER_GROUP, PUBLIC_EVENT_TYPES, Dispatcher, WebhookSettings, check_destination, touch

__all__ = ["POLICY", "WebhookServicer", "register_grpc"]

_SERVICE = "/haulmesh.gateway.v1.WebhookService"

#: The REST side of the gateway calls this service for the TMS (with the token's carrier); operators may
#: inspect and replay deliveries.
POLICY = Policy({
    f"{_SERVICE}/CreateWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/GetWebhookSubscription": ["service/gateway", "operator/*"],
    f"{_SERVICE}/ListWebhookSubscriptions": ["service/gateway", "operator/*"],
    f"{_SERVICE}/UpdateWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/DeleteWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/RotateWebhookSecret": ["service/gateway"],
    f"{_SERVICE}/ListWebhookDeliveries": ["service/gateway", "operator/*"],
    f"{_SERVICE}/GetWebhookDelivery": ["service/gateway", "operator/*"],
    f"{_SERVICE}/ReplayWebhookDelivery": ["service/gateway", "operator/*"],
})

Subscription = webhook_pb2.WebhookSubscription
Delivery = webhook_pb2.WebhookDelivery
_PREFIX = "webhook_subscription."
_UPDATABLE = ("display_name", "url", "event_types", "state")
_SETTABLE_STATES = (Subscription.STATE_ACTIVE, Subscription.STATE_PAUSED)
_DEFAULT_OVERLAP_SECONDS = 86400
_MAX_OVERLAP_SECONDS = 7 * 86400


def _subscription_not_found(name: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason="WEBHOOK_SUBSCRIPTION_NOT_FOUND", metadata={"name": name})


def _delivery_not_found(name: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason="WEBHOOK_DELIVERY_NOT_FOUND", metadata={"name": name})


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    """Webhook subscription and delivery-log RPCs, per carrier (another carrier's resources are NOT_FOUND)."""

    def __init__(self, store: WebhookStore, dispatcher: Dispatcher, settings: WebhookSettings,
                 idempotency: Idempotency) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._settings = settings
        self._idempotency = idempotency

    async def _check_url(self, url: str) -> None:
        await check_destination(url, self._settings.guard, field=f"{_PREFIX}url")

    async def CreateWebhookSubscription(self, request: webhook_service_pb2.CreateWebhookSubscriptionRequest,
                                        context: grpc.aio.ServicerContext) -> Subscription:
        tenant = carrier(context)
        given = request.webhook_subscription

        async def create() -> Subscription:
            domain.validate_subscription(display_name=given.display_name, url=given.url,
                                         event_types=list(given.event_types), public=PUBLIC_EVENT_TYPES)
            if given.state not in (Subscription.STATE_UNSPECIFIED, *_SETTABLE_STATES):
                raise InvalidArgument("a new subscription is ACTIVE or PAUSED", reason="INVALID_ARGUMENT",
                                      violations=[FieldViolation(f"{_PREFIX}state", "ACTIVE or PAUSED")])
            domain.parse_secret(given.secret, field=f"{_PREFIX}secret")
            await self._check_url(given.url)
            subscription_id = new_id()
            now_ns = time.time_ns()
            subscription = Subscription(
                name=f"webhookSubscriptions/{subscription_id}", carrier=f"carriers/{tenant}",
                display_name=given.display_name, url=given.url, event_types=list(given.event_types),
                state=given.state or Subscription.STATE_ACTIVE)
            for stamp in (subscription.create_time, subscription.secret_update_time):
                stamp.FromNanoseconds(now_ns)
            touch(subscription, now_ns=now_ns)
            return await self._store.create(tenant, subscription, subscription_id, given.secret)

        return await self._idempotency.run(f"{tenant}:CreateWebhookSubscription", request.request_id, request,
                                           create, Subscription)

    async def GetWebhookSubscription(self, request: webhook_service_pb2.GetWebhookSubscriptionRequest,
                                     context: grpc.aio.ServicerContext) -> Subscription:
        subscription = await self._store.get(carrier(context), domain.parse_subscription_name(request.name))
        if subscription is None:
            raise _subscription_not_found(request.name)
        return subscription

    async def ListWebhookSubscriptions(self, request: webhook_service_pb2.ListWebhookSubscriptionsRequest,
                                       context: grpc.aio.ServicerContext
                                       ) -> webhook_service_pb2.ListWebhookSubscriptionsResponse:
        tenant = carrier(context)
        query = f"webhook subscriptions of {tenant}"
        page = decode_page(request.page_size, request.page_token, query)
        subscriptions, cursor = await self._store.list(tenant, page)
        return webhook_service_pb2.ListWebhookSubscriptionsResponse(
            webhook_subscriptions=subscriptions, next_page_token=next_page_token(cursor, query))

    async def UpdateWebhookSubscription(self, request: webhook_service_pb2.UpdateWebhookSubscriptionRequest,
                                        context: grpc.aio.ServicerContext) -> Subscription:
        tenant = carrier(context)
        given = request.webhook_subscription
        subscription_id = domain.parse_subscription_name(given.name, field=f"{_PREFIX}name")
        paths = list(request.update_mask.paths)
        if not paths or paths == ["*"]:
            paths = list(_UPDATABLE)
        wrong = [p for p in paths if p not in _UPDATABLE]
        if wrong:
            raise InvalidArgument(f"update_mask may name {', '.join(_UPDATABLE)} only (secret: use "
                                  "RotateWebhookSecret)", reason="INVALID_ARGUMENT",
                                  violations=[FieldViolation("update_mask.paths", f"{p!r} is not updatable")
                                              for p in wrong])
        explicit_state = "state" in request.update_mask.paths
        if "state" in paths and not (given.state in _SETTABLE_STATES
                                     or (given.state == Subscription.STATE_UNSPECIFIED and not explicit_state)):
            raise InvalidArgument("state may be set to ACTIVE or PAUSED only", reason="INVALID_ARGUMENT",
                                  violations=[FieldViolation(f"{_PREFIX}state", "ACTIVE or PAUSED")])
        domain.validate_subscription(display_name=given.display_name, url=given.url,
                                     event_types=list(given.event_types), public=PUBLIC_EVENT_TYPES,
                                     check=[p for p in paths if p != "state"])
        if "url" in paths:
            await self._check_url(given.url)

        def change(current: Subscription, _keys: list[SigningKey]) -> tuple[Subscription, None]:
            check_etag(given.etag, current.etag, current.name)
            for path in paths:
                if path == "event_types":
                    del current.event_types[:]
                    current.event_types.extend(given.event_types)
                elif path != "state" or given.state != Subscription.STATE_UNSPECIFIED:
                    setattr(current, path, getattr(given, path))
            touch(current, now_ns=time.time_ns())
            return current, None

        updated = await self._store.update(tenant, subscription_id, change)
        if updated is None:
            raise _subscription_not_found(given.name)
        if "state" in paths and given.state == Subscription.STATE_ACTIVE:
            # Set ACTIVE again (e.g. after a suspension): the failure streak starts over.
            await self._store.clear_failures(tenant, subscription_id)
        return updated

    async def DeleteWebhookSubscription(self, request: webhook_service_pb2.DeleteWebhookSubscriptionRequest,
                                        context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        if not await self._store.delete(carrier(context), domain.parse_subscription_name(request.name),
                                        lambda current: check_etag(request.etag, current.etag, current.name)):
            raise _subscription_not_found(request.name)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(self, request: webhook_service_pb2.RotateWebhookSecretRequest,
                                  context: grpc.aio.ServicerContext) -> Subscription:
        tenant = carrier(context)
        subscription_id = domain.parse_subscription_name(request.name)
        domain.parse_secret(request.new_secret, field="new_secret")
        overlap = request.overlap.ToSeconds() if request.HasField("overlap") else _DEFAULT_OVERLAP_SECONDS
        if not 0 <= overlap <= _MAX_OVERLAP_SECONDS:
            raise InvalidArgument("overlap must be 0 to 7 days", reason="INVALID_ARGUMENT",
                                  violations=[FieldViolation("overlap", "0 to 7 days")])

        def change(current: Subscription, keys: list[SigningKey]) -> tuple[Subscription, list[SigningKey]]:
            check_etag(request.etag, current.etag, current.name)
            now_ns = time.time_ns()
            rotated = [SigningKey(request.new_secret)]
            previous = next((k for k in keys if k.until_ms == 0), None)
            if previous is not None and overlap > 0:
                rotated.append(SigningKey(previous.secret, now_ns // 1_000_000 + overlap * 1000))
            current.secret_update_time.FromNanoseconds(now_ns)
            touch(current, now_ns=now_ns)
            return current, rotated

        updated = await self._store.update(tenant, subscription_id, change)
        if updated is None:
            raise _subscription_not_found(request.name)
        return updated

    async def ListWebhookDeliveries(self, request: webhook_service_pb2.ListWebhookDeliveriesRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> webhook_service_pb2.ListWebhookDeliveriesResponse:
        tenant = carrier(context)
        subscription_id = domain.parse_subscription_name(request.parent, field="parent")
        matcher = domain.parse_delivery_filter(request.filter)
        query = f"deliveries of {tenant}/{subscription_id} where {request.filter.strip()}"
        page = decode_page(request.page_size, request.page_token, query)
        if await self._store.get(tenant, subscription_id) is None:
            raise _subscription_not_found(request.parent)

        def keep(delivery: webhook_pb2.WebhookDelivery) -> bool:
            return matcher.matches(state=Delivery.State.Name(delivery.state).removeprefix("STATE_"),
                                   event_type=delivery.event.type, event_id=delivery.event.id,
                                   create_time=delivery.create_time.ToDatetime(tzinfo=UTC))

        deliveries, cursor = await self._store.list_deliveries(tenant, subscription_id, page,
                                                               keep if matcher.terms else None)
        return webhook_service_pb2.ListWebhookDeliveriesResponse(deliveries=deliveries,
                                                                 next_page_token=next_page_token(cursor, query))

    async def _delivery(self, tenant: str, name: str) -> webhook_pb2.WebhookDelivery:
        _, delivery_id = domain.parse_delivery_name(name)
        delivery = await self._store.get_delivery(tenant, delivery_id)
        # The delivery id is unique per carrier; the name must also name its own subscription.
        if delivery is None or delivery.name != name:
            raise _delivery_not_found(name)
        return delivery

    async def GetWebhookDelivery(self, request: webhook_service_pb2.GetWebhookDeliveryRequest,
                                 context: grpc.aio.ServicerContext) -> webhook_pb2.WebhookDelivery:
        return await self._delivery(carrier(context), request.name)

    async def ReplayWebhookDelivery(self, request: webhook_service_pb2.ReplayWebhookDeliveryRequest,
                                    context: grpc.aio.ServicerContext) -> webhook_pb2.WebhookDelivery:
        tenant = carrier(context)
        original = await self._delivery(tenant, request.name)
        return await self._dispatcher.replay(tenant, original)


def register_grpc(service: Service) -> None:
    """Serve WebhookService and run the dispatcher: its event consumer and its sender loop."""
    settings = WebhookSettings.from_env()
    store = WebhookStore(service.redis)
    dispatcher = Dispatcher(store, settings)
    service.add(webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server,
                WebhookServicer(store, dispatcher, settings, Idempotency(service.redis)),
                webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"])
    service.add_consumer(CONSUMER_GROUP, dispatcher.handle, types=set(PUBLIC_EVENT_TYPES))
    service.add_companion(dispatcher.run, dispatcher.stop)
