"""Fixtures of the webhook tests: a mesh of their own (loopback allowed, sub-second retries) and a receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from haulmesh.gateway.v1 import webhook_service_pb2_grpc
from services.gateway.webhooks import domain
from services.runtime import Mesh
from tests.conftest import Pki, running_mesh

from .receiver import Receiver

SCHEDULE = (0.2, 0.4, 0.8)  # three retries: four attempts in about 1.4 s


@pytest.fixture(scope="package")
async def webhook_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh of its own whose gateway allows loopback destinations and retries on a sub-second schedule."""
    env = {"HAULMESH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",
           "HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": ",".join(map(str, SCHEDULE)),
           "HAULMESH_WEBHOOK_RETRY_JITTER": "0", "HAULMESH_WEBHOOK_TIMEOUT_SECONDS": "2"}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("webhook-mesh"), env=env) as mesh:
        yield mesh


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


