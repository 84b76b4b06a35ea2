"""Shared fixtures: a throwaway PKI, the whole mesh as real processes, and mTLS client helpers.

pytest-grpc is installed, but its ``grpc_server`` fixture builds a synchronous ``grpc.server`` around a
thread pool and cannot host grpc.aio servicers or our runtime's interceptors, so these tests use the
project's own fixtures instead: the real runtime (``services.runtime.Service``) in-process for the
security tests, and the real service processes (``services.runtime.Mesh``) for the mesh tests. Every
store is a real Valkey the tests start on a free port; every call goes over real mTLS.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
import redis.asyncio
from google.rpc import error_details_pb2

from services.runtime import (
    MESH_SERVICES,
    EmbeddedStore,
    Identity,
    Mesh,
    connect_async,
    free_port,
    pki,
    poll_until,
    status_of,
)
from tests.objectstore import SeaweedS3
from tests.trucks import Truck

#: The fault proxy's fixture (``fault_proxy``) and the chaos runner (``--chaos``, seeds, build/chaos.json).
pytest_plugins = ["tests.faultproxy", "tests.chaos"]


@dataclass(frozen=True)
class Pki:
    """A CA and helpers to mint credentials for any identity."""

    directory: Path
    ca: pki.CertificateAuthority

    def credentials(self, kind: str, name: str, *, ca: pki.CertificateAuthority | None = None,
                    extra_uris: tuple[str, ...] = (), role: str | None = pki.PLATFORM_ADMIN,
                    carriers: tuple[str, ...] = ()) -> grpc.ChannelCredentials:
        """An operator gets ``role`` for ``carriers`` (a platform admin unless told otherwise, so tests that are not
        about roles may act for any carrier; ``role=None``: an operator certificate without a role)."""
        ids = [pki.identity_for(kind, name), *(Identity.parse(uri) for uri in extra_uris)]
        grant = pki.OperatorGrant(role, frozenset(carriers)) if kind == "operator" and role else None
        issued = pki.issue(ca or self.ca, ids, valid_days=1, grant=grant)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.certificate_pem,
            private_key=issued.private_key_pem,
            certificate_chain=issued.certificate_pem,
        )

    def anonymous_credentials(self) -> grpc.ChannelCredentials:
        """Trusts the server, presents no client certificate."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca.certificate_pem)


def make_pki(directory: Path) -> Pki:
    ca = pki.create_ca()
    pki.save_ca(directory, ca)
    return Pki(directory, ca)


@pytest.fixture(scope="session")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real embedded Valkey on a free port for tests that need a store but not the mesh."""
    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    info = store.ensure_running()
    yield info.url
    store.stop()


@pytest.fixture
async def store_client(store_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the session's store (the cluster tests give their own)."""
    client = connect_async(store_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def mesh_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session mesh's PKI: a CA and a certificate for every service and the CLI."""
    from services.runtime.cli import main

    directory = tmp_path_factory.mktemp("mesh") / "certs"
    assert main(["--cert-dir", str(directory), "pki", "dev-bootstrap"]) == 0
    return Pki(directory, pki.load_ca(directory))


@asynccontextmanager
async def running_mesh(mesh_pki: Pki, state_dir: Path, *, env: Mapping[str, str] | None = None,
                       redis_url: str | None = None, metrics: bool = False,
                       http_port: int | None = None, optional: tuple[str, ...] = ()) -> AsyncIterator[Mesh]:
    """The one way a test starts a mesh: every service as a real process on free ports, with certificates from
    ``mesh_pki``, on a fresh embedded store in ``state_dir`` (stopped after) or on ``redis_url`` (left running).

    ``env`` adds the variables the test needs (a short liveness timeout, tracing, webhook retry pacing);
    ``metrics`` gives every service a Prometheus port of its own (``mesh.metrics_ports``); ``http_port`` the
    gateway's HTTP port when the test must know it before the start (an identity provider's redirect URI);
    ``optional`` the optional services to start too (``edi``).
    """
    mesh = Mesh(state_dir, ports={name: free_port() for name in (*MESH_SERVICES, *optional)},
                http_port=http_port or free_port(), optional=optional,
                metrics_ports={name: free_port() for name in (*MESH_SERVICES, *optional)} if metrics else {},
                grace_period_seconds=2, redis_url=redis_url,
                extra_env={"HAULMESH_CERT_DIR": str(mesh_pki.directory), **(env or {})})
    try:
        await mesh.start(timeout_seconds=90)
        yield mesh
    finally:
        await mesh.stop(stop_store=redis_url is None)


@pytest.fixture(scope="session")
async def mesh(mesh_pki: Pki) -> AsyncIterator[Mesh]:
    """The session's mesh: every service as a real process on free ports, on a fresh embedded store."""
    async with running_mesh(mesh_pki, mesh_pki.directory.parent) as mesh:
        yield mesh


@pytest.fixture
def truck(mesh_pki: Pki) -> Truck:
    """A fresh vehicle of the mesh's CA (new id, new certificate) per test."""
    return Truck.mint(mesh_pki.ca)


class RichError(NamedTuple):
    """What a failed call carried: its code name, ErrorInfo reason and metadata, BadRequest fields."""

    code: str
    reason: str
    fields: list[str]
    metadata: dict[str, str]


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Unpack the google.rpc.Status of a failed call; fails the test if it is not a Haulmesh error."""
    status = status_of(error)
    assert status is not None, "no google.rpc.Status in the error"
    info, fields = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    assert info.domain == "haulmesh.io", info
    return RichError(error.code().name, info.reason, fields, dict(info.metadata))


async def wait_for(predicate, *, timeout_seconds: float = 10.0, interval_seconds: float = 0.05):
    """Poll ``predicate`` (sync or async) until it returns a truthy value (the runtime's ``poll_until``)."""
    return await poll_until(predicate, timeout_seconds=timeout_seconds, interval_seconds=interval_seconds)


@contextmanager
def measuring_from_this_process(*, collector_off: bool = False) -> Iterator[None]:
    """For a test that drives load from the test process and measures latency there: the garbage collector leaves
    alone everything allocated before (``gc.freeze``), and with ``collector_off`` does not run at all (for
    measurements that allocate little: AT-18's windows, where a collection stopped the clock-reading client for
    50-130 ms). Late in a long session that is every earlier test's objects, and each full collection walked them
    all while the trucks' acks waited: the pauses were measured as the server's. AT-10 (seed 23, alone): recovery
    20 s; with 1.5 M objects of ballast in the process, 31 s and a baseline p99 of 0.87 s instead of 0.58; the same
    ballast frozen, 20 s and 0.43 s. A fleet of trucks allocates a lot: its collector stays on."""
    gc.collect()
    gc.freeze()
    if collector_off:
        gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


# --- object store (issue 10): a real S3 server (SeaweedFS) for the session, a fresh Object Lock bucket per test ---

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS ``weed server -s3`` for the session, on free ports, with credentials made for this run
    (``s3_server.env()`` gives them as AWS_* variables, e.g. for a service process's environment)."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket with Object Lock (so versioned) on the session's server, as the ``s3://`` URL that
    ``open_object_store`` takes. Its credentials are in this test's environment (the standard AWS variables, set
    by monkeypatch; a profile or metadata lookup cannot interfere), since an object store URL never holds them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**s3_server.env(), "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket(f"test-{uuid.uuid4().hex[:20]}")
    return s3_server.url(bucket)
