"""Fixtures of the telemetry tests: a telemetry process of their own on the session's embedded store."""

from __future__ import annotations

import pytest
import redis.asyncio

from tests.conftest import Pki

from .helpers import TelemetryProcess


@pytest.fixture(scope="session")
async def telemetry(mesh_pki: Pki, store_url: str, tmp_path_factory: pytest.TempPathFactory) -> TelemetryProcess:
    """A real telemetry process (mTLS, the runtime, the real store); short heartbeat for the tests."""
    process = TelemetryProcess(mesh_pki.directory, tmp_path_factory.mktemp("telemetry-state"), store_url)
    await process.start(mesh_pki.credentials("operator", "probe"))
    yield process
    await process.stop()


@pytest.fixture
async def store_client(store_url: str) -> redis.asyncio.Redis:
    client = redis.asyncio.Redis.from_url(store_url)
    yield client
    await client.aclose()
