"""Fixtures of the webhook tests: a mesh of their own (loopback allowed, sub-second retries) and a receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from haulmesh.gateway.v1 import webhook_service_pb2_grpc
from services.gateway.webhooks import domain
from services.runtime import Mesh, free_port
from tests.conftest import Pki

from .receiver import Receiver

SCHEDULE = (0.2, 0.4, 0.8)  # three retries: four attempts in about 1.4 s


@pytest.fixture(scope="package")
async def webhook_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh of its own whose gateway allows loopback destinations and retries on a sub-second schedule."""
    ports = {name: free_port() for name in ("tender", "mission", "telemetry", "billing", "gateway")}
    mesh = Mesh(tmp_path_factory.mktemp("webhook-mesh"), ports=ports, http_port=free_port(), grace_period_seconds=2,
                extra_env={"HAULMESH_CERT_DIR": str(mesh_pki.directory),
                           "HAULMESH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",
                           "HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": ",".join(map(str, SCHEDULE)),
                           "HAULMESH_WEBHOOK_RETRY_JITTER": "0",
                           "HAULMESH_WEBHOOK_TIMEOUT_SECONDS": "2"})
    try:
        await mesh.start(timeout_seconds=90)
    except BaseException:
        await mesh.stop(stop_store=True)
        raise
    yield mesh
    await mesh.stop(stop_store=True)


@pytest.fixture(scope="package")
async def webhooks(webhook_mesh: Mesh, mesh_pki: Pki) -> AsyncIterator[webhook_service_pb2_grpc.WebhookServiceStub]:
    """The WebhookService as the gateway's REST side calls it."""
    async with grpc.aio.secure_channel(webhook_mesh.address("gateway"),
                                       mesh_pki.credentials("service", "gateway")) as channel:
        yield webhook_service_pb2_grpc.WebhookServiceStub(channel)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver([domain.generate_secret()]).start()
    yield started
    started.stop()


