"""The dispatcher in-process on a real Valkey: the per-attempt destination check (DNS rebinding), HTTPS to a
pinned address with the host name as TLS server name, and the due set's lease."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from haulmesh.events.v1 import tender_events_pb2
from haulmesh.gateway.v1 import webhook_pb2
from services.gateway.webhooks import domain
from services.gateway.webhooks.store import WebhookStore
from services.gateway.webhooks.workers import Dispatcher, WebhookSettings
from services.runtime import connect_async, new_event, new_id
from tests.conftest import wait_for

from .receiver import Receiver

Sub = webhook_pb2.WebhookSubscription
Delivery = webhook_pb2.WebhookDelivery
LOCAL = "127.0.0.0/8,::1/128"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[WebhookStore]:
    client = connect_async(store_url)
    yield WebhookStore(client)
    await client.aclose()


async def _subscription(store: WebhookStore, carrier: str, url: str, secret: str) -> Sub:
    """Stored directly, as if its URL had passed the guard at creation (the DNS answer changes later)."""
    subscription_id = new_id()
    subscription = Sub(name=f"webhookSubscriptions/{subscription_id}", carrier=f"carriers/{carrier}", url=url,
                       event_types=["*"], state=Sub.STATE_ACTIVE)
    subscription.create_time.GetCurrentTime()
    return await store.create(carrier, subscription, subscription_id, secret)


async def _deliver(store: WebhookStore, settings: WebhookSettings, carrier: str, sub: Sub,
                   until: set[int]) -> Delivery:
    """Run a dispatcher on one event until the subscription's delivery reaches a state in ``until``."""
    dispatcher = Dispatcher(store, settings)
    runner = asyncio.get_running_loop().create_task(dispatcher.run())
    try:
        event = new_event("tender_offered", tender_events_pb2.TenderOffered(), subject="tenders/t1",
                          carrier_id=carrier, source="tender")
        await dispatcher.handle(event)
        await dispatcher.handle(event)  # a redelivered event: still one delivery
        subscription_id = domain.parse_subscription_name(sub.name)

        async def settled() -> Delivery | None:
            from services.runtime import Page

            deliveries, _ = await store.list_deliveries(carrier, subscription_id, Page("", 10))
            assert len(deliveries) == 1
            return deliveries[0] if deliveries[0].state in until else None

        return await wait_for(settled, timeout_seconds=10)
    finally:
        await dispatcher.stop()
        await runner


async def test_every_attempt_checks_the_destination_again(store: WebhookStore) -> None:
    receiver = Receiver([domain.generate_secret()]).start()
    try:
        sub = await _subscription(store, "rebind-co", receiver.url(), receiver.secrets[0])
        delivery = await _deliver(store, WebhookSettings(), "rebind-co", sub,  # no allow-list: loopback refused
                                  {Delivery.STATE_FAILED})
    finally:
        receiver.stop()
    assert delivery.attempt_count == 1 and delivery.last_error.startswith("destination refused")
    assert receiver.received == []


def _tls_for_localhost(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for the DNS name ``localhost`` only (no IP address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "localhost.pem", directory / "localhost-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


async def test_https_goes_to_the_checked_address_with_the_host_name_verified(store: WebhookStore,
                                                                             tmp_path: Path) -> None:
    context, ca_file = _tls_for_localhost(tmp_path)
    server_names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    receiver = Receiver([domain.generate_secret()], tls=context).start()
    settings = WebhookSettings.from_env({"HAULMESH_WEBHOOK_ALLOWED_CIDRS": LOCAL,
                                         "HAULMESH_WEBHOOK_CA_FILE": str(ca_file),
                                         "HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": "60"})
    try:
        named = await _subscription(store, "tls-co", receiver.url(host="localhost"), receiver.secrets[0])
        delivered = await _deliver(store, settings, "tls-co", named, {Delivery.STATE_SUCCEEDED})
        # The same receiver by address: its certificate does not name 127.0.0.1, so TLS must refuse it.
        by_address = await _subscription(store, "tls-ip-co", receiver.url(), receiver.secrets[0])
        refused = await _deliver(store, settings, "tls-ip-co", by_address, {Delivery.STATE_RETRYING})
    finally:
        receiver.stop()
    assert delivered.last_status_code == 204
    [received] = receiver.received
    assert received.verified and received.headers["host"] == f"localhost:{receiver.port}"
    assert "localhost" in server_names
    assert refused.last_status_code == 0 and "certificate" in refused.last_error.lower()


async def test_claimed_deliveries_are_leased_and_come_back_after_the_lease(store: WebhookStore) -> None:
    carrier, delivery_id = "lease-co", new_id()
    await store.schedule(carrier, delivery_id, time.time() - 1)
    member = (carrier, delivery_id)
    first, second = await asyncio.gather(store.claim_due(time.time(), 0.3, 100), store.claim_due(time.time(), 0.3, 100))
    assert (member in first) != (member in second)  # exactly one claimer wins
    assert member not in await store.claim_due(time.time(), 0.3, 100)
    await asyncio.sleep(0.35)  # the claimer "crashed": its lease ends and the delivery is due again
    assert member in await store.claim_due(time.time(), 0.3, 100)
    await store.unschedule(carrier, delivery_id)


def test_allowed_cidrs_cover_ipv6_loopback_separately() -> None:
    guard = WebhookSettings.from_env({"HAULMESH_WEBHOOK_ALLOWED_CIDRS": LOCAL}).guard
    assert guard.permits(ipaddress.ip_address("::1")) and guard.permits("127.0.0.1")
    assert not WebhookSettings.from_env({"HAULMESH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8"}).guard.permits("::1")


async def test_a_subscription_failing_for_the_whole_window_is_suspended(store: WebhookStore) -> None:
    receiver = Receiver([domain.generate_secret()], respond=lambda _n: 503).start()
    settings = WebhookSettings.from_env({"HAULMESH_WEBHOOK_ALLOWED_CIDRS": LOCAL,
                                         "HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.2,0.2,0.2,0.2,0.2,0.2",
                                         "HAULMESH_WEBHOOK_RETRY_JITTER": "0",
                                         "HAULMESH_WEBHOOK_SUSPEND_AFTER_SECONDS": "0.5"})
    try:
        sub = await _subscription(store, "failing-co", receiver.url(), receiver.secrets[0])
        # Attempts at about 0, 0.2, 0.4, 0.6 s: the one at 0.6 s ends the window; the next is skipped.
        delivery = await _deliver(store, settings, "failing-co", sub, {Delivery.STATE_SKIPPED})
    finally:
        receiver.stop()
    suspended = await store.get("failing-co", domain.parse_subscription_name(sub.name))
    assert suspended is not None and suspended.state == Sub.STATE_SUSPENDED and suspended.etag
    assert 3 <= delivery.attempt_count < 7 and delivery.last_status_code == 503
    assert len(receiver.received) == delivery.attempt_count
