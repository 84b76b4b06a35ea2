"""Fixtures of the runtime's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from services.runtime import ServiceConfig, TlsConfig, free_port, pki

from ..conftest import Pki, make_pki


@pytest.fixture
async def client(store_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """The session's store, emptied first: these tests count what they wrote."""
    await store_client.flushall()
    return store_client


def tender_server_config(tmp_path: Path, store_url: str) -> tuple[Pki, ServiceConfig]:
    """A fresh CA and the config of an in-process server as service/tender on a free port, over real mTLS."""
    p = make_pki(tmp_path / "ca")
    issued = pki.issue(p.ca, pki.identity_for("service", "tender"), valid_days=1,
                       dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    cert, key = pki.write_pem_files(tmp_path / "server", "tender", issued, p.ca.certificate_pem)
    return p, ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                            tls=TlsConfig(tmp_path / "server" / "ca.pem", cert, key), state_dir=tmp_path,
                            redis_url=store_url, grace_period_seconds=0.5)
