"""Webhooks end to end: the whole mesh as real processes (own store, own settings), events committed with
the runtime's outbox, deliveries POSTed to a real local receiver that verifies the signatures itself."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from haulmesh.events.v1 import event_pb2, telemetry_events_pb2, tender_events_pb2
from haulmesh.gateway.v1 import webhook_pb2, webhook_service_pb2, webhook_service_pb2_grpc
from services.gateway.webhooks import domain
from services.gateway.webhooks.usecases import check_destination
from services.runtime import Mesh, add_event, connect_async, new_event, transact
from tests.conftest import Pki, rich_error, wait_for

from .conftest import SCHEDULE
from .receiver import Receiver, verify

Sub = webhook_pb2.WebhookSubscription
Delivery = webhook_pb2.WebhookDelivery


def _as(carrier: str) -> tuple[tuple[str, str]]:
    return (("haulmesh-carrier", f"carriers/{carrier}"),)


def _error(error: grpc.aio.AioRpcError) -> tuple[str, str, list[str]]:
    e = rich_error(error)
    return e.code, e.reason, e.fields


async def _fails(call, *args, **kwargs) -> tuple[str, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(*args, timeout=10, **kwargs)
    return _error(caught.value)


async def _subscribe(stub: webhook_service_pb2_grpc.WebhookServiceStub, carrier: str, url: str, secret: str,
                     event_types: tuple[str, ...] = ("haulmesh.tender.v1.*",), **fields: object) -> Sub:
    return await stub.CreateWebhookSubscription(webhook_service_pb2.CreateWebhookSubscriptionRequest(
        webhook_subscription=Sub(url=url, secret=secret, event_types=list(event_types), **fields)),
        metadata=_as(carrier), timeout=10)


async def _emit(mesh: Mesh, field: str, payload, *, carrier: str | None, subject: str = "tenders/t1"
                ) -> event_pb2.Event:
    """Commit an event through the runtime's outbox, as a service would with its state change."""
    assert mesh.store is not None
    event = new_event(field, payload, subject=subject, carrier_id=carrier, source="tender")
    client = connect_async(mesh.store.url)
    try:
        async def write(pipe) -> None:
            pipe.multi()
            add_event(pipe, event)

        await transact(client, carrier or "fleet", [], write)
    finally:
        await client.aclose()
    return event


async def _deliveries(stub: webhook_service_pb2_grpc.WebhookServiceStub, carrier: str, sub: Sub) -> list[Delivery]:
    reply = await stub.ListWebhookDeliveries(webhook_service_pb2.ListWebhookDeliveriesRequest(parent=sub.name),
                                             metadata=_as(carrier), timeout=10)
    return list(reply.deliveries)


async def _settled(stub: webhook_service_pb2_grpc.WebhookServiceStub, carrier: str, sub: Sub, count: int,
                   timeout_seconds: float = 15) -> list[Delivery]:
    """The subscription's deliveries once ``count`` exist and all are terminal."""
    terminal = {Delivery.STATE_SUCCEEDED, Delivery.STATE_FAILED, Delivery.STATE_SKIPPED}

    async def ready() -> list[Delivery] | None:
        deliveries = await _deliveries(stub, carrier, sub)
        return deliveries if len(deliveries) == count and all(d.state in terminal for d in deliveries) else None

    return await wait_for(ready, timeout_seconds=timeout_seconds, interval_seconds=0.1)


# --- subscriptions -----------------------------------------------------------------------------------


async def test_subscription_crud_never_returns_the_secret(webhooks, receiver: Receiver) -> None:
    carrier = "crud-co"
    created = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0], display_name="TMS prod")
    assert created.name.startswith("webhookSubscriptions/") and created.carrier == f"carriers/{carrier}"
    assert created.state == Sub.STATE_ACTIVE and created.etag and created.secret == ""
    got = await webhooks.GetWebhookSubscription(webhook_service_pb2.GetWebhookSubscriptionRequest(name=created.name),
                                                metadata=_as(carrier), timeout=10)
    assert got == created and got.secret == ""
    listed = await webhooks.ListWebhookSubscriptions(webhook_service_pb2.ListWebhookSubscriptionsRequest(),
                                                     metadata=_as(carrier), timeout=10)
    assert [s.name for s in listed.webhook_subscriptions] == [created.name]
    assert all(s.secret == "" for s in listed.webhook_subscriptions)

    updated = await webhooks.UpdateWebhookSubscription(webhook_service_pb2.UpdateWebhookSubscriptionRequest(
        webhook_subscription=Sub(name=created.name, display_name="TMS", state=Sub.STATE_PAUSED, etag=created.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name", "state"])), metadata=_as(carrier), timeout=10)
    assert (updated.display_name, updated.state, updated.url) == ("TMS", Sub.STATE_PAUSED, created.url)
    assert updated.etag != created.etag and updated.secret == ""
    stale = webhook_service_pb2.UpdateWebhookSubscriptionRequest(
        webhook_subscription=Sub(name=created.name, display_name="x", etag=created.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]))
    assert await _fails(webhooks.UpdateWebhookSubscription, stale, metadata=_as(carrier)) == (
        "ABORTED", "ETAG_MISMATCH", [])
    secret_write = webhook_service_pb2.UpdateWebhookSubscriptionRequest(
        webhook_subscription=Sub(name=created.name, secret=domain.generate_secret()),
        update_mask=field_mask_pb2.FieldMask(paths=["secret"]))
    code, _, fields = await _fails(webhooks.UpdateWebhookSubscription, secret_write, metadata=_as(carrier))
    assert (code, fields) == ("INVALID_ARGUMENT", ["update_mask.paths"])

    rotated = await webhooks.RotateWebhookSecret(webhook_service_pb2.RotateWebhookSecretRequest(
        name=created.name, new_secret=domain.generate_secret()), metadata=_as(carrier), timeout=10)
    assert rotated.secret == ""
    assert rotated.secret_update_time.ToNanoseconds() > created.secret_update_time.ToNanoseconds()

    await webhooks.DeleteWebhookSubscription(webhook_service_pb2.DeleteWebhookSubscriptionRequest(name=created.name),
                                             metadata=_as(carrier), timeout=10)
    assert await _fails(webhooks.GetWebhookSubscription,
                        webhook_service_pb2.GetWebhookSubscriptionRequest(name=created.name),
                        metadata=_as(carrier)) == ("NOT_FOUND", "WEBHOOK_SUBSCRIPTION_NOT_FOUND", [])


async def test_create_is_idempotent_on_request_id(webhooks, receiver: Receiver) -> None:
    request = webhook_service_pb2.CreateWebhookSubscriptionRequest(
        webhook_subscription=Sub(url=receiver.url(), secret=receiver.secrets[0], event_types=["*"]),
        request_id="create-1")
    first, second = await asyncio.gather(*(webhooks.CreateWebhookSubscription(request, metadata=_as("idem-co"),
                                                                              timeout=10) for _ in range(2)))
    assert first == second
    request.webhook_subscription.display_name = "other"
    assert (await _fails(webhooks.CreateWebhookSubscription, request, metadata=_as("idem-co")))[1] == \
        "REQUEST_ID_REUSED"


async def test_invalid_subscriptions_are_refused_field_by_field(webhooks, receiver: Receiver) -> None:
    bad = webhook_service_pb2.CreateWebhookSubscriptionRequest(webhook_subscription=Sub(
        url=receiver.url(), secret="whsec_short", event_types=["haulmesh.telemetry.v1.health_reported", "nope"]))
    code, reason, fields = await _fails(webhooks.CreateWebhookSubscription, bad, metadata=_as("bad-co"))
    assert (code, reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert fields == ["webhook_subscription.event_types[0]", "webhook_subscription.event_types[1]"]
    bad.webhook_subscription.event_types[:] = ["*"]
    assert (await _fails(webhooks.CreateWebhookSubscription, bad, metadata=_as("bad-co")))[2] == [
        "webhook_subscription.secret"]


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hooks", "https://169.254.169.254/latest/meta-data", "https://[::1]/hooks",
    "https://[::ffff:192.168.1.1]/hooks", "https://[64:ff9b::a00:1]/hooks", "https://0.0.0.0/hooks",
    "http://8.8.8.8/hooks",  # public, but plain http is for allowed development destinations only
    "https://name.invalid/hooks",  # does not resolve
])
async def test_private_and_non_https_destinations_are_refused(webhooks, receiver: Receiver, url: str) -> None:
    request = webhook_service_pb2.CreateWebhookSubscriptionRequest(webhook_subscription=Sub(
        url=url, secret=receiver.secrets[0], event_types=["*"]))
    assert await _fails(webhooks.CreateWebhookSubscription, request, metadata=_as("ssrf-co")) == (
        "INVALID_ARGUMENT", "INVALID_ARGUMENT", ["webhook_subscription.url"])


async def test_loopback_is_refused_without_the_allow_list(receiver: Receiver) -> None:
    guard = domain.DestinationGuard()
    for url in (receiver.url(), receiver.url().replace("127.0.0.1", "localhost"), "https://127.0.0.1/"):
        with pytest.raises(domain.InvalidArgument):
            await check_destination(url, guard, field="url")
    allowed = domain.DestinationGuard(domain.parse_allowed_cidrs("127.0.0.0/8"))
    await check_destination(receiver.url(), allowed, field="url")


async def test_at_most_twenty_subscriptions_per_carrier(webhooks, receiver: Receiver) -> None:
    for _ in range(domain.MAX_SUBSCRIPTIONS):
        await _subscribe(webhooks, "busy-co", receiver.url(), receiver.secrets[0])
    request = webhook_service_pb2.CreateWebhookSubscriptionRequest(webhook_subscription=Sub(
        url=receiver.url(), secret=receiver.secrets[0], event_types=["*"]))
    assert await _fails(webhooks.CreateWebhookSubscription, request, metadata=_as("busy-co")) == (
        "RESOURCE_EXHAUSTED", "SUBSCRIPTION_LIMIT_REACHED", [])


# --- deliveries --------------------------------------------------------------------------------------


async def test_events_are_delivered_signed_once_and_only_where_subscribed(webhook_mesh: Mesh, webhooks,
                                                                         receiver: Receiver) -> None:
    carrier = "signed-co"
    sub = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0])
    offered = await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier=carrier)
    # Not delivered here: another area, an internal type, another carrier, a fleet event.
    await _emit(webhook_mesh, "telemetry_geofence_entered", telemetry_events_pb2.GeofenceEntered(), carrier=carrier)
    await _emit(webhook_mesh, "telemetry_health_reported", telemetry_events_pb2.HealthReported(), carrier=carrier)
    await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier="other-co")
    await _emit(webhook_mesh, "tender_lapsed", tender_events_pb2.TenderLapsed(), carrier=None)
    [delivery] = await _settled(webhooks, carrier, sub, 1)
    assert delivery.state == Delivery.STATE_SUCCEEDED and delivery.attempt_count == 1
    assert delivery.last_status_code == 204 and delivery.event == offered and delivery.complete_time.seconds
    [received] = receiver.received
    assert received.verified and received.path == "/hooks"
    assert received.headers["webhook-id"] == offered.id and received.headers["content-type"] == "application/json"
    assert received.event["type"] == "haulmesh.tender.v1.offered" and received.event["specVersion"] == "1.0"
    assert not verify([domain.generate_secret()], received.headers, received.body)  # a wrong key fails
    got = await webhooks.GetWebhookDelivery(webhook_service_pb2.GetWebhookDeliveryRequest(name=delivery.name),
                                            metadata=_as(carrier), timeout=10)
    assert got == delivery


async def test_failing_receiver_is_retried_then_failed_then_replay_delivers(webhook_mesh: Mesh, webhooks,
                                                                          receiver: Receiver) -> None:
    carrier = "retry-co"
    attempts = len(SCHEDULE) + 1
    receiver.respond = lambda n: 500 if n < attempts else 200
    sub = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0])
    event = await _emit(webhook_mesh, "tender_accepted", tender_events_pb2.TenderAccepted(), carrier=carrier)
    [failed] = await _settled(webhooks, carrier, sub, 1)
    assert failed.state == Delivery.STATE_FAILED and failed.attempt_count == attempts
    assert failed.last_status_code == 500 and "retries exhausted" in failed.last_error
    assert len(receiver.received) == attempts and all(r.verified for r in receiver.received)
    assert {r.headers["webhook-id"] for r in receiver.received} == {event.id}
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] <= 5

    replay = await webhooks.ReplayWebhookDelivery(webhook_service_pb2.ReplayWebhookDeliveryRequest(name=failed.name),
                                                  metadata=_as(carrier), timeout=10)
    assert replay.replay_of == failed.name and replay.name != failed.name
    deliveries = await _settled(webhooks, carrier, sub, 2)
    assert [d.name for d in deliveries] == [replay.name, failed.name]  # newest first
    assert deliveries[0].state == Delivery.STATE_SUCCEEDED and deliveries[0].last_status_code == 200
    assert receiver.received[-1].verified and receiver.received[-1].headers["webhook-id"] == event.id

    async def listed(**fields: object) -> webhook_service_pb2.ListWebhookDeliveriesResponse:
        return await webhooks.ListWebhookDeliveries(webhook_service_pb2.ListWebhookDeliveriesRequest(
            parent=sub.name, **fields), metadata=_as(carrier), timeout=10)

    assert [d.name for d in (await listed(filter="state = FAILED")).deliveries] == [failed.name]
    assert [d.name for d in (await listed(filter=f'state = SUCCEEDED AND event.id = "{event.id}"')).deliveries] == [
        replay.name]
    assert list((await listed(filter='event.type = "haulmesh.mission.v1.dispatched"')).deliveries) == []
    first = await listed(page_size=1)
    second = await listed(page_size=1, page_token=first.next_page_token)
    assert [d.name for d in [*first.deliveries, *second.deliveries]] == [replay.name, failed.name]
    assert second.next_page_token == ""
    assert (await _fails(webhooks.ListWebhookDeliveries, webhook_service_pb2.ListWebhookDeliveriesRequest(
        parent=sub.name, filter="state = BROKEN"), metadata=_as(carrier)))[:2] == ("INVALID_ARGUMENT", "INVALID_FILTER")
    assert (await _fails(webhooks.ListWebhookDeliveries, webhook_service_pb2.ListWebhookDeliveriesRequest(
        parent=sub.name, filter="state = FAILED", page_token=first.next_page_token),
        metadata=_as(carrier)))[:2] == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")


async def test_a_non_retryable_answer_fails_at_once_and_running_deliveries_cannot_be_replayed(
        webhook_mesh: Mesh, webhooks, receiver: Receiver) -> None:
    carrier = "gone-co"
    receiver.respond = lambda n: 410 if n == 0 else 500
    sub = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0])
    await _emit(webhook_mesh, "tender_cancelled", tender_events_pb2.TenderCancelled(), carrier=carrier)
    [failed] = await _settled(webhooks, carrier, sub, 1)
    assert (failed.state, failed.attempt_count, failed.last_status_code) == (Delivery.STATE_FAILED, 1, 410)
    replay = await webhooks.ReplayWebhookDelivery(webhook_service_pb2.ReplayWebhookDeliveryRequest(name=failed.name),
                                                  metadata=_as(carrier), timeout=10)
    get = webhook_service_pb2.GetWebhookDeliveryRequest(name=replay.name)

    async def retrying() -> bool:
        current = await webhooks.GetWebhookDelivery(get, metadata=_as(carrier), timeout=10)
        return current.state == Delivery.STATE_RETRYING

    await wait_for(retrying, timeout_seconds=10, interval_seconds=0.02)  # the receiver now answers 500
    assert (await _fails(webhooks.ReplayWebhookDelivery,
                         webhook_service_pb2.ReplayWebhookDeliveryRequest(name=replay.name),
                         metadata=_as(carrier)))[:2] == ("FAILED_PRECONDITION", "INVALID_DELIVERY_STATE")


async def test_paused_subscription_records_skipped_deliveries_that_replay_sends(webhook_mesh: Mesh, webhooks,
                                                                               receiver: Receiver) -> None:
    carrier = "paused-co"
    sub = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0], state=Sub.STATE_PAUSED)
    await _emit(webhook_mesh, "tender_declined", tender_events_pb2.TenderDeclined(), carrier=carrier)
    [skipped] = await _settled(webhooks, carrier, sub, 1)
    assert skipped.state == Delivery.STATE_SKIPPED and skipped.attempt_count == 0 and receiver.received == []
    await webhooks.ReplayWebhookDelivery(webhook_service_pb2.ReplayWebhookDeliveryRequest(name=skipped.name),
                                         metadata=_as(carrier), timeout=10)
    deliveries = await _settled(webhooks, carrier, sub, 2)
    assert deliveries[0].state == Delivery.STATE_SUCCEEDED and receiver.received[0].verified


async def test_rotation_signs_with_both_secrets_during_the_overlap(webhook_mesh: Mesh, webhooks,
                                                                  receiver: Receiver) -> None:
    carrier = "rotate-co"
    old = receiver.secrets[0]
    sub = await _subscribe(webhooks, carrier, receiver.url(), old)
    new = domain.generate_secret()
    await webhooks.RotateWebhookSecret(webhook_service_pb2.RotateWebhookSecretRequest(
        name=sub.name, new_secret=new, overlap=duration_pb2.Duration(seconds=3600)), metadata=_as(carrier), timeout=10)
    await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier=carrier)
    await _settled(webhooks, carrier, sub, 1)
    overlap = receiver.received[0]
    assert len(overlap.headers["webhook-signature"].split(" ")) == 2
    assert verify([old], overlap.headers, overlap.body) and verify([new], overlap.headers, overlap.body)
    newest = domain.generate_secret()
    await webhooks.RotateWebhookSecret(webhook_service_pb2.RotateWebhookSecretRequest(
        name=sub.name, new_secret=newest, overlap=duration_pb2.Duration(seconds=0)), metadata=_as(carrier), timeout=10)
    await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier=carrier)
    await _settled(webhooks, carrier, sub, 2)
    after = receiver.received[1]
    assert verify([newest], after.headers, after.body) and not verify([new], after.headers, after.body)


async def test_another_carrier_sees_nothing(webhook_mesh: Mesh, webhooks, receiver: Receiver) -> None:
    owner, intruder = "owner-co", "intruder-co"
    sub = await _subscribe(webhooks, owner, receiver.url(), receiver.secrets[0])
    await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier=owner)
    [delivery] = await _settled(webhooks, owner, sub, 1)
    svc, theirs = webhook_service_pb2, _as(intruder)
    calls = [
        (webhooks.GetWebhookSubscription, svc.GetWebhookSubscriptionRequest(name=sub.name)),
        (webhooks.UpdateWebhookSubscription, svc.UpdateWebhookSubscriptionRequest(
            webhook_subscription=Sub(name=sub.name, display_name="mine"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]))),
        (webhooks.DeleteWebhookSubscription, svc.DeleteWebhookSubscriptionRequest(name=sub.name)),
        (webhooks.RotateWebhookSecret, svc.RotateWebhookSecretRequest(name=sub.name,
                                                                      new_secret=domain.generate_secret())),
        (webhooks.ListWebhookDeliveries, svc.ListWebhookDeliveriesRequest(parent=sub.name)),
        (webhooks.GetWebhookDelivery, svc.GetWebhookDeliveryRequest(name=delivery.name)),
        (webhooks.ReplayWebhookDelivery, svc.ReplayWebhookDeliveryRequest(name=delivery.name)),
    ]
    for call, request in calls:
        code, reason, _ = await _fails(call, request, metadata=theirs)
        assert code == "NOT_FOUND" and reason.endswith("_NOT_FOUND"), (call, reason)
    listed = await webhooks.ListWebhookSubscriptions(svc.ListWebhookSubscriptionsRequest(), metadata=theirs, timeout=10)
    assert list(listed.webhook_subscriptions) == []
    # The owner's subscription is untouched and its delivery was not replayed.
    assert (await _deliveries(webhooks, owner, sub)) == [delivery] and len(receiver.received) == 1


async def test_a_real_tender_reaches_the_tms_as_a_signed_webhook(webhook_mesh: Mesh, webhooks, mesh_pki: Pki,
                                                                receiver: Receiver) -> None:
    """The whole path: CreateTender on the tender service → its outbox event → this webhook."""
    from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
    from tests.tender.helpers import seed_tender

    carrier = "tms-co"
    sub = await _subscribe(webhooks, carrier, receiver.url(), receiver.secrets[0])
    async with grpc.aio.secure_channel(webhook_mesh.address("tender"),
                                       mesh_pki.credentials("service", "gateway")) as channel:
        tender = await tender_service_pb2_grpc.TenderServiceStub(channel).CreateTender(
            tender_service_pb2.CreateTenderRequest(tender=seed_tender(tms_load_id="WH-E2E-1")),
            metadata=_as(carrier), timeout=15)
    [delivery] = await _settled(webhooks, carrier, sub, 1)
    assert delivery.state == Delivery.STATE_SUCCEEDED
    [received] = receiver.received
    assert received.verified and received.event["subject"] == tender.name
    # Offered when the fleet has capacity, rejected otherwise (this mesh has no vehicles): either way, public.
    assert received.event["type"] in ("haulmesh.tender.v1.offered", "haulmesh.tender.v1.rejected")
