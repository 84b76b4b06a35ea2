"""The webhook service's gRPC surface: WebhookService (subscriptions of the TMS to Haulmesh events).

Translation only: each RPC decodes its request, calls a use case (usecases.py) and returns its answer. The
rules are in domain.py, the storage in store.py, and deliveries are made by the dispatcher in workers.py.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from haulmesh.gateway.v1 import webhook_pb2, webhook_service_pb2, webhook_service_pb2_grpc
from services.runtime import FLEET_OPERATORS, PLATFORM_ADMINS, Idempotency, Policy, Service, carrier

from ..config import GatewayConfig
from .store import WebhookStore
from .usecases import Webhooks
from .workers import Dispatcher, WebhookSettings, start_workers

__all__ = ["POLICY", "WebhookServicer", "register_grpc"]

_SERVICE = "/haulmesh.gateway.v1.WebhookService"

#: The REST side of the gateway calls this service for the TMS (with the token's carrier); a carrier's fleet
#: operators (its integration's day-to-day) and platform admins may inspect and replay its deliveries.
_OPERATORS = (FLEET_OPERATORS, PLATFORM_ADMINS)
POLICY = Policy({
    f"{_SERVICE}/CreateWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/GetWebhookSubscription": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/ListWebhookSubscriptions": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/UpdateWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/DeleteWebhookSubscription": ["service/gateway"],
    f"{_SERVICE}/RotateWebhookSecret": ["service/gateway"],
    f"{_SERVICE}/ListWebhookDeliveries": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/GetWebhookDelivery": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/ReplayWebhookDelivery": ["service/gateway", *_OPERATORS],
})

Subscription = webhook_pb2.WebhookSubscription
Delivery = webhook_pb2.WebhookDelivery
Context = grpc.aio.ServicerContext


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    """Webhook subscription and delivery-log RPCs, per carrier (another carrier's resources are NOT_FOUND)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self._webhooks = webhooks

    async def CreateWebhookSubscription(self, request: webhook_service_pb2.CreateWebhookSubscriptionRequest,
                                        context: Context) -> Subscription:
        return await self._webhooks.create_subscription(carrier(context), request)

    async def GetWebhookSubscription(self, request: webhook_service_pb2.GetWebhookSubscriptionRequest,
                                     context: Context) -> Subscription:
        return await self._webhooks.get_subscription(carrier(context), request.name)

    async def ListWebhookSubscriptions(self, request: webhook_service_pb2.ListWebhookSubscriptionsRequest,
                                       context: Context) -> webhook_service_pb2.ListWebhookSubscriptionsResponse:
        subscriptions, token = await self._webhooks.list_subscriptions(carrier(context), request.page_size,
                                                                       request.page_token)
        return webhook_service_pb2.ListWebhookSubscriptionsResponse(webhook_subscriptions=subscriptions,
                                                                    next_page_token=token)

    async def UpdateWebhookSubscription(self, request: webhook_service_pb2.UpdateWebhookSubscriptionRequest,
                                        context: Context) -> Subscription:
        return await self._webhooks.update_subscription(carrier(context), request.webhook_subscription,
                                                        list(request.update_mask.paths))

    async def DeleteWebhookSubscription(self, request: webhook_service_pb2.DeleteWebhookSubscriptionRequest,
                                        context: Context) -> empty_pb2.Empty:
        await self._webhooks.delete_subscription(carrier(context), request.name, request.etag)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(self, request: webhook_service_pb2.RotateWebhookSecretRequest,
                                  context: Context) -> Subscription:
        overlap = request.overlap.ToSeconds() if request.HasField("overlap") else None
        return await self._webhooks.rotate_secret(carrier(context), request.name, request.new_secret, request.etag,
                                                  overlap)

    async def ListWebhookDeliveries(self, request: webhook_service_pb2.ListWebhookDeliveriesRequest,
                                    context: Context) -> webhook_service_pb2.ListWebhookDeliveriesResponse:
        deliveries, token = await self._webhooks.list_deliveries(carrier(context), request.parent, request.filter,
                                                                 request.page_size, request.page_token)
        return webhook_service_pb2.ListWebhookDeliveriesResponse(deliveries=deliveries, next_page_token=token)

    async def GetWebhookDelivery(self, request: webhook_service_pb2.GetWebhookDeliveryRequest,
                                 context: Context) -> Delivery:
        return await self._webhooks.get_delivery(carrier(context), request.name)

    async def ReplayWebhookDelivery(self, request: webhook_service_pb2.ReplayWebhookDeliveryRequest,
                                    context: Context) -> Delivery:
        return await self._webhooks.replay_delivery(carrier(context), request.name)


def register_grpc(service: Service, config: GatewayConfig) -> None:
    """Serve WebhookService and run the dispatcher: its event consumer and its sender loop."""
    settings = WebhookSettings.from_config(config)
    store = WebhookStore(service.redis)
    dispatcher = Dispatcher(store, settings)
    webhooks = Webhooks(store, settings.guard, Idempotency(service.redis), scheduled=dispatcher.wake)
    service.add(webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server, WebhookServicer(webhooks),
                webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"])
    start_workers(service, dispatcher)
