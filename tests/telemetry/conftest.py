"""Fixtures of the telemetry tests: a telemetry process of their own on the session's embedded store."""

from __future__ import annotations

import pytest

from tests.conftest import Pki

from .helpers import TelemetryProcess


@pytest.fixture(scope="session")
async def telemetry(mesh_pki: Pki, store_url: str, tmp_path_factory: pytest.TempPathFactory) -> TelemetryProcess:
    """A real telemetry process (mTLS, the runtime, the real store); short heartbeat for the tests."""
    async with TelemetryProcess.running(mesh_pki, tmp_path_factory.mktemp("telemetry-state"), store_url) as process:
        yield process
