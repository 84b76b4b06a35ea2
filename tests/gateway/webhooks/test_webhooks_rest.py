"""Webhook subscriptions through the TMS's door: REST transcoded to WebhookService, real dev JWTs, real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from haulmesh.events.v1 import tender_events_pb2
from services.gateway.webhooks import domain
from services.runtime import Mesh
from services.runtime.tokens import mint
from tests.conftest import wait_for

from .receiver import Receiver
from .test_webhooks_mesh import _emit


@pytest.fixture
async def http(webhook_mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{webhook_mesh.http_port}", timeout=15) as client:
        yield client


def _bearer(mesh: Mesh, carrier: str, scopes: str = "webhook:read webhook:write") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(carrier=carrier, scopes=scopes, state_dir=mesh.state_dir)}"}


async def test_the_tms_subscribes_over_rest_and_reads_its_delivery_log(webhook_mesh: Mesh,
                                                                      http: httpx.AsyncClient,
                                                                      receiver: Receiver) -> None:
    carrier = "rest-co"
    auth = _bearer(webhook_mesh, carrier)
    body = {"url": receiver.url(), "eventTypes": ["haulmesh.tender.v1.*"], "secret": receiver.secrets[0],
            "displayName": "LoadMaster"}
    created = await http.post("/api/v1/webhookSubscriptions", json=body,
                              headers={**auth, "Idempotency-Key": "rest-hook-1"})
    assert created.status_code == 200, created.text
    subscription = created.json()
    # The secret is never returned (the transcoder may still print the empty INPUT_ONLY field).
    assert subscription.get("secret", "") == "" and subscription["state"] == "STATE_ACTIVE"
    again = await http.post("/api/v1/webhookSubscriptions", json=body,
                            headers={**auth, "Idempotency-Key": "rest-hook-1"})
    assert again.json() == subscription  # the same key and body: the first result
    got = await http.get(f"/api/v1/{subscription['name']}", headers=auth)
    assert got.status_code == 200 and got.json().get("secret", "") == ""

    event = await _emit(webhook_mesh, "tender_offered", tender_events_pb2.TenderOffered(), carrier=carrier)

    async def delivered() -> dict | None:
        reply = await http.get(f"/api/v1/{subscription['name']}/deliveries", headers=auth)
        deliveries = reply.json().get("deliveries", [])
        return deliveries[0] if deliveries and deliveries[0]["state"] == "STATE_SUCCEEDED" else None

    delivery = await wait_for(delivered, timeout_seconds=10, interval_seconds=0.1)
    assert delivery["event"]["id"] == event.id and delivery["attemptCount"] == 1
    assert receiver.received[0].verified

    # Another carrier: 404 on every route that takes this subscription's id; write scope needed to create.
    other = _bearer(webhook_mesh, "rest-other-co")
    for path in (subscription["name"], f"{subscription['name']}/deliveries", delivery["name"]):
        assert (await http.get(f"/api/v1/{path}", headers=other)).status_code == 404, path
    assert (await http.delete(f"/api/v1/{subscription['name']}", headers=other)).status_code == 404
    read_only = _bearer(webhook_mesh, carrier, scopes="webhook:read")
    assert (await http.post("/api/v1/webhookSubscriptions", json=body, headers=read_only)).status_code == 403


async def test_private_destinations_are_refused_over_rest(webhook_mesh: Mesh, http: httpx.AsyncClient) -> None:
    reply = await http.post("/api/v1/webhookSubscriptions", headers=_bearer(webhook_mesh, "rest-co"),
                            json={"url": "https://169.254.169.254/latest", "eventTypes": ["*"],
                                  "secret": domain.generate_secret()})
    assert reply.status_code == 400
    violations = [v for d in reply.json()["details"] for v in d.get("fieldViolations", [])]
    assert [v["field"] for v in violations] == ["webhook_subscription.url"]
