"""The gateway's own gRPC surface: WebhookService (subscriptions of the TMS to Haulmesh events)."""

from __future__ import annotations

import grpc

from haulmesh.gateway.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from services.runtime import NotFound, Policy, Service, carrier, list_page, next_page_token

from .domain import parse_subscription_name
from .store import WebhookStore

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


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    """Webhook subscription RPCs. Methods not implemented yet answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, store: WebhookStore) -> None:
        self._store = store

    async def GetWebhookSubscription(self, request: webhook_service_pb2.GetWebhookSubscriptionRequest,
                                     context: grpc.aio.ServicerContext):
        subscription = await self._store.get(carrier(context), parse_subscription_name(request.name))
        if subscription is None:
            raise NotFound(f"{request.name} does not exist", reason="WEBHOOK_SUBSCRIPTION_NOT_FOUND",
                           metadata={"name": request.name})
        return subscription

    async def ListWebhookSubscriptions(self, request: webhook_service_pb2.ListWebhookSubscriptionsRequest,
                                       context: grpc.aio.ServicerContext):
        tenant = carrier(context)
        page, query = list_page(request, f"webhook subscriptions of {tenant}")
        subscriptions, cursor = await self._store.list(tenant, page)
        return webhook_service_pb2.ListWebhookSubscriptionsResponse(
            webhook_subscriptions=subscriptions, next_page_token=next_page_token(cursor, query))


def register_grpc(service: Service) -> None:
    service.add(webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server,
                WebhookServicer(WebhookStore(service.redis)),
                webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"])
